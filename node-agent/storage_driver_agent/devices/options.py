"""Options of the agent's device discovery (`storage-agent --help`, group "device discovery")."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from storage_driver_sdk.devices import DeviceType

from storage_driver_agent.devices.filters import (
    DEFAULT_EXCLUDE_BACKING_FILES,
    DEFAULT_EXCLUDE_PATHS,
    DeviceFilter,
    parse_patterns,
    parse_types,
)

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str, option: str = "duration") -> float:
    """'20ms', '1.5s', '5m', '1h' or plain seconds ('300') -> seconds."""
    match = DURATION.match(text)
    if not match:
        raise ValueError(
            f"{option}: {text!r} is not a duration; write a number with an optional unit ms, s, m or h "
            "(e.g. 20ms, 30s, 5m)"
        )
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def _duration(option: str, minimum: float = 0.0) -> Callable[[str], float]:
    def convert(text: str) -> float:
        # argparse names the option itself ("argument --retention: ...").
        try:
            value = parse_duration(text, option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{option}: ")) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}s, got {text!r}")
        return value

    return convert


def _types(option: str) -> Callable[[str], frozenset[DeviceType]]:
    def convert(text: str) -> frozenset[DeviceType]:
        try:
            return parse_types(text, option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{option}: ")) from None

    return convert


@dataclass(frozen=True)
class Options:
    host_root: Path = Path("/")
    filter: DeviceFilter = field(default_factory=DeviceFilter)
    resync_interval: float = 300.0
    retention: float = 600.0
    coalesce_window: float = 0.02
    uevent_source: str = "auto"

    @staticmethod
    def add_arguments(parser: argparse._ArgumentGroup) -> None:
        parser.add_argument(
            "--host-root",
            type=Path,
            default=Path(os.environ.get("HOST_ROOT", "/")),
            help="where the host's / is mounted; /sys, /dev and /run/udev are read below it "
            "(default: $HOST_ROOT, else /)",
        )
        parser.add_argument(
            "--include-types",
            type=_types("--include-types"),
            default=None,
            metavar="TYPES",
            help="publish only these device types, comma-separated (default: every type)",
        )
        parser.add_argument(
            "--exclude-types",
            type=_types("--exclude-types"),
            default=frozenset(),
            metavar="TYPES",
            help="never publish these device types, comma-separated (default: none)",
        )
        parser.add_argument(
            "--include-paths",
            type=parse_patterns,
            default=(),
            metavar="PATTERNS",
            help="publish only devices matching one of these patterns, comma-separated; a pattern "
            "with a / matches the device path and by-id links, one without the kernel name "
            "(default: every device)",
        )
        parser.add_argument(
            "--exclude-paths",
            type=parse_patterns,
            default=DEFAULT_EXCLUDE_PATHS,
            metavar="PATTERNS",
            help=f"never publish devices matching one of these patterns (default: {','.join(DEFAULT_EXCLUDE_PATHS)}; "
            "pass '' for none)",
        )
        parser.add_argument(
            "--exclude-backing-files",
            type=parse_patterns,
            default=DEFAULT_EXCLUDE_BACKING_FILES,
            metavar="PATTERNS",
            help="never publish loop devices whose backing file matches "
            f"(default: {','.join(DEFAULT_EXCLUDE_BACKING_FILES)}; pass '' for none)",
        )
        parser.add_argument(
            "--resync-interval",
            type=_duration("--resync-interval", 1.0),
            default=300.0,
            metavar="DURATION",
            help="full re-probe and re-list, a safety net behind uevents (default: 5m)",
        )
        parser.add_argument(
            "--retention",
            type=_duration("--retention"),
            default=600.0,
            metavar="DURATION",
            help="how long a NodeDevice stays (Present=False) after its device is gone (default: 10m)",
        )
        parser.add_argument(
            "--coalesce-window",
            type=_duration("--coalesce-window"),
            default=0.02,
            metavar="DURATION",
            help="the longest a burst of uevents is gathered before the devices they name are re-probed; "
            "a burst ends earlier when events pause for 5ms (default: 20ms)",
        )
        parser.add_argument(
            "--uevent-source",
            choices=["auto", "kernel", "udev"],
            default="auto",
            help="netlink events to follow: udev's (after udevd has processed them) or the "
            "kernel's; auto picks udev when udevd runs on the host (default: auto)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        return cls(
            host_root=args.host_root,
            filter=DeviceFilter(
                include_types=args.include_types,
                exclude_types=args.exclude_types,
                include_paths=args.include_paths,
                exclude_paths=args.exclude_paths,
                exclude_backing_files=args.exclude_backing_files,
            ),
            resync_interval=args.resync_interval,
            retention=args.retention,
            coalesce_window=args.coalesce_window,
            uevent_source=args.uevent_source,
        )
