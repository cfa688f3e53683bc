"""The stable identity of a device, which names its NodeDevice (pure).

The chain (DESIGN.md), first link that exists:

1. WWN (SCSI/SATA/SAS/USB: the kernel's `wwid` when it is an NAA or EUI designator);
2. NVMe EUI-64, then NGUID (namespaces);
3. serial + model (NVMe controllers and namespaces add the namespace id; MMC boot areas add
   their suffix);
4. by-path: where the device is plugged in, from its sysfs path without the parts that change
   when it is re-plugged (kernel name, SCSI host number);
5. virtual devices (loop, zram, device-mapper, md): node + kernel name + what backs them: a
   loop device's backing file *and that file's device and inode*, so a loop device re-attached
   to a different file at the same path is a new device; device-mapper and md use their UUID
   instead of the kernel name, which changes between boots.

Partitions take their disk's identity plus the partition number. Only sysfs facts are used, so
an identity never changes because udevd started or stopped.

Two present devices with the same identity (cheap USB sticks share serials; a disk seen over
two paths shares its WWN) are told apart by location: see `resolve_duplicates`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from storage_driver_api.nodedevice import DeviceIdentity, IdentityKind
from storage_driver_sdk.devices import DeviceType

from storage_driver_agent.devices.classify import VIRTUAL_TYPES
from storage_driver_agent.devices.facts import RawDevice

MAX_IDENTITY = 1024
MMC_AREA = re.compile(r"^mmcblk\d+(boot\d+|rpmb|gp\d+)$")


def base_identity(
    device: RawDevice, kind: DeviceType, node_name: str, parent: DeviceIdentity | None = None
) -> DeviceIdentity:
    """The first link of the chain that this device has."""
    if kind is DeviceType.PARTITION:
        number = device.node.attr("partition") or device.node.uevent.get("PARTN") or device.kernel_name
        if parent is not None:
            return _identity(parent.kind, f"{parent.value}/part{number}")
        return _identity(IdentityKind.BY_PATH, f"{location(device.node.path)}/part{number}")
    if kind in VIRTUAL_TYPES:
        return _identity(IdentityKind.VIRTUAL, virtual_value(device, kind, node_name))
    if kind in (DeviceType.SCSI_DISK, DeviceType.USB_MASS_STORAGE) and (wwn := scsi_wwn(device)):
        return _identity(IdentityKind.WWN, wwn)
    if kind is DeviceType.NVME_NAMESPACE:
        if eui := hex_id(device.node.attr("eui")):
            return _identity(IdentityKind.NVME_EUI64, eui)
        if nguid := hex_id(device.node.attr("nguid")):
            return _identity(IdentityKind.NVME_NGUID, nguid)
    serial, model = serial_and_model(device, kind)
    if serial:
        value = f"{serial}/{model}" if model else serial
        if kind is DeviceType.NVME_NAMESPACE:
            value += f"/ns{namespace_id(device)}"
        elif kind is DeviceType.MMC and (area := MMC_AREA.match(device.kernel_name)):
            value += f"/{area.group(1)}"
        return _identity(IdentityKind.SERIAL_MODEL, value)
    return _identity(IdentityKind.BY_PATH, location(device.node.path))


def scsi_wwn(device: RawDevice) -> str | None:
    scsi = device.ancestor("scsi", "scsi_device")
    wwid = (scsi.attr("wwid") if scsi else None) or device.node.attr("wwid")
    if wwid and wwid.lower().startswith(("naa.", "eui.")):
        return wwid.lower()
    return None


def hex_id(text: str | None) -> str | None:
    """'00 25 38 8b 91 b1 c1 d2' or '3a3b..-..' -> lower-case hex; None when absent or all zero."""
    if not text:
        return None
    digits = re.sub(r"[\s:\-]", "", text).lower()
    if not digits or not re.fullmatch(r"[0-9a-f]+", digits) or set(digits) == {"0"}:
        return None
    return digits


def namespace_id(device: RawDevice) -> str:
    if nsid := device.node.attr("nsid"):
        return nsid
    match = re.search(r"n(\d+)$", device.kernel_name)
    return match.group(1) if match else device.kernel_name


def serial_and_model(device: RawDevice, kind: DeviceType) -> tuple[str | None, str | None]:
    """The serial number and model the device reports, wherever its kind keeps them."""
    if kind is DeviceType.NVME_CONTROLLER:
        return device.node.attr("serial"), device.node.attr("model")
    if kind is DeviceType.NVME_NAMESPACE:
        controller = device.ancestor("nvme") or device.ancestor("nvme-subsystem")
        if controller is None:
            return None, None
        return controller.attr("serial"), controller.attr("model")
    if kind in (DeviceType.SCSI_DISK, DeviceType.USB_MASS_STORAGE):
        scsi = device.ancestor("scsi", "scsi_device")
        usb = device.ancestor("usb", "usb_device")
        serial = (scsi.attr("vpd_pg80") if scsi else None) or (usb.attr("serial") if usb else None)
        model = (scsi.attr("model") if scsi else None) or (usb.attr("product") if usb else None)
        return serial, model
    if kind is DeviceType.VIRTIO_BLOCK:
        return device.node.attr("serial"), None
    if kind is DeviceType.MMC:
        card = device.ancestor("mmc")
        return (card.attr("serial"), card.attr("name")) if card else (None, None)
    return None, None


def virtual_value(device: RawDevice, kind: DeviceType, node_name: str) -> str:
    attrs = device.node
    if kind is DeviceType.LOOP:
        backing = attrs.attr("loop/backing_file") or ""
        which = f"@{device.backing}" if device.backing else ""
        return f"{node_name}/{device.kernel_name}/{backing}{which}"
    if kind is DeviceType.DEVICE_MAPPER and (uuid := attrs.attr("dm/uuid")):
        return f"{node_name}/dm-uuid/{uuid}"
    if kind is DeviceType.MD_RAID and (uuid := attrs.attr("md/uuid")):
        return f"{node_name}/md-uuid/{uuid}"
    return f"{node_name}/{device.kernel_name}"


SCSI_HOST = re.compile(r"/host\d+(?=/)|/target\d+:\d+:\d+(?=/)|/(rport|end_device|session)-?\d+[:\-\d]*(?=/)")
SCSI_ADDRESS = re.compile(r"/\d+:(\d+:\d+:\d+)(?=/|$)")


def location(sys_path: str) -> str:
    """Where a device is plugged in, from its sysfs path: stable across renames and re-plugs.

    Drops the device's own name and the numbers the kernel hands out in probe order (SCSI
    hosts and targets), so /sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/
    target6:0:0/6:0:0:0/block/sdb becomes pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/0:0:0.
    """
    path = sys_path.removeprefix("/sys/devices/").rstrip("/")
    path = re.sub(r"/block/[^/]+(/[^/]+)?$", "", path)  # the disk (and partition) names
    path = SCSI_HOST.sub("", "/" + path)
    path = SCSI_ADDRESS.sub(r"/\1", path)
    return path.lstrip("/")


def _identity(kind: IdentityKind, value: str) -> DeviceIdentity:
    return DeviceIdentity(kind=kind, value=bounded(value))


def bounded(value: str) -> str:
    """An identity value that fits the API's limit; a long one keeps its head and a hash of all."""
    if len(value) <= MAX_IDENTITY:
        return value
    suffix = "...sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return value[: MAX_IDENTITY - len(suffix)] + suffix


# --- duplicates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A probed device waiting for its final identity."""

    key: str  # kernel name
    identity: DeviceIdentity  # from the chain
    location: str


@dataclass(frozen=True)
class Claim:
    """An identity an existing NodeDevice of this node already holds, and where that device was."""

    identity: DeviceIdentity
    location: str
    present: bool


def qualified(identity: DeviceIdentity, where: str) -> DeviceIdentity:
    return _identity(identity.kind, f"{identity.value}@{where}")


def resolve_duplicates(candidates: Sequence[Candidate], claims: Iterable[Claim]) -> dict[str, DeviceIdentity]:
    """Final identities: unique among the candidates, and stable while the devices stay put.

    A device whose identity is shared by no other present device keeps the plain identity. When
    several share one, each is qualified by its location (`<identity>@<location>`), except one
    that already holds an identity (plain or qualified) at the same location: it keeps it, so
    that a second stick with the same serial does not rename the first one's NodeDevice.
    """
    by_identity: dict[tuple[str, str], list[Candidate]] = {}
    for candidate in candidates:
        by_identity.setdefault((candidate.identity.kind, candidate.identity.value), []).append(candidate)
    held: dict[tuple[str, str, str], Claim] = {}
    for claim in claims:
        key = (claim.identity.kind, claim.identity.value, claim.location)
        if key not in held or claim.present:
            held[key] = claim
    result: dict[str, DeviceIdentity] = {}
    for _, members in sorted(by_identity.items()):
        group = sorted(members, key=lambda c: (c.location, c.key))
        taken: set[str] = set()
        unresolved: list[Candidate] = []
        for candidate in group:
            options = (candidate.identity, qualified(candidate.identity, candidate.location))
            kept = next(
                (
                    o
                    for o in options
                    if (o.kind, o.value, candidate.location) in held and o.value not in taken
                ),
                None,
            )
            if kept is not None:
                result[candidate.key] = kept
                taken.add(kept.value)
            else:
                unresolved.append(candidate)
        plain = group[0].identity
        if len(unresolved) == 1 and len(group) == 1 and plain.value not in taken:
            result[unresolved[0].key] = plain
            continue
        seen_locations: set[str] = set()
        for candidate in unresolved:
            where = candidate.location
            if where in seen_locations or qualified(plain, where).value in taken:
                where = f"{where}/{candidate.key}"
            seen_locations.add(candidate.location)
            identity = qualified(plain, where)
            result[candidate.key] = identity
            taken.add(identity.value)
    return result


def claims_from(objects: Mapping[str, Mapping[str, object]]) -> list[Claim]:
    """Claims of existing NodeDevice objects (plain dicts from the API)."""
    claims: list[Claim] = []
    for obj in objects.values():
        spec = obj.get("spec")
        if not isinstance(spec, Mapping):
            continue
        raw_identity = spec.get("identity")
        sys_path = spec.get("sysPath")
        if not isinstance(raw_identity, Mapping) or not isinstance(sys_path, str):
            continue
        try:
            identity = DeviceIdentity.model_validate(raw_identity)
        except ValueError:
            continue
        claims.append(Claim(identity, location(sys_path), _present(obj)))
    return claims


def _present(obj: Mapping[str, object]) -> bool:
    status = obj.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, Mapping) and condition.get("type") == "Present":
            return condition.get("status") == "True"
    return False
