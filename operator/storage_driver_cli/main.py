"""`sdctl`: the user CLI. Each command lives in its own module and registers itself here.

The same CLI is a kubectl plugin: the `kubectl-sd` console script on PATH makes
`kubectl sd plan`, `kubectl sd drivers`, ... (kubectl hands the plugin its environment, so
`$KUBECONFIG` applies; `--kubeconfig` and `--context` go after the command)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from types import ModuleType

from storage_driver_cli import devices, drivers, plan, scan

# Each command module has register(subparsers) and sets `handler` on its parser.
COMMANDS: tuple[ModuleType, ...] = (devices, scan, plan, drivers)

Handler = Callable[[argparse.Namespace], int]


def build_parser(prog: str = "sdctl") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Inspect devices, drivers and plans of storage-driver-operator."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None, prog: str = "sdctl") -> int:
    args = build_parser(prog).parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


def kubectl_plugin() -> int:
    """`kubectl sd ...`: kubectl runs `kubectl-sd` with the words after `sd`."""
    return main(prog="kubectl sd")


if __name__ == "__main__":
    sys.exit(main())
