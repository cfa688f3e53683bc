"""`storage-agent`: the node agent, or with `supervise` the driver host supervisor.

The supervisor is a process of its own that starts and reaps driver hosts; it needs none of the
agent's API client, resource models or device discovery. So `supervise` is dispatched before
any of them is imported, which keeps pydantic, the models and the API client out of it: about
14 MiB of RSS (docs/benchmarks.md, the footprint).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["supervise"]:
        from storage_driver_agent.drivers import supervisor

        return supervisor.main(args[1:])
    from storage_driver_agent import main as agent

    return agent.main(args)


if __name__ == "__main__":
    sys.exit(main())
