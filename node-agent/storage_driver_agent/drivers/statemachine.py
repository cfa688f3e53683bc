"""The next action for one driver, from what the node must run (desired) and what runs (actual).

Pure: no I/O, no clock (time is an argument). The reconcile loop (reconcile.py) asks
`next_action` for every driver whenever anything changes, performs at most one action per driver
at a time, and records the outcome in the driver's `DriverState`.

A driver goes: Fetch (resolve and verify its file) -> Start (spawn the host, start(config),
attach the devices) -> Bind (attach/detach as devices come and go) -> Stop (detach, stop, grace
period, terminate, kill). A change of file, version or config is a Stop then a Start; a crash
or failed load waits out an exponential backoff before the next Start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final

NEVER: Final = float("inf")


@dataclass(frozen=True)
class SourceRef:
    """Where the driver file comes from, as resolved by the operator."""

    kind: str  # hostPath, configMap, url
    path: str  # relative to the driver directory
    sha256: str | None = None
    url: str | None = None
    config_map: tuple[str, str, str] | None = None  # namespace, name, key


@dataclass(frozen=True)
class Desired:
    """One driver of NodeDriverConfig.spec, in hashable form."""

    name: str
    driver_name: str
    version: str
    source: SourceRef
    config_json: str  # canonical JSON of spec.config
    grace_seconds: int = 5
    devices: frozenset[str] = frozenset()
    priority: int = 0
    force_unload: bool = False  # detach devices even while they are in use (inuse.py)

    @property
    def fetch_key(self) -> tuple[SourceRef, str, str]:
        """What a verified artifact depends on."""
        return (self.source, self.driver_name, self.version)


@dataclass(frozen=True)
class Artifact:
    """A verified driver file for a desired source."""

    fetch_key: tuple[SourceRef, str, str]
    sha256: str
    class_name: str
    module: str = ""


@dataclass(frozen=True)
class Refusal:
    """Why a desired source cannot be used; `file_sha` is what the file held when refused."""

    fetch_key: tuple[SourceRef, str, str]
    reason: str
    message: str
    file_sha: str | None = None
    retry_at: float = NEVER


@dataclass(frozen=True)
class Host:
    """A live driver host and what it runs."""

    pid: int
    driver_name: str
    version: str
    sha256: str
    config_json: str
    attached: frozenset[str] = frozenset()
    started_at: float = 0.0  # wall-clock seconds


@dataclass(frozen=True)
class Failure:
    """The last failed load or crash, and when the next start may happen."""

    reason: str
    message: str
    at: float
    attempts: int  # consecutive failures, for the backoff
    retry_at: float


@dataclass(frozen=True)
class BackoffPolicy:
    base_seconds: float = 1.0
    max_seconds: float = 300.0
    # A host that ran this long before crashing starts the backoff over.
    stable_seconds: float = 600.0


def next_failure(
    previous: Failure | None,
    reason: str,
    message: str,
    *,
    now: float,
    policy: BackoffPolicy,
    running_since: float | None = None,
) -> Failure:
    """The failure record after one more failure: the delay doubles, up to the maximum."""
    stable = running_since is not None and now - running_since >= policy.stable_seconds
    attempts = 1 if previous is None or stable else previous.attempts + 1
    delay = min(policy.base_seconds * 2 ** min(attempts - 1, 32), policy.max_seconds)
    return Failure(reason, message, now, attempts, now + delay)


@dataclass(frozen=True)
class DriverState:
    """Everything the decision for one driver depends on."""

    name: str
    desired: Desired | None = None
    admitted: bool = True  # within maxLoadedDrivers
    artifact: Artifact | Refusal | None = None
    file_sha: str | None = None  # sha256 of the desired path in the driver directory now (None: absent)
    host: Host | None = None
    busy: bool = False  # an action is in flight
    failure: Failure | None = None
    attach_retry: Mapping[str, float] = field(default_factory=dict)  # device -> not before


# --- actions ---------------------------------------------------------------------------------


class StopReason(StrEnum):
    REMOVED = "Removed"  # no longer in the spec
    CAPACITY = "CapacityExceeded"
    RELOAD = "Reload"  # file, version or config changed
    SOURCE_REMOVED = "SourceRemoved"  # the driver file disappeared


@dataclass(frozen=True)
class Idle:
    pass


@dataclass(frozen=True)
class Wait:
    until: float


@dataclass(frozen=True)
class Fetch:
    pass


@dataclass(frozen=True)
class Start:
    devices: frozenset[str]


@dataclass(frozen=True)
class Bind:
    attach: frozenset[str]
    detach: frozenset[str]


@dataclass(frozen=True)
class Stop:
    reason: StopReason


Action = Idle | Wait | Fetch | Start | Bind | Stop
IDLE: Final = Idle()

# Refusals that end a running host: its file is gone. Others (a wrong checksum, a bad new file)
# keep the verified version running; nothing changes until the source is fixed.
STOPPING_REFUSALS: Final = frozenset({"SourceNotFound"})


def artifact_is_current(state: DriverState, now: float) -> bool:
    desired, artifact = state.desired, state.artifact
    if desired is None or artifact is None or artifact.fetch_key != desired.fetch_key:
        return False
    if isinstance(artifact, Artifact):
        return state.file_sha == artifact.sha256
    return state.file_sha == artifact.file_sha and now < artifact.retry_at


def host_is_current(host: Host, desired: Desired, artifact: Artifact) -> bool:
    return (
        host.sha256 == artifact.sha256
        and host.version == desired.version
        and host.driver_name == desired.driver_name
        and host.config_json == desired.config_json
    )


def wanted_devices(desired: Desired, present: frozenset[str]) -> frozenset[str]:
    """The devices to attach: those in the spec that the node has."""
    return desired.devices & present


def next_action(state: DriverState, present: frozenset[str], now: float) -> Action:
    """What to do next for one driver; IDLE when nothing is to be done or an action is in flight."""
    if state.busy:
        return IDLE
    desired, host = state.desired, state.host
    if desired is None or not state.admitted:
        if host is None:
            return IDLE
        return Stop(StopReason.REMOVED if desired is None else StopReason.CAPACITY)
    if not artifact_is_current(state, now):
        return Fetch()
    artifact = state.artifact
    if isinstance(artifact, Refusal):
        if host is not None and artifact.reason in STOPPING_REFUSALS:
            return Stop(StopReason.SOURCE_REMOVED)
        return Wait(artifact.retry_at) if artifact.retry_at < NEVER else IDLE
    assert isinstance(artifact, Artifact)
    wanted = wanted_devices(desired, present)
    if host is None:
        if state.failure is not None and now < state.failure.retry_at:
            return Wait(state.failure.retry_at)
        return Start(wanted)
    if not host_is_current(host, desired, artifact):
        return Stop(StopReason.RELOAD)
    detach = host.attached - wanted
    missing = wanted - host.attached
    attach = frozenset(d for d in missing if state.attach_retry.get(d, 0.0) <= now)
    if attach or detach:
        return Bind(attach, detach)
    if missing:
        return Wait(min(state.attach_retry[d] for d in missing))
    return IDLE


# --- capacity --------------------------------------------------------------------------------


def admitted(desired: Iterable[Desired], max_loaded: int) -> frozenset[str]:
    """The drivers within maxLoadedDrivers: highest priority first, then by name."""
    ranked = sorted(desired, key=lambda d: (-d.priority, d.name))
    return frozenset(d.name for d in ranked[: max(max_loaded, 0)])


# --- phase -----------------------------------------------------------------------------------


class Phase(StrEnum):
    PENDING = "Pending"
    LOADING = "Loading"
    LOADED = "Loaded"
    UNLOADING = "Unloading"
    FAILED = "Failed"


def phase_of(
    state: DriverState, present: frozenset[str], now: float, in_flight: Action | None
) -> tuple[Phase, str]:
    """The phase reported for a driver, and a short message. `in_flight` is the running action."""
    desired, host, artifact = state.desired, state.host, state.artifact
    if isinstance(in_flight, Stop):
        if in_flight.reason == StopReason.RELOAD:
            return Phase.LOADING, "reloading: stopping the previous host"
        return Phase.UNLOADING, f"unloading ({in_flight.reason.value})"
    if desired is None:
        return (Phase.UNLOADING, "no longer in the spec") if host else (Phase.PENDING, "")
    if not state.admitted:
        if host is not None:
            return Phase.UNLOADING, "over maxLoadedDrivers; unloading"
        return Phase.FAILED, "not loaded: the node runs maxLoadedDrivers drivers of higher priority"
    if isinstance(in_flight, Fetch | Start):
        return Phase.LOADING, "fetching the driver file" if isinstance(in_flight, Fetch) else "starting"
    if isinstance(artifact, Refusal) and artifact.fetch_key == desired.fetch_key:
        if host is not None and artifact.reason not in STOPPING_REFUSALS:
            return (
                Phase.FAILED,
                f"{artifact.reason}; the previously verified version {host.version} keeps running",
            )
        return Phase.FAILED, artifact.reason
    if host is not None:
        if isinstance(artifact, Artifact) and host_is_current(host, desired, artifact):
            missing = wanted_devices(desired, present) - host.attached
            pending = [d for d in missing if state.attach_retry.get(d, 0.0) <= now]
            if pending or isinstance(in_flight, Bind):
                return Phase.LOADED, "binding devices"
            if missing:
                return Phase.LOADED, f"{len(missing)} device(s) failed to attach; retrying"
            return Phase.LOADED, ""
        return Phase.LOADING, "reload pending"
    if state.failure is not None and now < state.failure.retry_at:
        return (
            Phase.FAILED,
            f"{state.failure.reason}; retrying after backoff (attempt {state.failure.attempts})",
        )
    return Phase.PENDING, "waiting to load"


def forget_host(state: DriverState) -> DriverState:
    """The state after the host is gone (stopped or crashed)."""
    return replace(state, host=None, attach_retry={})
