"""The pure mapping between the API and the state machine: desired drivers from
NodeDriverConfig.spec, and NodeDriverConfig.status from the drivers' states."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from storage_driver_api.meta import ConditionStatus, set_condition
from storage_driver_api.nodedriverconfig import (
    MAX_AVAILABLE,
    MAX_BOUND_DEVICES,
    MAX_FACTS,
    MAX_HOLDERS,
    AvailableDriver,
    BoundDevice,
    Capacity,
    DesiredDriver,
    DeviceInUse,
    DriverError,
    DriverPhase,
    DriverStatus,
    NodeDriverConfigStatus,
)
from storage_driver_api.storagedriver import KernelVersionRange
from storage_driver_api.storagedriver import MinimumPlatform as ApiMinimumPlatform
from storage_driver_sdk.scan import ScannedDriver

from storage_driver_agent.drivers import inuse
from storage_driver_agent.drivers.statemachine import (
    Action,
    Desired,
    DriverState,
    Phase,
    SourceRef,
    phase_of,
)

MESSAGE_MAX: Final = 1024
UNLOAD_BLOCKED: Final = "UnloadBlocked"
FACT_VALUE_MAX: Final = 256
# How long a status may be held back while an action runs (write_delay).
TRANSITION_HOLD: Final = 0.25


def config_json(config: Mapping[str, Any]) -> str:
    """Canonical JSON of a driver's config: equal configs give equal strings."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def desired_from_api(driver: DesiredDriver) -> Desired:
    source = driver.source
    config_map = None
    if source.config_map_name:
        config_map = (source.config_map_namespace or "", source.config_map_name, source.config_map_key or "")
    return Desired(
        name=driver.name,
        driver_name=driver.driver_name,
        version=driver.version,
        source=SourceRef(source.kind, source.path, source.sha256, source.url, config_map),
        config_json=config_json(driver.config),
        grace_seconds=driver.unload_grace_period_seconds,
        devices=frozenset(driver.devices),
        priority=driver.priority,
        force_unload=driver.force_unload,
    )


def available_from_scan(scanned: ScannedDriver) -> AvailableDriver | None:
    """The status entry for a scanned file; None when the file has no readable content at all."""
    if not scanned.sha256:
        return None
    declaration = scanned.declaration
    if declaration is None:
        return AvailableDriver(file=scanned.file, sha256=scanned.sha256, error=(scanned.error or "")[:1024])
    platform = None
    if declaration.minimum_platform is not None:
        mp = declaration.minimum_platform
        kernel = (
            KernelVersionRange(at_least=mp.kernel, below=mp.kernel_below)
            if mp.kernel or mp.kernel_below
            else None
        )
        platform = ApiMinimumPlatform(kernel_version=kernel, os=mp.os, architectures=list(mp.architectures))
    return AvailableDriver(
        file=scanned.file,
        sha256=scanned.sha256,
        driver_name=declaration.driver_name,
        class_name=declaration.class_name,
        version=declaration.version,
        supported_devices=list(declaration.supported_devices),
        description=declaration.description,
        auto_load=declaration.auto_load,
        minimum_platform=platform,
    )


@dataclass(frozen=True)
class LastError:
    reason: str
    message: str
    at: dt.datetime


@dataclass(frozen=True)
class DriverReport:
    """What the status of one driver is built from."""

    state: DriverState
    in_flight: Action | None = None
    restarts: int = 0
    last_error: LastError | None = None
    unhealthy: str | None = None
    facts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    blocked: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # devices in use a detach waits for


def _facts(values: Mapping[str, Any]) -> dict[str, str]:
    result: dict[str, str] = {}
    for key in sorted(values)[:MAX_FACTS]:
        value = values[key]
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        result[str(key)[:64]] = text[:FACT_VALUE_MAX]
    return result


def _wall(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC)


def driver_status(report: DriverReport, present: frozenset[str], now: float) -> DriverStatus | None:
    """The status entry of one driver; None once it is neither desired nor running."""
    state = report.state
    if state.desired is None and state.host is None and report.in_flight is None:
        return None
    phase, message = phase_of(state, present, now, report.in_flight)
    host = state.host
    if report.unhealthy and host is not None:
        message = f"unhealthy: {report.unhealthy}" + (f"; {message}" if message else "")
    blocked = report.blocked if host is not None else {}
    if blocked:
        what = "unload" if phase == Phase.UNLOADING else "detach"
        message = f"{what} blocked: {inuse.describe(blocked)} in use; retrying until free"
    bound = sorted(host.attached)[:MAX_BOUND_DEVICES] if host else []
    return DriverStatus(
        name=state.name,
        phase=DriverPhase(phase.value),
        version=host.version if host else (state.desired.version if state.desired else None),
        sha256=host.sha256 if host else None,
        pid=host.pid if host else None,
        start_time=_wall(host.started_at) if host else None,
        restarts=report.restarts,
        bound_devices=bound,
        last_error=(
            DriverError(
                reason=report.last_error.reason[:128],
                message=report.last_error.message[:4096],
                time=report.last_error.at,
            )
            if report.last_error
            else None
        ),
        unhealthy=report.unhealthy[:MESSAGE_MAX] if report.unhealthy and host is not None else None,
        message=message[:MESSAGE_MAX],
        unload_blocked=[
            DeviceInUse(name=name, held_by=[h[:512] for h in holders[:MAX_HOLDERS]])
            for name, holders in sorted(blocked.items())[:MAX_BOUND_DEVICES]
        ],
        devices=[BoundDevice(name=name, facts=_facts(report.facts.get(name) or {})) for name in bound],
    )


@dataclass(frozen=True)
class NodeReport:
    generation: int | None
    boot_id: str
    agent_version: str
    max_loaded_drivers: int
    drivers: list[DriverReport]
    available: list[ScannedDriver]
    previous: NodeDriverConfigStatus | None = None  # keeps condition transition times


def build_status(
    node: NodeReport, present: frozenset[str], now: float, at: dt.datetime
) -> NodeDriverConfigStatus:
    drivers = [s for s in (driver_status(r, present, now) for r in node.drivers) if s is not None]
    drivers.sort(key=lambda s: s.name)
    available = [a for a in (available_from_scan(s) for s in node.available) if a is not None]
    available.sort(key=lambda a: a.file)
    desired = [r for r in node.drivers if r.state.desired is not None]
    by_phase: dict[str, list[str]] = {}
    for status in drivers:
        by_phase.setdefault(str(status.phase), []).append(status.name)
    loaded = by_phase.get(Phase.LOADED.value, [])
    failed = by_phase.get(Phase.FAILED.value, [])
    waiting = sorted(
        set(by_phase.get(Phase.LOADING.value, []))
        | set(by_phase.get(Phase.PENDING.value, []))
        | set(by_phase.get(Phase.UNLOADING.value, []))
    )
    if failed:
        ready = (ConditionStatus.FALSE, "DriversFailed", f"failed: {_names(failed)}")
    elif waiting:
        ready = (ConditionStatus.FALSE, "Converging", f"not yet converged: {_names(waiting)}")
    else:
        ready = (ConditionStatus.TRUE, "Converged", f"{len(loaded)} driver(s) loaded as the spec asks")
    previous = node.previous.conditions if node.previous else []
    conditions = set_condition(
        previous, "Ready", ready[0], ready[1], ready[2], observed_generation=node.generation, at=at
    )
    blocked = [s for s in drivers if s.unload_blocked]
    if blocked:
        held = "; ".join(f"{s.name}: {s.message}" for s in blocked[:5])
        conditions = set_condition(
            conditions,
            UNLOAD_BLOCKED,
            ConditionStatus.TRUE,
            "DeviceInUse",
            held[:MESSAGE_MAX],
            observed_generation=node.generation,
            at=at,
        )
    elif any(c.type == UNLOAD_BLOCKED for c in conditions):
        conditions = set_condition(
            conditions,
            UNLOAD_BLOCKED,
            ConditionStatus.FALSE,
            "NoDeviceInUse",
            "no unload or detach waits for a device in use",
            observed_generation=node.generation,
            at=at,
        )
    return NodeDriverConfigStatus(
        observed_generation=node.generation,
        boot_id=node.boot_id or None,
        agent_version=node.agent_version,
        drivers=drivers,
        available=available[:MAX_AVAILABLE],
        capacity=Capacity(max_loaded_drivers=node.max_loaded_drivers),
        desired_count=len(desired),
        loaded_count=len(loaded),
        failed_count=len(failed),
        conditions=conditions,
    )


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns `old` into `new` (null removes a key; lists are
    replaced whole). Empty when nothing changed."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif key not in old or before != value:
            patch[key] = value
    return patch


def settling(reports: Iterable[DriverReport]) -> bool:
    """True while an action runs (a file fetched, a host started or stopped, devices bound):
    when it ends, the status changes again."""
    return any(report.in_flight is not None for report in reports)


def write_delay(settling: bool, held_since: float | None, now: float, hold: float = TRANSITION_HOLD) -> float:
    """Seconds to wait before writing a changed status: 0 when nothing runs. While an action
    runs, what is left of `hold` since the first status held: a quick load writes only its outcome
    (Loaded, not Loading first), and that write never queues behind the Loading one; a slow load
    still shows Loading after `hold`."""
    if not settling:
        return 0.0
    start = now if held_since is None else held_since
    return max(0.0, start + hold - now)


def _names(names: Iterable[str], limit: int = 5) -> str:
    ordered = sorted(names)
    shown = ", ".join(ordered[:limit])
    return shown + (f" and {len(ordered) - limit} more" if len(ordered) > limit else "")


def bound_drivers_by_device(reports: Iterable[DriverReport]) -> dict[str, list[str]]:
    """NodeDevice name -> the drivers whose host has it attached (NodeDevice.status.boundDrivers)."""
    result: dict[str, list[str]] = {}
    for report in reports:
        host = report.state.host
        if host is None:
            continue
        for device in host.attached:
            result.setdefault(device, []).append(report.state.name)
    return {device: sorted(names) for device, names in result.items()}
