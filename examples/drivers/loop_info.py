"""Loop Info Driver: binds loop devices and reports their size, backing file and I/O statistics.

Everything is read from sysfs (/sys/devices/virtual/block/loopN/...). attach() returns the facts
(shown per device in the NodeDriverConfig status); health() checks that every bound device is
still attached; with `reportIntervalSeconds` in the config, the driver also logs each device's
I/O since the previous report. `sysfsRoot` (default /sys) lets it run in a container that mounts
the host's sysfs elsewhere.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from storage_driver_sdk import Device, DeviceType, storage_driver

log = logging.getLogger("loop_info")

SECTOR_BYTES = 512
# Fields of /sys/block/<dev>/stat (Documentation/block/stat.rst), in order.
STAT_FIELDS = (
    "readIos",
    "readMerges",
    "readSectors",
    "readTicksMs",
    "writeIos",
    "writeMerges",
    "writeSectors",
    "writeTicksMs",
    "inFlight",
    "ioTicksMs",
    "timeInQueueMs",
)


def read_stat(block: Path) -> dict[str, int]:
    values = [int(v) for v in (block / "stat").read_text().split()]
    return dict(zip(STAT_FIELDS, values, strict=False))


@storage_driver(
    "Loop Info Driver",
    version="1.0.0",
    supported_devices=[DeviceType.LOOP],
    description="Reports size and I/O statistics of loop devices.",
)
class LoopInfoDriver:
    def __init__(self) -> None:
        self.sysfs_root = Path("/sys")
        self.bound: dict[str, Path] = {}
        self.last_stat: dict[str, dict[str, int]] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.reporter: threading.Thread | None = None

    def start(self, config: dict[str, Any]) -> None:
        self.sysfs_root = Path(str(config.get("sysfsRoot", "/sys")))
        if not (self.sysfs_root / "block").is_dir():
            raise ValueError(f"sysfsRoot: {self.sysfs_root}/block does not exist; is sysfs mounted there?")
        interval = float(config.get("reportIntervalSeconds", 0))
        if interval < 0:
            raise ValueError("reportIntervalSeconds: must be 0 (off) or positive")
        if interval:
            self.reporter = threading.Thread(target=self._report, args=(interval,), daemon=True)
            self.reporter.start()

    def _block_dir(self, device: Device) -> Path:
        sys_path = Path(device.sys_path)
        # NodeDevices record host paths under /sys; map them below sysfsRoot.
        if sys_path.is_relative_to("/sys"):
            sys_path = self.sysfs_root / sys_path.relative_to("/sys")
        return sys_path

    def attach(self, device: Device) -> dict[str, Any]:
        block = self._block_dir(device)
        if not (block / "loop").is_dir():
            raise ValueError(f"{device.name}: {block} is not a loop device (no loop/ directory in sysfs)")
        backing = (block / "loop" / "backing_file").read_text().strip()
        size = int((block / "size").read_text()) * SECTOR_BYTES
        stat = read_stat(block)
        with self.lock:
            self.bound[device.name] = block
            self.last_stat[device.name] = stat
        log.info("bound %s: %d bytes backed by %s", device.kernel_name, size, backing)
        return {
            "kernelName": block.name,
            "sizeBytes": size,
            "backingFile": backing,
            "readOnly": (block / "ro").read_text().strip() == "1",
            "readBytes": stat["readSectors"] * SECTOR_BYTES,
            "writtenBytes": stat["writeSectors"] * SECTOR_BYTES,
            "readIos": stat["readIos"],
            "writeIos": stat["writeIos"],
        }

    def detach(self, device: Device) -> None:
        with self.lock:
            self.bound.pop(device.name, None)
            self.last_stat.pop(device.name, None)
        log.info("released %s", device.kernel_name)

    def health(self) -> dict[str, Any]:
        with self.lock:
            gone = [
                name for name, block in self.bound.items() if not (block / "loop" / "backing_file").exists()
            ]
        if gone:
            return {
                "healthy": False,
                "message": f"bound loop device(s) detached underneath: {', '.join(gone)}",
            }
        return {"healthy": True, "message": f"{len(self.bound)} loop device(s) bound"}

    def _report(self, interval: float) -> None:
        while not self.stopping.wait(interval):
            with self.lock:
                bound = dict(self.bound)
            for name, block in bound.items():
                try:
                    stat = read_stat(block)
                except OSError:
                    continue
                with self.lock:
                    previous = self.last_stat.get(name, stat)
                    self.last_stat[name] = stat
                log.info(
                    "%s: read %d bytes in %d I/Os, wrote %d bytes in %d I/Os since the last report",
                    block.name,
                    (stat["readSectors"] - previous["readSectors"]) * SECTOR_BYTES,
                    stat["readIos"] - previous["readIos"],
                    (stat["writeSectors"] - previous["writeSectors"]) * SECTOR_BYTES,
                    stat["writeIos"] - previous["writeIos"],
                )

    def stop(self) -> None:
        self.stopping.set()
        if self.reporter is not None:
            self.reporter.join(timeout=2)
        with self.lock:
            self.bound.clear()
