"""Device types: the vocabulary shared by driver files, NodeDevices and StorageDrivers."""

from __future__ import annotations

from enum import StrEnum


class DeviceType(StrEnum):
    """The kind of a storage device, as the agent classifies it.

    The values are the strings used in `NodeDevice.spec.type` and
    `StorageDriver.spec.supportedDevices`.
    """

    NVME_CONTROLLER = "nvme-controller"
    NVME_NAMESPACE = "nvme-namespace"
    SCSI_DISK = "scsi-disk"  # SATA and SAS disks through the SCSI layer
    USB_MASS_STORAGE = "usb-mass-storage"
    VIRTIO_BLOCK = "virtio-block"
    MMC = "mmc"
    LOOP = "loop"
    ZRAM = "zram"
    DEVICE_MAPPER = "device-mapper"
    MD_RAID = "md-raid"
    PARTITION = "partition"


ALL_DEVICE_TYPES: tuple[str, ...] = tuple(t.value for t in DeviceType)
