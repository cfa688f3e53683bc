"""What kind of device a probed device is, and how it is attached (pure: facts in, answers out).

Types follow DESIGN.md; the rules, in order:

| rule                                                         | type              |
|--------------------------------------------------------------|-------------------|
| found in /sys/class/nvme                                     | nvme-controller   |
| uevent DEVTYPE=partition                                     | partition         |
| loopN / zramN / dm-N / mdN                                   | loop / zram / device-mapper / md-raid |
| nvmeXnY, or below an NVMe controller or subsystem            | nvme-namespace    |
| below an MMC card                                            | mmc               |
| SCSI disk below a USB device                                 | usb-mass-storage  |
| SCSI disk (direct access, RBC or optical memory; not CD-ROM) | scsi-disk         |
| vdX below a virtio device                                    | virtio-block      |
| anything else (sr0, ram0, nbd0, ...)                         | not published     |
"""

from __future__ import annotations

import re

from storage_driver_sdk.devices import DeviceType

from storage_driver_agent.devices.facts import DeviceClass, RawDevice

VIRTUAL_PATTERNS: tuple[tuple[re.Pattern[str], DeviceType], ...] = (
    (re.compile(r"^loop\d+$"), DeviceType.LOOP),
    (re.compile(r"^zram\d+$"), DeviceType.ZRAM),
    (re.compile(r"^dm-\d+$"), DeviceType.DEVICE_MAPPER),
    (re.compile(r"^md\d+$|^md_d\d+$"), DeviceType.MD_RAID),
)
VIRTUAL_TYPES = frozenset(t for _, t in VIRTUAL_PATTERNS)
NVME_NAMESPACE_NAME = re.compile(r"^nvme\d+n\d+$")
# SCSI peripheral device types that are disks: direct access, optical memory, RBC, ZBC.
SCSI_DISK_TYPES = frozenset({"0", "7", "14", "20"})


def device_type(device: RawDevice) -> DeviceType | None:
    """The device's type, or None for kinds this project does not publish."""
    if device.device_class is DeviceClass.NVME:
        return DeviceType.NVME_CONTROLLER
    name = device.kernel_name
    if device.node.devtype == "partition":
        return DeviceType.PARTITION
    for pattern, kind in VIRTUAL_PATTERNS:
        if pattern.match(name):
            return kind
    if (
        NVME_NAMESPACE_NAME.match(name)
        or device.has_ancestor("nvme")
        or device.has_ancestor("nvme-subsystem")
    ):
        return DeviceType.NVME_NAMESPACE
    if device.has_ancestor("mmc"):
        return DeviceType.MMC
    scsi = device.ancestor("scsi", "scsi_device")
    if scsi is not None:
        if scsi.attr("type") not in SCSI_DISK_TYPES:
            return None  # CD/DVD drives, tapes, enclosures
        return DeviceType.USB_MASS_STORAGE if device.has_ancestor("usb") else DeviceType.SCSI_DISK
    if device.has_ancestor("virtio") and name.startswith("vd"):
        return DeviceType.VIRTIO_BLOCK
    return None


def transport(device: RawDevice, kind: DeviceType) -> str | None:
    """How the device is attached: nvme (PCIe), nvme-tcp, sata, sas, usb, virtio, mmc, iscsi, ..."""
    if kind in VIRTUAL_TYPES:
        return None
    nvme = device.node if kind is DeviceType.NVME_CONTROLLER else device.ancestor("nvme")
    if nvme is not None or kind is DeviceType.NVME_NAMESPACE:
        fabric = (nvme.attr("transport") if nvme is not None else None) or "pcie"
        return "nvme" if fabric == "pcie" else f"nvme-{fabric}"
    if device.has_ancestor("usb"):
        return "usb"
    if device.has_ancestor("mmc"):
        return "mmc"
    path = "/".join(node.path for node in device.chain)
    if re.search(r"/ata\d+/", path):
        return "sata"
    if re.search(r"/(end_device|expander|port)-\d+[:/]", path) or "/sas_" in path:
        return "sas"
    if re.search(r"/session\d+/", path):
        return "iscsi"
    if device.has_ancestor("virtio"):
        return "virtio"
    if device.has_ancestor("scsi"):
        return "scsi"
    return None


def pci_address(device: RawDevice) -> str | None:
    """PCI address of the controller the device hangs off (the nearest PCI ancestor)."""
    node = device.ancestor("pci")
    if node is not None:
        return node.name
    if device.device_class is DeviceClass.NVME:
        return device.node.attr("address")
    return None


KERNEL_DRIVER_BY_TYPE = {
    DeviceType.LOOP: "loop",
    DeviceType.ZRAM: "zram",
    DeviceType.DEVICE_MAPPER: "device-mapper",
    DeviceType.MD_RAID: "md",
}


def kernel_driver(device: RawDevice, kind: DeviceType) -> str | None:
    """The kernel driver that serves the device: sd, virtio_blk, nvme, mmcblk, loop, ..."""
    if kind in KERNEL_DRIVER_BY_TYPE:
        return KERNEL_DRIVER_BY_TYPE[kind]
    for node in device.chain:
        if node.driver and node.subsystem != "block":
            return node.driver
    return None
