"""Turns probed facts into NodeDevice specs (pure): type, identity and attributes in API form.

Every value is cut to the API's bounds here, so that no device a kernel can report makes a
spec the API server (or the model) refuses; what could not be read is listed in readErrors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from storage_driver_api.nodedevice import DeviceIdentity, NodeDeviceSpec
from storage_driver_sdk.devices import DeviceType

from storage_driver_agent.devices import classify, identity
from storage_driver_agent.devices.facts import DeviceClass, RawDevice

SECTOR = 512
LIMITS = {
    "vendor": 256,
    "model": 256,
    "serial": 256,
    "wwn": 256,
    "firmware": 128,
    "transport": 64,
    "pci_address": 64,
    "parent": 253,
    "kernel_driver": 128,
    "kernel_name": 128,
    "dev_path": 256,
    "sys_path": 1024,
    "backing_file": 4096,
}
MAX_LINKS = 16
MAX_ERRORS = 16


@dataclass(frozen=True)
class DescribedDevice:
    """A device as it would be published, before duplicates are resolved."""

    spec: NodeDeviceSpec  # spec.identity is the chain's identity (see identity.resolve_duplicates)
    location: str


def describe_all(devices: Mapping[str, RawDevice], node_name: str) -> list[DescribedDevice]:
    """Every device of a kind this project publishes, in kernel-name order."""
    memo: dict[str, DescribedDevice | None] = {}

    def one(name: str) -> DescribedDevice | None:
        if name not in memo:
            memo[name] = None  # guards against a (corrupt) tree where a device is its own parent
            memo[name] = describe(devices[name], node_name, parent_of)
        return memo[name]

    def parent_of(name: str) -> DescribedDevice | None:
        return one(name) if name in devices else None

    return [d for name in sorted(devices) if (d := one(name)) is not None]


ParentLookup = Callable[[str], "DescribedDevice | None"]


def describe(
    device: RawDevice, node_name: str, parent_of: ParentLookup | None = None
) -> DescribedDevice | None:
    """The device's spec, or None when it is of no published type."""
    kind = classify.device_type(device)
    if kind is None:
        return None
    node = device.node
    parent_name = _parent_name(device, kind)
    parent: DescribedDevice | None = None
    if kind is DeviceType.PARTITION and parent_name and parent_of is not None:
        parent = parent_of(parent_name)
    parent_identity: DeviceIdentity | None = parent.spec.identity if parent else None
    ident = identity.base_identity(device, kind, node_name, parent_identity)
    serial, model = identity.serial_and_model(device, kind)
    # Shown, never used for identity: udev data may appear or vanish with udevd.
    serial = serial or device.udev.get("ID_SERIAL_SHORT")
    queue = _queue_node(device, kind)
    values: dict[str, object] = {
        "node_name": node_name,
        "type": kind,
        "identity": ident,
        "kernel_name": device.kernel_name,
        "dev_path": "/dev/" + node.uevent.get("DEVNAME", device.kernel_name),
        "sys_path": node.path,
        "by_id": [link[:512] for link in device.links[:MAX_LINKS]],
        "vendor": _vendor(device, kind),
        "model": model,
        "serial": serial,
        "wwn": _wwn(device, kind),
        "firmware": _firmware(device, kind),
        "size_bytes": _size(device, kind),
        "rotational": _flag(queue.get("queue/rotational")),
        "removable": _flag(queue.get("removable")),
        "read_only": _flag(node.attr("ro")),
        "logical_block_size": _int(queue.get("queue/logical_block_size")),
        "physical_block_size": _int(queue.get("queue/physical_block_size")),
        "transport": classify.transport(device, kind),
        "pci_address": classify.pci_address(device),
        "parent": parent_name,
        "kernel_driver": classify.kernel_driver(device, kind),
        "backing_file": node.attr("loop/backing_file"),
        "udev": {k[:64]: v[:512] for k, v in sorted(device.udev.items())},
        "read_errors": [e[:512] for e in device.read_errors[:MAX_ERRORS]],
    }
    if kind is DeviceType.NVME_CONTROLLER:
        for field in ("rotational", "removable", "read_only", "logical_block_size", "physical_block_size"):
            values[field] = None
    if parent is not None:
        # A partition is on its disk: it shares where and how the disk is attached.
        for field in ("vendor", "model", "transport", "pci_address", "kernel_driver"):
            values[field] = getattr(parent.spec, field)
    for field, limit in LIMITS.items():
        value = values.get(field)
        if isinstance(value, str):
            values[field] = value[:limit] or None
    spec = NodeDeviceSpec.model_validate(values)
    return DescribedDevice(spec=spec, location=identity.location(node.path))


def _parent_name(device: RawDevice, kind: DeviceType) -> str | None:
    if kind is DeviceType.PARTITION:
        disk = device.ancestor("block")
        return disk.name if disk else None
    if kind is DeviceType.NVME_NAMESPACE:
        controller = device.ancestor("nvme")
        return controller.name if controller else None
    if kind in (DeviceType.DEVICE_MAPPER, DeviceType.MD_RAID) and len(device.slaves) == 1:
        return device.slaves[0]
    return None


def _queue_node(device: RawDevice, kind: DeviceType) -> Mapping[str, str]:
    """Queue attributes live on the disk; a partition reads its disk's."""
    if kind is DeviceType.PARTITION and (disk := device.ancestor("block")) is not None:
        return {**disk.attrs, **{k: v for k, v in device.node.attrs.items() if not k.startswith("queue/")}}
    return device.node.attrs


def _vendor(device: RawDevice, kind: DeviceType) -> str | None:
    if kind in (DeviceType.SCSI_DISK, DeviceType.USB_MASS_STORAGE):
        scsi = device.ancestor("scsi", "scsi_device")
        usb = device.ancestor("usb", "usb_device")
        return (scsi.attr("vendor") if scsi else None) or (usb.attr("manufacturer") if usb else None)
    if kind is DeviceType.MMC and (card := device.ancestor("mmc")) is not None:
        return card.attr("manfid")
    return device.udev.get("ID_VENDOR")


def _wwn(device: RawDevice, kind: DeviceType) -> str | None:
    if kind in (DeviceType.SCSI_DISK, DeviceType.USB_MASS_STORAGE):
        return identity.scsi_wwn(device)
    if kind is DeviceType.NVME_NAMESPACE:
        return device.node.attr("wwid")
    return None


def _firmware(device: RawDevice, kind: DeviceType) -> str | None:
    if kind is DeviceType.NVME_CONTROLLER:
        return device.node.attr("firmware_rev")
    if kind is DeviceType.NVME_NAMESPACE:
        controller = device.ancestor("nvme") or device.ancestor("nvme-subsystem")
        return controller.attr("firmware_rev") if controller else None
    if kind in (DeviceType.SCSI_DISK, DeviceType.USB_MASS_STORAGE):
        scsi = device.ancestor("scsi", "scsi_device")
        return scsi.attr("rev") if scsi else None
    if kind is DeviceType.MMC and (card := device.ancestor("mmc")) is not None:
        return card.attr("fwrev")
    return None


def _size(device: RawDevice, kind: DeviceType) -> int | None:
    if device.device_class is DeviceClass.NVME:
        return None
    sectors = _int(device.node.attr("size"))
    return sectors * SECTOR if sectors is not None else None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def _flag(text: str | None) -> bool | None:
    value = _int(text)
    return None if value is None else value != 0
