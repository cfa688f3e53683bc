"""Reads what holds the node's block devices: the mount table and sysfs (inuse.py decides).

The mount table is the agent's own (`/proc/self/mountinfo`, or `--mountinfo`, e.g.
`/proc/1/mountinfo` for the host's when the agent runs in a container with the host's PID
namespace); sysfs is read below the host root, as device discovery does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from storage_driver_api.logs import fields

from storage_driver_agent.drivers.inuse import BlockDevice, Holders, Mount, holders_of, parse_mountinfo

log = logging.getLogger(__name__)


class UsageReader:
    def __init__(self, mountinfo: Path, host_root: Path = Path("/")):
        self.mountinfo = mountinfo
        self.block_class = host_root / "sys" / "class" / "block"

    def mounts(self) -> list[Mount]:
        try:
            return parse_mountinfo(self.mountinfo.read_text())
        except OSError as exc:
            # Not knowing is not "free": without the table nothing is taken as mounted, so say so.
            log.warning("cannot read the mount table", extra=fields(file=str(self.mountinfo), error=str(exc)))
            return []

    def block_device(self, kernel_name: str) -> BlockDevice | None:
        """The device and its partitions as sysfs shows them; None when it is not a block device."""
        base = self.block_class / kernel_name
        if not base.is_dir():
            return None
        parts = [base, *(p for p in _children(base) if (p / "partition").exists())]
        numbers: dict[str, str] = {}
        holders: dict[str, Holders] = {}
        for part in parts:
            try:
                numbers[part.name] = (part / "dev").read_text().strip()
            except OSError:
                continue
            held = tuple(sorted(h.name for h in _children(part / "holders")))
            if held:
                holders[part.name] = held
        return BlockDevice(kernel_name, numbers, holders)

    def in_use(self, devices: Iterable[str], specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Holders]:
        """NodeDevice name -> what holds it, for those of `devices` that are in use. A device the
        node no longer has (not in `specs`) is not in use."""
        found: dict[str, Holders] = {}
        mounts: list[Mount] | None = None
        for name in sorted(devices):
            kernel_name = (specs.get(name) or {}).get("kernelName")
            block = self.block_device(str(kernel_name)) if kernel_name else None
            if block is None:
                continue
            if mounts is None:
                mounts = self.mounts()
            held = holders_of(block, mounts)
            if held:
                found[name] = held
        return found


def _children(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:
        return []
