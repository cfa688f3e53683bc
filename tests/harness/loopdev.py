"""Real loop devices for hot-plug tests: attach a backing file, detach it, always clean up."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LoopDevice:
    path: Path  # /dev/loopN
    backing_file: Path
    size_bytes: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def attached(self) -> bool:
        """Attached to our backing file: the loop number may be reused by anyone on the machine
        once we detach it, and theirs must not be taken for ours (or detached)."""
        try:
            backing = Path(f"/sys/block/{self.name}/loop/backing_file").read_text().strip()
        except OSError:
            return False
        return backing.removesuffix(" (deleted)") == str(self.backing_file.resolve())


def loop_devices_available() -> str | None:
    """None when loop devices can be used here, else what is missing."""
    if os.geteuid() != 0:
        return "needs root to attach loop devices"
    if not Path("/dev/loop-control").exists():
        return "needs /dev/loop-control (the loop kernel module)"
    if subprocess.run(["which", "losetup"], capture_output=True).returncode != 0:
        return "needs losetup (util-linux)"
    return None


def attach(backing_file: Path, size_bytes: int = 8 * 1024 * 1024) -> LoopDevice:
    if not backing_file.exists():
        with backing_file.open("wb") as handle:
            handle.truncate(size_bytes)
    out = subprocess.run(
        ["losetup", "--find", "--show", str(backing_file)], capture_output=True, text=True, check=True
    )
    return LoopDevice(Path(out.stdout.strip()), backing_file, backing_file.stat().st_size)


def detach(device: LoopDevice) -> None:
    if device.attached:
        subprocess.run(["losetup", "--detach", str(device.path)], capture_output=True, check=False)


def mount_filesystem(device: LoopDevice, point: Path) -> None:
    """Make an ext4 filesystem on the device and mount it at `point`: the device is in use."""
    subprocess.run(["mkfs.ext4", "-q", "-F", str(device.path)], capture_output=True, check=True)
    point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", str(device.path), str(point)], capture_output=True, check=True)


def unmount(point: Path) -> None:
    """Unmount `point` if something is mounted there (a lazy unmount if it is busy)."""
    if os.path.ismount(point):
        result = subprocess.run(["umount", str(point)], capture_output=True, check=False)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
