"""Finds the host's storage devices and reads their attributes (I/O only; no decisions).

Enumerates `/sys/class/block` (disks, NVMe namespaces, partitions, loop, zram, dm, md) and
`/sys/class/nvme` (NVMe controllers), walks each device's sysfs ancestors, and adds the udev
database entry and `/dev/disk/by-id` links when they exist (no udevd is needed: sysfs alone
is enough). What a device *is* is decided elsewhere (`classify`, `identity`, `describe`).

A device that is not there in the kernel's sense is not returned: a loop device without a
backing file, a hidden path device of NVMe multipathing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from storage_driver_api.nodedevice import UDEV_PROPERTY_WHITELIST

from storage_driver_agent.devices.facts import (
    BackingFile,
    DeviceClass,
    RawDevice,
    SysNode,
    parse_udev_db,
    parse_uevent,
    parse_vpd_pg80,
)
from storage_driver_agent.devices.sysfs import HostRoot, describe_os_error

log = logging.getLogger(__name__)

CLASS_DIRS = {DeviceClass.BLOCK: "/sys/class/block", DeviceClass.NVME: "/sys/class/nvme"}
DEVICES_ROOT = "/sys/devices"
BY_ID_DIR = "/dev/disk/by-id"
UDEV_DB_DIR = "/run/udev/data"
MAX_ANCESTORS = 16
LOOP_DISK = re.compile(r"^loop\d+$")

# Attributes of the device's own directory (absent ones are skipped).
BLOCK_ATTRS = (
    "size",
    "ro",
    "removable",
    "hidden",
    "partition",
    "queue/rotational",
    "queue/logical_block_size",
    "queue/physical_block_size",
    "wwid",
    "serial",
    "eui",
    "nguid",
    "uuid",
    "nsid",
    "dm/name",
    "dm/uuid",
    "md/level",
    "md/uuid",
    "loop/backing_file",
)
NVME_CONTROLLER_ATTRS = ("model", "serial", "firmware_rev", "transport", "address", "cntlid", "subsysnqn")

# Attributes read from ancestors, by their subsystem.
ANCESTOR_ATTRS: dict[str, tuple[str, ...]] = {
    "block": (
        "size",
        "ro",
        "removable",
        "queue/rotational",
        "queue/logical_block_size",
        "queue/physical_block_size",
        "wwid",
        "serial",
        "eui",
        "nguid",
        "uuid",
        "nsid",
        "loop/backing_file",
        "dm/uuid",
        "md/uuid",
    ),
    "scsi": ("vendor", "model", "rev", "wwid", "type"),
    "usb": ("idVendor", "idProduct", "manufacturer", "product", "serial"),
    "nvme": NVME_CONTROLLER_ATTRS,
    "nvme-subsystem": ("model", "serial", "firmware_rev", "subsysnqn"),
    "mmc": ("name", "serial", "manfid", "oemid", "fwrev", "type"),
    "pci": ("vendor", "device"),
    "virtio": ("vendor", "device"),
}
BINARY_ATTRS = {"scsi": ("vpd_pg80",)}


@dataclass
class _Reader:
    """Reads attributes of one device, collecting what failed instead of dropping the device."""

    host: HostRoot
    device_path: str
    errors: list[str] = field(default_factory=list)

    def _label(self, path: str) -> str:
        prefix = self.device_path.rstrip("/") + "/"
        return path[len(prefix) :] if path.startswith(prefix) else path

    def fail(self, what: str, exc: BaseException) -> None:
        self.errors.append(f"{self._label(what)}: {describe_os_error(exc)}")

    def text(self, path: str) -> str | None:
        try:
            return self.host.read_text(path).strip()
        except (FileNotFoundError, NotADirectoryError):
            return None  # an attribute this kind of device does not have
        except (OSError, UnicodeDecodeError) as exc:
            self.fail(path, exc)
            return None

    def binary(self, path: str) -> bytes | None:
        try:
            return self.host.read_bytes(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self.fail(path, exc)
            return None

    def link_name(self, path: str) -> str | None:
        target = self.host.readlink(path)
        return target.rstrip("/").rsplit("/", 1)[-1] if target else None

    def node(self, path: str, attrs: Iterable[str] | None = None) -> SysNode:
        subsystem = self.link_name(f"{path}/subsystem")
        uevent_text = self.text(f"{path}/uevent")
        wanted = attrs if attrs is not None else ANCESTOR_ATTRS.get(subsystem or "", ())
        values: dict[str, str] = {}
        for attr in wanted:
            value = self.text(f"{path}/{attr}")
            if value is not None:
                values[attr] = value
        for attr in BINARY_ATTRS.get(subsystem or "", ()):
            data = self.binary(f"{path}/{attr}")
            if data is not None and (decoded := parse_vpd_pg80(data)):
                values[attr] = decoded
        return SysNode(
            path=path,
            subsystem=subsystem,
            driver=self.link_name(f"{path}/driver"),
            uevent=parse_uevent(uevent_text or ""),
            attrs=values,
        )


class Probe:
    """Reads the devices of one host (through its host root)."""

    def __init__(self, host: HostRoot):
        self.host = host

    # --- enumeration -----------------------------------------------------------------------

    def kernel_names(self) -> list[tuple[DeviceClass, str]]:
        return [(cls, name) for cls, root in CLASS_DIRS.items() for name in self.host.listdir(root)]

    def all(self) -> dict[str, RawDevice]:
        """Every present device, by kernel name."""
        links = self.by_id_links()
        result: dict[str, RawDevice] = {}
        for cls, name in self.kernel_names():
            device = self._read(cls, name, links)
            if device is not None:
                result[name] = device
        return result

    def some(self, names: Iterable[str]) -> dict[str, RawDevice | None]:
        """The named devices (None for each that is not present), plus the parents of those that
        are, because a partition's identity is derived from its disk's."""
        links = self.by_id_links()
        result: dict[str, RawDevice | None] = {}
        pending = list(dict.fromkeys(names))
        while pending:
            name = pending.pop()
            if name in result:
                continue
            cls = self._class_of(name)
            device = self._read(cls, name, links) if cls is not None else None
            result[name] = device
            if device is not None:
                parent = device.ancestor("block")
                if parent is not None and parent.name not in result:
                    pending.append(parent.name)
        return result

    def _class_of(self, name: str) -> DeviceClass | None:
        if "/" in name or name in ("", ".", ".."):
            return None
        for cls, root in CLASS_DIRS.items():
            if self.host.exists(f"{root}/{name}"):
                return cls
        return None

    def by_id_links(self) -> dict[str, list[str]]:
        """Kernel name -> its /dev/disk/by-id links (present only where udev made them)."""
        result: dict[str, list[str]] = {}
        for entry in self.host.listdir(BY_ID_DIR):
            target = self.host.readlink(f"{BY_ID_DIR}/{entry}")
            if target:
                result.setdefault(target.rstrip("/").rsplit("/", 1)[-1], []).append(f"{BY_ID_DIR}/{entry}")
        return result

    # --- one device ------------------------------------------------------------------------

    def _read(self, cls: DeviceClass, name: str, links: dict[str, list[str]]) -> RawDevice | None:
        path = self.host.resolve(f"{CLASS_DIRS[cls]}/{name}")
        if not self.host.exists(path):
            return None  # removed between listing and reading
        if (
            cls is DeviceClass.BLOCK
            and LOOP_DISK.match(name)
            and not self.host.exists(f"{path}/loop/backing_file")
        ):
            return None  # a loop device exists only while attached; skip reading the rest
        reader = _Reader(self.host, path)
        own = reader.node(path, BLOCK_ATTRS if cls is DeviceClass.BLOCK else NVME_CONTROLLER_ATTRS)
        if cls is DeviceClass.BLOCK and not self._present(name, own):
            return None
        chain = [own, *self._ancestors(reader, path)]
        chain.extend(self._nvme_controller_chain(reader, chain))
        udev, udev_links = self._udev(reader, cls, own)
        backing = self._backing(reader, own) if LOOP_DISK.match(name) else None
        return RawDevice(
            kernel_name=name,
            device_class=cls,
            chain=tuple(chain),
            udev=udev,
            links=tuple(sorted(set(links.get(name, [])) | {x for x in udev_links if "/by-id/" in x})),
            slaves=tuple(self.host.listdir(f"{path}/slaves")) if cls is DeviceClass.BLOCK else (),
            backing=backing,
            read_errors=tuple(reader.errors),
        )

    @staticmethod
    def _present(name: str, own: SysNode) -> bool:
        if own.attrs.get("hidden") == "1":
            return False  # NVMe multipath path devices (nvme0c0n1): the namespace head stands for them
        if LOOP_DISK.match(name):
            return "loop/backing_file" in own.attrs  # detached between the check above and now
        return True

    def _ancestors(self, reader: _Reader, path: str) -> list[SysNode]:
        nodes: list[SysNode] = []
        current = path.rstrip("/").rsplit("/", 1)[0]
        while current.startswith(DEVICES_ROOT + "/") and len(nodes) < MAX_ANCESTORS:
            nodes.append(reader.node(current))
            current = current.rsplit("/", 1)[0]
        return nodes

    def _nvme_controller_chain(self, reader: _Reader, chain: list[SysNode]) -> list[SysNode]:
        """With native NVMe multipathing a namespace lives under its subsystem
        (/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1); its controller (model,
        PCI address, driver) is reached through the subsystem's nvmeN links."""
        subsystem = next((n for n in chain if n.subsystem == "nvme-subsystem"), None)
        if subsystem is None or any(n.subsystem == "nvme" for n in chain):
            return []
        controllers = [
            e for e in self.host.listdir(subsystem.path) if e.startswith("nvme") and e[4:].isdigit()
        ]
        if not controllers:
            return []
        first = min(controllers, key=lambda e: int(e[4:]))
        controller_path = self.host.resolve(f"{subsystem.path}/{first}")
        return [reader.node(controller_path), *self._ancestors(reader, controller_path)]

    def _udev(self, reader: _Reader, cls: DeviceClass, own: SysNode) -> tuple[dict[str, str], list[str]]:
        major, minor = own.uevent.get("MAJOR"), own.uevent.get("MINOR")
        if not major or not minor:
            return {}, []
        kind = "b" if cls is DeviceClass.BLOCK else "c"
        text = reader.text(f"{UDEV_DB_DIR}/{kind}{major}:{minor}")
        if text is None:
            return {}, []
        properties, links = parse_udev_db(text)
        return {k: v for k, v in properties.items() if k in UDEV_PROPERTY_WHITELIST}, links

    def _backing(self, reader: _Reader, own: SysNode) -> BackingFile | None:
        path = own.attrs.get("loop/backing_file")
        if not path:
            return None
        dev_path = "/dev/" + own.uevent.get("DEVNAME", own.name)
        try:
            device, inode = self.host.loop_backing_inode(dev_path)
        except OSError as ioctl_error:
            # No device node here (a container without /dev, a recorded tree): fall back to the
            # file at the backing path, which is right unless it was replaced since.
            try:
                st = self.host.stat(path)
            except OSError as stat_error:
                reader.errors.append(
                    f"loop/backing_file inode: {dev_path}: {describe_os_error(ioctl_error)}; "
                    f"{path}: {describe_os_error(stat_error)}"
                )
                return None
            device, inode = st.st_dev, st.st_ino
        try:
            file_device, file_inode, generation = self.host.file_generation(path)
        except OSError:
            return BackingFile(device, inode)  # no generation on this filesystem, or no file there
        if (file_device, file_inode) != (device, inode):
            return BackingFile(device, inode)  # the path names another file now
        return BackingFile(device, inode, generation)
