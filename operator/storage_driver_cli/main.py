"""`sdctl`: the user CLI. Each command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from types import ModuleType

from storage_driver_cli import devices, drivers, plan, scan

# Each command module has register(subparsers) and sets `handler` on its parser.
COMMANDS: tuple[ModuleType, ...] = (devices, scan, plan, drivers)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdctl", description="Inspect devices, drivers and plans of storage-driver-operator."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
