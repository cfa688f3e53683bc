"""What the probe read about one device, before any interpretation (pure data, no I/O).

The probe (`probe.py`) fills these from sysfs, the udev database and /dev; everything that
decides something about a device (`classify.py`, `identity.py`, `describe.py`) reads only these
records, so the same decisions run on a live host and on a recorded fixture tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class DeviceClass(StrEnum):
    """The sysfs class a device was found under."""

    BLOCK = "block"  # /sys/class/block: disks, namespaces, partitions, loop, zram, dm, md
    NVME = "nvme"  # /sys/class/nvme: NVMe controllers (character devices)


@dataclass(frozen=True)
class SysNode:
    """One directory of the sysfs device tree: the device itself or one of its ancestors."""

    path: str  # as the host sees it: /sys/devices/pci0000:00/0000:00:02.0/virtio1
    subsystem: str | None = None  # basename of the `subsystem` link: block, scsi, usb, pci, nvme, ...
    driver: str | None = None  # basename of the `driver` link: sd, virtio_blk, nvme, usb-storage, ...
    uevent: Mapping[str, str] = field(default_factory=dict)  # KEY=VALUE lines of `uevent`
    attrs: Mapping[str, str] = field(default_factory=dict)  # attribute (relative path) -> stripped text

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def devtype(self) -> str | None:
        return self.uevent.get("DEVTYPE")

    def attr(self, name: str) -> str | None:
        """The attribute's text, or None when it is absent or empty."""
        value = self.attrs.get(name)
        return value if value else None


@dataclass(frozen=True)
class BackingFile:
    """Which file a loop device is attached to, beyond its path: a file put at the same path
    later has another inode, or (when the filesystem reuses the inode) another generation."""

    device: int  # st_dev
    inode: int  # st_ino
    generation: int | None = None  # FS_IOC_GETVERSION; None where the filesystem has none

    def __str__(self) -> str:
        tail = f":{self.generation}" if self.generation is not None else ""
        return f"{self.device}:{self.inode}{tail}"


@dataclass(frozen=True)
class RawDevice:
    """Everything read about one device; `chain[0]` is the device, then its ancestors, nearest first."""

    kernel_name: str
    device_class: DeviceClass
    chain: tuple[SysNode, ...]
    udev: Mapping[str, str] = field(default_factory=dict)  # whitelisted udev database properties
    links: tuple[str, ...] = ()  # /dev/disk/by-id links pointing at the device
    slaves: tuple[str, ...] = ()  # kernel names under `slaves/` (dm, md)
    backing: BackingFile | None = None  # loop devices: the file they are attached to
    read_errors: tuple[str, ...] = ()  # "attribute: reason" for everything that could not be read

    @property
    def node(self) -> SysNode:
        return self.chain[0]

    @property
    def ancestors(self) -> tuple[SysNode, ...]:
        return self.chain[1:]

    def ancestor(self, subsystem: str, devtype: str | None = None) -> SysNode | None:
        """The nearest ancestor of a subsystem (and device type, e.g. usb_device)."""
        for node in self.ancestors:
            if node.subsystem == subsystem and (devtype is None or node.devtype == devtype):
                return node
        return None

    def has_ancestor(self, subsystem: str) -> bool:
        return self.ancestor(subsystem) is not None


def parse_uevent(text: str) -> dict[str, str]:
    """`KEY=VALUE` lines, as in a sysfs `uevent` file."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            result[key.strip()] = value.strip()
    return result


def parse_udev_db(text: str) -> tuple[dict[str, str], list[str]]:
    """Properties (`E:KEY=VALUE`) and symlinks (`S:disk/by-id/...`) of a udev database entry."""
    properties: dict[str, str] = {}
    links: list[str] = []
    for line in text.splitlines():
        tag, sep, rest = line.partition(":")
        if not sep:
            continue
        if tag == "E":
            key, eq, value = rest.partition("=")
            if eq:
                properties[key] = value
        elif tag == "S":
            links.append("/dev/" + rest.strip().lstrip("/"))
    return properties, links


def parse_vpd_pg80(data: bytes) -> str | None:
    """The unit serial number from a SCSI VPD page 0x80 (the `vpd_pg80` sysfs attribute)."""
    if len(data) < 4 or data[1] != 0x80:
        return None
    length = int.from_bytes(data[2:4], "big")
    serial = data[4 : 4 + length].decode("ascii", errors="replace").strip(" \x00")
    return serial or None
