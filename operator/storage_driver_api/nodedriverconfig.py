"""NodeDriverConfig: one per node. Spec (the drivers the node must run) is written by the
operator; status (what the node actually runs and can run) by that node's agent."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field
from storage_driver_sdk.devices import DeviceType

from storage_driver_api.meta import SEMVER, SHA256, ApiModel, Condition, atomic_list
from storage_driver_api.storagedriver import RELATIVE_PATH, MinimumPlatform

MAX_DRIVERS_PER_NODE = 256
MAX_AVAILABLE = 512
MAX_BOUND_DEVICES = 128
MAX_HOLDERS = 16


class ResolvedSource(ApiModel):
    """Where the agent gets the driver file, resolved by the operator."""

    kind: Literal["hostPath", "configMap", "url"] = Field(description="hostPath, configMap or url.")
    path: str = Field(
        max_length=255,
        pattern=RELATIVE_PATH,
        description="File (or package directory) relative to the driver directory that the agent loads. For "
        "configMap and url sources the agent writes the file here after verifying it.",
    )
    sha256: str | None = Field(
        default=None, pattern=SHA256, description="Content hash the file must have; required for url."
    )
    url: str | None = Field(default=None, max_length=2048, description="Download URL (url sources).")
    config_map_namespace: str | None = Field(default=None, max_length=63, description="ConfigMap namespace.")
    config_map_name: str | None = Field(default=None, max_length=253, description="ConfigMap name.")
    config_map_key: str | None = Field(default=None, max_length=253, description="ConfigMap key.")


class DesiredDriver(ApiModel):
    """A driver this node must run."""

    name: str = Field(max_length=253, description="Name of the StorageDriver object.")
    driver_name: str = Field(max_length=128, description="Name the driver file declares.")
    version: str = Field(max_length=128, pattern=SEMVER, description="Version to run.")
    source: ResolvedSource = Field(description="The resolved driver file.")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Handed to the driver's start(config).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    unload_grace_period_seconds: int = Field(default=5, ge=0, le=3600, description="Grace period to stop.")
    devices: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list,
        max_length=MAX_BOUND_DEVICES,
        description="NodeDevices (by name) to attach to the driver.",
        json_schema_extra=atomic_list(),
    )
    priority: int = Field(default=0, ge=-1000, le=1000, description="Priority from the StorageDriver.")
    force_unload: bool = Field(
        default=False,
        description="unloadPolicy.force of the StorageDriver: detach devices even while they are in use.",
    )


class NodeDriverConfigSpec(ApiModel):
    """The drivers this node must run, decided by the operator."""

    drivers: list[DesiredDriver] = Field(
        default_factory=list,
        max_length=MAX_DRIVERS_PER_NODE,
        description="Drivers to run, ordered by priority then name.",
        json_schema_extra=atomic_list(),
    )


class DriverPhase(StrEnum):
    PENDING = "Pending"
    LOADING = "Loading"
    LOADED = "Loaded"
    UNLOADING = "Unloading"
    FAILED = "Failed"


class DriverError(ApiModel):
    """The last error of a driver."""

    reason: str = Field(
        max_length=128, description="CamelCase reason, e.g. LoadFailed, Crashed, ChecksumMismatch."
    )
    message: str = Field(default="", max_length=4096, description="Details.")
    time: dt.datetime = Field(description="When it happened.")


MAX_FACTS = 16


class BoundDevice(ApiModel):
    """A device attached to a driver, with the facts the driver's attach() returned."""

    name: str = Field(max_length=253, description="Name of the NodeDevice.")
    facts: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict,
        max_length=MAX_FACTS,
        description="What the driver's attach() returned, as strings, captured when the device was attached.",
        json_schema_extra={"maxProperties": MAX_FACTS},
    )


class DeviceInUse(ApiModel):
    """A bound device the agent does not detach because something on the node still uses it."""

    name: str = Field(max_length=253, description="Name of the NodeDevice.")
    held_by: list[Annotated[str, Field(max_length=512)]] = Field(
        default_factory=list,
        max_length=MAX_HOLDERS,
        description="What uses it, e.g. 'loop3 mounted at /mnt/data', 'held by dm-0'.",
    )


class DriverStatus(ApiModel):
    """What the agent runs for one driver."""

    name: str = Field(max_length=253, description="Name of the StorageDriver object.")
    phase: DriverPhase = Field(description="Pending, Loading, Loaded, Unloading or Failed.")
    version: str | None = Field(default=None, max_length=128, description="Version running.")
    sha256: str | None = Field(default=None, pattern=SHA256, description="Hash of the loaded file.")
    pid: int | None = Field(default=None, ge=1, description="Process id of the driver host.")
    start_time: dt.datetime | None = Field(default=None, description="When the driver host last started.")
    restarts: int = Field(
        default=0, ge=0, description="How often the driver host was restarted after a crash."
    )
    bound_devices: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list,
        max_length=MAX_BOUND_DEVICES,
        description="NodeDevices attached to the driver.",
        json_schema_extra=atomic_list(),
    )
    last_error: DriverError | None = Field(default=None, description="The last error, if any.")
    unhealthy: str | None = Field(
        default=None,
        max_length=1024,
        description="Why the driver's health() reports it unhealthy; unset while it is healthy.",
    )
    message: str = Field(default="", max_length=1024, description="Human-readable state.")
    unload_blocked: list[DeviceInUse] = Field(
        default_factory=list,
        max_length=MAX_BOUND_DEVICES,
        description="Devices whose detach (or the driver's unload) waits because they are in use; "
        "retried until they are free, unless the StorageDriver's unloadPolicy.force is set.",
        json_schema_extra=atomic_list(),
    )
    devices: list[BoundDevice] = Field(
        default_factory=list,
        max_length=MAX_BOUND_DEVICES,
        description="The attached devices with the facts the driver reported about each.",
        json_schema_extra=atomic_list(),
    )


class AvailableDriver(ApiModel):
    """A driver found by statically scanning the node's driver directory."""

    file: str = Field(max_length=255, description="Path relative to the driver directory.")
    sha256: str = Field(pattern=SHA256, description="Hash of the file's content.")
    driver_name: str | None = Field(default=None, max_length=128, description="Name the decorator declares.")
    class_name: str | None = Field(default=None, max_length=128, description="Decorated class.")
    version: str | None = Field(default=None, max_length=128, description="Version the decorator declares.")
    supported_devices: list[DeviceType] = Field(
        default_factory=list, max_length=len(DeviceType), description="Device types the decorator declares."
    )
    description: str = Field(default="", max_length=1024, description="Description the decorator declares.")
    auto_load: bool = Field(default=True, description="auto_load the decorator declares.")
    minimum_platform: MinimumPlatform | None = Field(default=None, description="Declared minimum platform.")
    error: str | None = Field(
        default=None,
        max_length=1024,
        description="Why the file could not be scanned; the driver is unusable.",
    )


class Capacity(ApiModel):
    max_loaded_drivers: int = Field(
        default=100, ge=0, le=MAX_DRIVERS_PER_NODE, description="Bound on loaded drivers."
    )


class NodeDriverConfigStatus(ApiModel):
    """What the node runs and can run, written by the node's agent."""

    observed_generation: int | None = Field(default=None, ge=0, description="The spec generation acted on.")
    boot_id: str | None = Field(default=None, max_length=64, description="Kernel boot id of the node.")
    agent_version: str | None = Field(default=None, max_length=64, description="Version of the agent.")
    drivers: list[DriverStatus] = Field(
        default_factory=list,
        max_length=MAX_DRIVERS_PER_NODE,
        description="Per-driver state.",
        json_schema_extra=atomic_list(),
    )
    available: list[AvailableDriver] = Field(
        default_factory=list,
        max_length=MAX_AVAILABLE,
        description="Drivers found in the node's driver directory.",
        json_schema_extra=atomic_list(),
    )
    capacity: Capacity = Field(default_factory=Capacity, description="Limits of this node's agent.")
    desired_count: int = Field(default=0, ge=0, description="Drivers in the spec the agent acted on.")
    loaded_count: int = Field(default=0, ge=0, description="Drivers Loaded.")
    failed_count: int = Field(default=0, ge=0, description="Drivers Failed.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Ready: the agent converged on the spec. UnloadBlocked: a driver's unload or a "
        "device's detach waits for a device in use.",
        json_schema_extra=atomic_list(),
    )


class NodeDriverConfig(ApiModel):
    """The drivers one node must run, and what it runs."""

    spec: NodeDriverConfigSpec = Field(
        default_factory=NodeDriverConfigSpec, description="Written by the operator."
    )
    status: NodeDriverConfigStatus = Field(
        default_factory=NodeDriverConfigStatus, description="Written by the node's agent."
    )
