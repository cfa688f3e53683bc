"""NodeDevice: one storage device of one node, published by that node's agent (spec and status)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field
from storage_driver_sdk.devices import DeviceType

from storage_driver_api.constants import short_hash
from storage_driver_api.meta import DNS_SUBDOMAIN, ApiModel, Condition, atomic_list

# udev properties worth publishing: enough to select on, never the whole environment.
UDEV_PROPERTY_WHITELIST = (
    "ID_BUS",
    "ID_TYPE",
    "ID_MODEL",
    "ID_MODEL_ID",
    "ID_VENDOR",
    "ID_VENDOR_ID",
    "ID_SERIAL",
    "ID_SERIAL_SHORT",
    "ID_WWN",
    "ID_WWN_WITH_EXTENSION",
    "ID_PATH",
    "ID_PATH_TAG",
    "ID_PART_TABLE_TYPE",
    "ID_PART_ENTRY_NUMBER",
    "ID_PART_ENTRY_TYPE",
    "ID_FS_TYPE",
    "ID_FS_UUID",
    "ID_REVISION",
    "ID_USB_DRIVER",
    "DM_NAME",
    "DM_UUID",
    "MD_LEVEL",
    "MD_UUID",
    "DEVTYPE",
)


class IdentityKind(StrEnum):
    """How a device's stable identity was derived, strongest first."""

    WWN = "wwn"
    NVME_EUI64 = "nvme-eui64"
    NVME_NGUID = "nvme-nguid"
    SERIAL_MODEL = "serial-model"
    BY_PATH = "by-path"
    VIRTUAL = "virtual"


class DeviceIdentity(ApiModel):
    """The stable identity of a device; the NodeDevice's name is derived from it."""

    kind: IdentityKind = Field(description="Which link of the identity chain produced the value.")
    value: str = Field(max_length=1024, description="The identity itself, e.g. the WWN or 'serial/model'.")


class NodeDeviceSpec(ApiModel):
    """Facts about a device, as the agent read them from sysfs and udev."""

    node_name: str = Field(
        max_length=253, pattern=DNS_SUBDOMAIN, description="Node the device is attached to."
    )
    type: DeviceType = Field(description="Device type: " + ", ".join(t.value for t in DeviceType) + ".")
    identity: DeviceIdentity = Field(description="Stable identity, kept across renames (sdb becoming sdc).")
    kernel_name: str = Field(max_length=128, description="Current kernel name, e.g. sdb, nvme0n1, loop3.")
    dev_path: str | None = Field(default=None, max_length=256, description="Device node, e.g. /dev/sdb.")
    sys_path: str = Field(max_length=1024, description="sysfs path of the device.")
    by_id: list[Annotated[str, Field(max_length=512)]] = Field(
        default_factory=list, max_length=16, description="/dev/disk/by-id links pointing at the device."
    )
    vendor: str | None = Field(default=None, max_length=256, description="Vendor as reported by the device.")
    model: str | None = Field(default=None, max_length=256, description="Model as reported by the device.")
    serial: str | None = Field(default=None, max_length=256, description="Serial number.")
    wwn: str | None = Field(default=None, max_length=256, description="World Wide Name.")
    firmware: str | None = Field(default=None, max_length=128, description="Firmware revision.")
    size_bytes: int | None = Field(default=None, ge=0, description="Capacity in bytes.")
    rotational: bool | None = Field(default=None, description="True for spinning disks.")
    removable: bool | None = Field(default=None, description="True for removable media.")
    read_only: bool | None = Field(
        default=None, description="True when the kernel marks the device read-only."
    )
    logical_block_size: int | None = Field(default=None, ge=0, description="Logical block size in bytes.")
    physical_block_size: int | None = Field(default=None, ge=0, description="Physical block size in bytes.")
    transport: str | None = Field(
        default=None, max_length=64, description="Transport: nvme, sata, sas, usb, virtio, mmc, ..."
    )
    pci_address: str | None = Field(default=None, max_length=64, description="PCI address of the controller.")
    parent: str | None = Field(
        default=None,
        max_length=253,
        description="Kernel name of the parent device (for partitions and namespaces).",
    )
    kernel_driver: str | None = Field(
        default=None, max_length=128, description="Kernel driver bound to the device."
    )
    backing_file: str | None = Field(
        default=None, max_length=4096, description="Backing file of a loop device."
    )
    udev: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] = Field(
        default_factory=dict,
        max_length=len(UDEV_PROPERTY_WHITELIST),
        description="Whitelisted udev properties: " + ", ".join(UDEV_PROPERTY_WHITELIST) + ".",
        json_schema_extra={"maxProperties": len(UDEV_PROPERTY_WHITELIST)},
    )
    read_errors: list[Annotated[str, Field(max_length=512)]] = Field(
        default_factory=list,
        max_length=16,
        description="Attributes that could not be read, with the reason; the rest of the spec is still valid.",
    )


class NodeDeviceStatus(ApiModel):
    """Presence of the device and the drivers bound to it, written by the node's agent."""

    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=4,
        description="Present: True while the device is attached; its lastTransitionTime records arrival "
        "and removal.",
        json_schema_extra=atomic_list(),
    )
    bound_drivers: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list,
        max_length=32,
        description="StorageDrivers whose driver host has this device attached.",
        json_schema_extra=atomic_list(),
    )


class NodeDevice(ApiModel):
    """A storage device of a node."""

    spec: NodeDeviceSpec = Field(description="Facts about the device.")
    status: NodeDeviceStatus = Field(default_factory=NodeDeviceStatus, description="Presence and bindings.")


MAX_NAME = 253


SUFFIX_LENGTH = 10


def node_device_name_prefix(node_name: str) -> str:
    """The part of a node's NodeDevice names before `-<hash>` (the node name, cut to fit)."""
    return node_name[: MAX_NAME - SUFFIX_LENGTH - 1].rstrip("-.")


def node_device_name(node_name: str, identity: DeviceIdentity) -> str:
    """`<node>-<short hash of the identity>`; the same identity always gives the same name."""
    suffix = short_hash(f"{identity.kind}:{identity.value}", SUFFIX_LENGTH)
    return f"{node_device_name_prefix(node_name)}-{suffix}"


def is_present(obj: Mapping[str, Any]) -> bool:
    """A NodeDevice object's Present condition: present unless it says False (not yet written: present)."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Present":
            return bool(condition.get("status") != "False")
    return True
