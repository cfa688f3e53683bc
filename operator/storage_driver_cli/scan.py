"""`sdctl scan PATH`: what a driver file, package or directory declares, read without running it.

Prints one row per driver (file, driver name, version, device types, auto-load, sha256) and the
reason for every file that is not a usable driver. Exit status: 0 when every file is a usable
driver, 1 when any is not, 2 when PATH does not exist.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from storage_driver_sdk.scan import ScannedDriver, is_package, scan_directory, scan_path


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "scan",
        help="list the drivers a file, package or directory declares (nothing is imported or run)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path", type=Path, metavar="PATH", help="a driver file, a package directory, or a driver directory"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def scan(path: Path) -> list[ScannedDriver]:
    if path.is_dir() and not is_package(path):
        return scan_directory(path)
    return [scan_path(path)]


def as_json(result: ScannedDriver) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": result.file, "sha256": result.sha256 or None}
    declaration = result.declaration
    if declaration is None:
        entry["error"] = result.error
        return entry
    platform = declaration.minimum_platform
    entry.update(
        {
            "driverName": declaration.driver_name,
            "className": declaration.class_name,
            "module": declaration.module or None,
            "line": declaration.line,
            "version": declaration.version,
            "supportedDevices": list(declaration.supported_devices),
            "description": declaration.description,
            "autoLoad": declaration.auto_load,
            "minimumPlatform": None
            if platform is None
            else {
                "kernel": platform.kernel,
                "kernelBelow": platform.kernel_below,
                "os": platform.os,
                "architectures": list(platform.architectures),
            },
        }
    )
    return entry


def table(results: list[ScannedDriver]) -> str:
    header = ("FILE", "DRIVER", "VERSION", "DEVICES", "AUTOLOAD", "SHA256")
    rows: list[tuple[str, ...]] = []
    errors: list[str] = []
    for result in results:
        d = result.declaration
        if d is None:
            rows.append((result.file, "-", "-", "-", "-", result.sha256[:12] or "-"))
            errors.append(f"{result.file}: {result.error}")
            continue
        rows.append(
            (
                result.file,
                d.driver_name,
                d.version or "-",
                ",".join(d.supported_devices) or "-",
                "yes" if d.auto_load else "no",
                result.sha256[:12],
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *rows]
    ]
    if errors:
        lines += ["", "Not usable:"] + [f"  {line}" for line in errors]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.exists():
        print(f"sdctl scan: {path} does not exist", file=sys.stderr)
        return 2
    results = scan(path)
    if args.json:
        print(json.dumps([as_json(r) for r in results], indent=2))
    elif results:
        print(table(results))
    else:
        print(f"no driver files (*.py or package directories) under {path}")
    return 0 if all(r.ok for r in results) else 1
