"""Slim, immutable views of the objects the operator decides on, and pure projections from the
API's dicts into them.

At the design point (1,000 nodes x 16 devices) the operator holds 16,000 NodeDevices in
memory; a view keeps only what matching and planning read (a NodeDevice's selector attributes
as strings, its presence and when that last changed), not the whole object.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError
from storage_driver_api.constants import LEASE_PREFIX, UNLOAD_AFTER_ANNOTATION, lease_name
from storage_driver_api.meta import describe_validation_error
from storage_driver_api.nodedriverconfig import DesiredDriver, DriverPhase, ResolvedSource
from storage_driver_api.storagedriver import (
    DEVICE_ATTRIBUTES,
    MinimumPlatform,
    StorageDriverSpec,
    StorageDriverStatus,
)

Obj = Mapping[str, Any]

DEFAULT_MAX_LOADED_DRIVERS: Final = 100
MANAGED_DIR: Final = "managed"


def parse_time(value: object) -> float | None:
    """RFC 3339 (as the API writes it) to epoch seconds; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def resource_version(obj: Obj) -> str:
    return str(_meta(obj).get("resourceVersion") or "")


# --- Nodes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    uid: str
    labels: Mapping[str, str]
    kernel_version: str
    operating_system: str
    architecture: str
    deleting: bool = False
    boot_id: str = ""  # status.nodeInfo.bootID, set by the kubelet; changes when the node reboots


def node_view(obj: Obj) -> NodeView:
    meta = _meta(obj)
    info = (obj.get("status") or {}).get("nodeInfo") or {}
    return NodeView(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        labels=dict(meta.get("labels") or {}),
        kernel_version=str(info.get("kernelVersion") or ""),
        operating_system=str(info.get("operatingSystem") or ""),
        architecture=str(info.get("architecture") or ""),
        deleting=bool(meta.get("deletionTimestamp")),
        boot_id=str(info.get("bootID") or ""),
    )


# --- NodeDevices -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A NodeDevice as matching sees it: type, selector attributes (as strings) and presence.

    A device with no Present condition yet counts as present: the agent publishes only devices
    it sees, and sets the condition in a second write (status cannot be set on create).
    """

    name: str
    node: str
    type: str
    present: bool
    since: float | None  # lastTransitionTime of Present: arrival or removal (epoch seconds)
    attributes: Mapping[str, str] = field(default_factory=dict)


def attribute_text(value: object) -> str | None:
    """How a selector sees an attribute value: booleans as true/false, numbers in decimal."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


def device_view(obj: Obj) -> DeviceView | None:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    node = spec.get("nodeName")
    if not node or not spec.get("type"):
        return None
    attributes: dict[str, str] = {}
    for key in DEVICE_ATTRIBUTES:
        text = attribute_text(spec.get(key))
        if text is not None:
            attributes[key] = sys.intern(text) if len(text) < 64 else text
    for key, value in (spec.get("udev") or {}).items():
        text = attribute_text(value)
        if text is not None:
            attributes[sys.intern(f"udev.{key}")] = sys.intern(text) if len(text) < 64 else text
    present, since = True, None
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Present":
            present = condition.get("status") != "False"
            since = parse_time(condition.get("lastTransitionTime"))
    return DeviceView(
        name=str(meta.get("name", "")),
        node=sys.intern(str(node)),
        type=sys.intern(str(spec["type"])),
        present=present,
        since=since,
        attributes=attributes,
    )


# --- NodeDriverConfigs -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriverRun:
    """What a node's agent reports for one driver."""

    phase: str
    version: str | None = None
    pid: int | None = None
    restarts: int = 0
    bound_devices: tuple[str, ...] = ()
    error_reason: str | None = None
    error_message: str | None = None
    message: str = ""
    unhealthy: str | None = None  # what the driver's health() said, while it says so
    # The devices in use an unload or a detach waits for, in words; None while none does.
    unload_blocked: str | None = None

    @property
    def loaded(self) -> bool:
        return self.phase == DriverPhase.LOADED

    @property
    def failed(self) -> bool:
        return self.phase == DriverPhase.FAILED

    @property
    def stopped(self) -> bool:
        """Nothing runs for this driver (a Failed or Pending entry without a process)."""
        return self.phase in (DriverPhase.FAILED, DriverPhase.PENDING) and self.pid is None


@dataclass(frozen=True, slots=True)
class AvailableFile:
    file: str
    sha256: str | None
    error: str | None
    driver_name: str | None = None
    version: str | None = None
    # The device types the file's decorator declares; empty when it declares none (or was not read).
    supported_devices: tuple[str, ...] = ()
    auto_load: bool = True
    minimum_platform: MinimumPlatform | None = None


@dataclass(frozen=True, slots=True)
class ConfigView:
    """A NodeDriverConfig: the spec the operator wrote and the agent's report."""

    name: str
    uid: str
    generation: int
    spec_drivers: tuple[DesiredDriver, ...]
    rollout_keys: Mapping[str, str]
    has_status: bool = False
    observed_generation: int | None = None
    max_loaded_drivers: int = DEFAULT_MAX_LOADED_DRIVERS
    runs: Mapping[str, DriverRun] = field(default_factory=dict)
    available: Mapping[str, AvailableFile] = field(default_factory=dict)
    boot_id: str | None = None
    spec_error: str | None = None  # the spec could not be read (someone else wrote it)
    unload_after: Mapping[str, float] = field(default_factory=dict)  # driver -> when it may unload

    @property
    def settled(self) -> bool:
        """The agent has acted on the current spec."""
        return self.observed_generation is not None and self.observed_generation >= self.generation

    def entry(self, driver: str) -> DesiredDriver | None:
        return next((d for d in self.spec_drivers if d.name == driver), None)


def reported_runs(config: ConfigView | None, node: NodeView | None) -> Mapping[str, DriverRun]:
    """What the node's agent reports running, unless the report predates the node's last boot
    (its bootId differs from the Node's): nothing from before a reboot runs any more, and the
    agent reloads what the spec says once it is back."""
    if config is None:
        return {}
    if node is not None and node.boot_id and config.boot_id and node.boot_id != config.boot_id:
        return {}
    return config.runs


def rollout_key(entry: DesiredDriver) -> str:
    """The fields whose change restarts a driver and so rolls across nodes: what runs and how
    it is configured (not which devices it binds, its priority or its grace period)."""
    return json.dumps(
        [entry.driver_name, entry.version, entry.source.to_api(), entry.config],
        sort_keys=True,
        separators=(",", ":"),
    )


def _run(item: Mapping[str, Any]) -> DriverRun:
    error = item.get("lastError") or {}
    pid = item.get("pid")
    return DriverRun(
        phase=str(item.get("phase") or DriverPhase.PENDING),
        version=item.get("version"),
        pid=int(pid) if isinstance(pid, int) else None,
        restarts=int(item.get("restarts") or 0),
        bound_devices=tuple(item.get("boundDevices") or ()),
        error_reason=error.get("reason"),
        error_message=error.get("message"),
        message=str(item.get("message") or ""),
        unhealthy=str(item["unhealthy"]) if item.get("unhealthy") else None,
        unload_blocked=_in_use(item.get("unloadBlocked")),
    )


def _in_use(items: object) -> str | None:
    """`unloadBlocked` of a driver's status in words: 'dev-a (loop3 mounted at /mnt)'."""
    if not isinstance(items, list) or not items:
        return None
    parts = []
    for item in items:
        if isinstance(item, Mapping):
            held = ", ".join(str(h) for h in item.get("heldBy") or ()) or "in use"
            parts.append(f"{item.get('name', '?')} ({held})")
    return "; ".join(parts) or None


def parse_unload_after(value: object) -> dict[str, float]:
    """The unload-after annotation: driver -> epoch seconds; what cannot be read is left out
    (a driver without a time waits a full unloadDelaySeconds, the conservative side)."""
    if not isinstance(value, str):
        return {}
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    found = {}
    for driver, when in data.items() if isinstance(data, dict) else ():
        with contextlib.suppress(TypeError, ValueError):
            found[str(driver)] = dt.datetime.fromisoformat(str(when).replace("Z", "+00:00")).timestamp()
    return found


def format_unload_after(deadlines: Mapping[str, float]) -> str | None:
    """The annotation's value for these deadlines (whole seconds, rounded up); None: none."""
    if not deadlines:
        return None
    return json.dumps(
        {
            name: dt.datetime.fromtimestamp(math.ceil(at), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for name, at in sorted(deadlines.items())
        },
        separators=(",", ":"),
    )


def _platform(value: object) -> MinimumPlatform | None:
    """A file's declared minimumPlatform; None when it declares none, or when what the node
    reports cannot be read (the agent checked it when it scanned the file)."""
    if not isinstance(value, Mapping):
        return None
    try:
        return MinimumPlatform.model_validate(value)
    except ValidationError:
        return None


def config_view(obj: Obj) -> ConfigView:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    drivers: list[DesiredDriver] = []
    spec_error = None
    for index, item in enumerate(spec.get("drivers") or []):
        try:
            drivers.append(DesiredDriver.model_validate(item))
        except ValidationError as exc:
            spec_error = describe_validation_error(exc, f"spec.drivers[{index}]")
    status = obj.get("status")
    status_map: Mapping[str, Any] = status or {}
    capacity = (status_map.get("capacity") or {}).get("maxLoadedDrivers")
    available = {}
    for item in status_map.get("available") or []:
        if item.get("file"):
            available[str(item["file"])] = AvailableFile(
                file=str(item["file"]),
                sha256=item.get("sha256"),
                error=item.get("error"),
                driver_name=item.get("driverName"),
                version=item.get("version"),
                supported_devices=tuple(str(t) for t in item.get("supportedDevices") or ()),
                auto_load=item.get("autoLoad") is not False,
                minimum_platform=_platform(item.get("minimumPlatform")),
            )
    observed = status_map.get("observedGeneration")
    return ConfigView(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        spec_drivers=tuple(drivers),
        rollout_keys={d.name: rollout_key(d) for d in drivers},
        has_status=bool(status),
        observed_generation=int(observed) if isinstance(observed, int) else None,
        max_loaded_drivers=int(capacity) if isinstance(capacity, int) else DEFAULT_MAX_LOADED_DRIVERS,
        runs={str(item["name"]): _run(item) for item in status_map.get("drivers") or [] if item.get("name")},
        available=available,
        boot_id=status_map.get("bootId"),
        spec_error=spec_error,
        unload_after=parse_unload_after((meta.get("annotations") or {}).get(UNLOAD_AFTER_ANNOTATION)),
    )


# --- Leases ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseView:
    """An agent's liveness Lease (one per node)."""

    node: str
    renew_time: float | None
    duration_seconds: int | None
    holder: str | None = None

    def fresh(self, now: float) -> bool:
        if self.renew_time is None or not self.duration_seconds:
            return False
        return now < self.renew_time + self.duration_seconds


def lease_node(obj: Obj) -> str | None:
    """The node whose agent Lease this is: the one whose Lease name it has (a long node name is
    cut in the name, so its holderIdentity names it, and must give the same name back)."""
    name = str(_meta(obj).get("name", ""))
    holder = (obj.get("spec") or {}).get("holderIdentity")
    if isinstance(holder, str) and holder and lease_name(holder) == name:
        return holder
    plain = name[len(LEASE_PREFIX) :] if name.startswith(LEASE_PREFIX) else ""
    return plain if plain and lease_name(plain) == name else None


def lease_view(obj: Obj) -> LeaseView | None:
    node = lease_node(obj)
    if not node:
        return None
    spec = obj.get("spec") or {}
    renew = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds")
    return LeaseView(
        node=node,
        renew_time=renew,
        duration_seconds=int(duration) if isinstance(duration, int) else None,
        holder=spec.get("holderIdentity"),
    )


# --- StorageDrivers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StorageDriverView:
    """A StorageDriver: its parsed spec (or why it is invalid), the entry it puts in a node's
    NodeDriverConfig (devices left empty), and its current status."""

    name: str
    uid: str
    generation: int
    deleting: bool
    spec: StorageDriverSpec | None
    invalid: str | None
    template: DesiredDriver | None
    rollout_key: str | None
    status: StorageDriverStatus
    finalizers: tuple[str, ...] = ()


def resolve_source(name: str, spec: StorageDriverSpec) -> ResolvedSource:
    """Where the agent finds the file: a hostPath as given; a configMap or url download at a
    path of its own under the managed folder of the driver directory."""
    source = spec.source
    if source.host_path is not None:
        return ResolvedSource(kind="hostPath", path=source.host_path.path, sha256=source.host_path.sha256)
    managed = f"{MANAGED_DIR}/{name}.py"
    if source.config_map is not None:
        return ResolvedSource(
            kind="configMap",
            path=managed,
            sha256=source.config_map.sha256,
            config_map_namespace=source.config_map.namespace,
            config_map_name=source.config_map.name,
            config_map_key=source.config_map.key,
        )
    assert source.url is not None
    return ResolvedSource(kind="url", path=managed, sha256=source.url.sha256, url=source.url.url)


def driver_template(name: str, spec: StorageDriverSpec) -> DesiredDriver:
    return DesiredDriver(
        name=name,
        driver_name=spec.driver_name,
        version=spec.version,
        source=resolve_source(name, spec),
        config=spec.config,
        unload_grace_period_seconds=spec.unload_grace_period_seconds,
        devices=[],
        priority=spec.priority,
        force_unload=spec.unload_policy.force,
    )


_CHECK_FIELD = re.compile(
    r"(^|; )(spec[A-Za-z0-9.\[\]]*): ([a-z][A-Za-z0-9]*(?:\[[0-9]+\])?(?:\.[a-z][A-Za-z0-9]*)*): "
)


def parse_spec(spec: Obj | None) -> tuple[StorageDriverSpec | None, str | None]:
    """The spec, or a message naming each wrong field (what the CRD schema cannot check)."""
    try:
        return StorageDriverSpec.model_validate(spec or {}), None
    except ValidationError as exc:
        message = describe_validation_error(exc, "spec")
        # Checks across fields report "spec: maxUnavailable: ..."; name the field as a path.
        return None, _CHECK_FIELD.sub(r"\1\2.\3: ", message)


def storage_driver_view(obj: Obj) -> StorageDriverView:
    meta = _meta(obj)
    name = str(meta.get("name", ""))
    spec, invalid = parse_spec(obj.get("spec"))
    try:
        status = StorageDriverStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        status = StorageDriverStatus()  # rewritten by the next status update
    template = driver_template(name, spec) if spec is not None else None
    return StorageDriverView(
        name=name,
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        deleting=bool(meta.get("deletionTimestamp")),
        spec=spec,
        invalid=invalid,
        template=template,
        rollout_key=rollout_key(template) if template is not None else None,
        status=status,
        finalizers=tuple(meta.get("finalizers") or ()),
    )
