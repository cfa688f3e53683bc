"""`sdctl devices`: what the agent's probe sees on this machine, as a table or JSON.

Runs the same probe, classification, identity and filters as `storage-agent`, locally and
without a cluster: what is listed (without --all) is what the agent would publish.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from storage_driver_agent.config import default_node_name
from storage_driver_agent.devices.describe import DescribedDevice, describe_all
from storage_driver_agent.devices.diff import desired, labels
from storage_driver_agent.devices.filters import DeviceFilter
from storage_driver_agent.devices.probe import Probe
from storage_driver_agent.devices.sysfs import HostRoot
from storage_driver_api.constants import NODE_DEVICES
from storage_driver_api.nodedevice import NodeDeviceSpec, node_device_name

COLUMNS = ("DEVICE", "TYPE", "SIZE", "TRANSPORT", "MODEL", "SERIAL", "IDENTITY", "NODEDEVICE", "NOTE")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "devices",
        help="list the storage devices the agent would publish on this machine (no cluster needed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print NodeDevice objects as JSON")
    parser.add_argument(
        "--all", action="store_true", help="also list devices the default filters exclude, with the reason"
    )
    parser.add_argument(
        "--host-root",
        type=Path,
        default=Path("/"),
        help="read /sys, /dev and /run/udev below this directory (default: /)",
    )
    parser.add_argument(
        "--node-name",
        default=None,
        help="node name for identities and names (default: $NODE_NAME, else the host name)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    host_root: Path = args.host_root
    if not (host_root / "sys").is_dir():
        print(
            f"sdctl devices: {host_root / 'sys'} is not a directory; is --host-root right?", file=sys.stderr
        )
        return 2
    node_name: str = args.node_name or default_node_name()
    devices = describe_all(Probe(HostRoot(host_root)).all(), node_name)
    device_filter = DeviceFilter()
    published = desired(devices, {}, node_name, device_filter)
    by_kernel = {spec.kernel_name: (name, spec) for name, spec in published.items()}
    rows: list[tuple[str | None, NodeDeviceSpec, str]] = []
    for device in devices:
        if device.spec.kernel_name in by_kernel:
            name, spec = by_kernel[device.spec.kernel_name]
            rows.append((name, spec, ""))
        elif args.all:
            rows.append((None, device.spec, f"excluded: {device_filter.rejection(device.spec)}"))
    if args.json:
        print(json.dumps([_as_object(name, spec, note, node_name) for name, spec, note in rows], indent=2))
    else:
        _print_table(rows, devices)
    return 0


def _as_object(name: str | None, spec: NodeDeviceSpec, note: str, node_name: str) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": NODE_DEVICES.api_version,
        "kind": NODE_DEVICES.kind,
        "metadata": {
            "name": name or node_device_name(node_name, spec.identity),
            "labels": labels(node_name, spec),
        },
        "spec": spec.to_api(),
    }
    if note:
        obj["metadata"]["annotations"] = {"sdctl.storage.datawarehouse.io/note": note}
    return obj


def _print_table(rows: list[tuple[str | None, NodeDeviceSpec, str]], devices: list[DescribedDevice]) -> None:
    if not rows:
        print(f"no storage devices found ({len(devices)} probed)")
        return
    table = [COLUMNS]
    for name, spec, excluded in rows:
        errors = f"{len(spec.read_errors)} unreadable attribute(s)" if spec.read_errors else ""
        note = "; ".join(filter(None, [excluded, errors]))
        table.append(
            (
                spec.kernel_name,
                str(spec.type),
                human_size(spec.size_bytes),
                spec.transport or "-",
                spec.model or "-",
                spec.serial or "-",
                f"{spec.identity.kind}:{_short(spec.identity.value)}",
                name or "-",
                note,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _short(value: str, limit: int = 48) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
