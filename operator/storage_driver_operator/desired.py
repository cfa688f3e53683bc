"""The desired state of one node: which drivers its NodeDriverConfig spec lists, and why.

Pure functions of the observed world and the current time:

- `plan_node`: for every StorageDriver (and every entry already in the node's spec) one
  `Decision` (load, keep, update, hold, unload, none) with a reason; the resulting spec is
  bounded by the node's capacity and ordered by priority (highest first), then name.
- Conservative unload: a driver whose matching devices went away stays until no matching
  device has been present for `unloadDelaySeconds` (measured from the devices' Present
  condition, so an operator restart changes nothing) and only while the node's agent is alive
  (its Lease is fresh): a dead or restarting agent never causes an unload. Changes a user
  makes (spec, node labels, platform, deletion) take effect at once.
- `plan_rollout`: a change of what runs (version, driverName, source or config) reaches the
  nodes already running the driver at most `maxUnavailable` at a time; a node counts as
  unavailable until its agent reports the new entry Loaded.
- An invalid StorageDriver changes nothing on the nodes: entries already there stay verbatim.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from storage_driver_api.nodedriverconfig import DesiredDriver

from storage_driver_operator.autoload import file_drivers, gone, is_file_entry
from storage_driver_operator.matching import Reason, match_node, source_unavailable
from storage_driver_operator.views import (
    DEFAULT_MAX_LOADED_DRIVERS,
    ConfigView,
    DeviceView,
    LeaseView,
    NodeView,
    StorageDriverView,
)


class Action(StrEnum):
    LOAD = "load"  # not on the node yet: added to its spec
    KEEP = "keep"  # on the node and stays (its device list may change)
    UPDATE = "update"  # on the node: switches to the new version or config (rolling)
    HOLD = "hold"  # on the node although it would not be added now: kept as it is, for a reason
    UNLOAD = "unload"  # removed from the node's spec
    NONE = "none"  # not on the node, and not added


IN_SPEC = frozenset({Action.LOAD, Action.KEEP, Action.UPDATE, Action.HOLD})


class Hold(StrEnum):
    """Why an entry stays on a node that would not get it now."""

    UNLOAD_DELAY = "UnloadDelay"
    AGENT_NOT_READY = "AgentNotReady"
    ROLLOUT_PENDING = "RolloutPending"
    DRIVER_NOT_AVAILABLE = "DriverNotAvailable"
    INVALID_SPEC = "InvalidSpec"


@dataclass(frozen=True, slots=True)
class Decision:
    driver: str
    action: Action
    reason: str
    message: str
    has_hardware: bool = False  # node, platform, opt-in and devices match

    @property
    def in_spec(self) -> bool:
        return self.action in IN_SPEC


@dataclass(frozen=True, slots=True)
class NodeState:
    """Everything observed about one node."""

    node: NodeView
    devices: Sequence[DeviceView] = ()
    config: ConfigView | None = None
    lease: LeaseView | None = None


@dataclass(frozen=True, slots=True)
class NodePlan:
    node: str
    drivers: tuple[DesiredDriver, ...]
    decisions: Mapping[str, Decision]
    changed: bool  # drivers (or unload_after) differ from the node's current NodeDriverConfig
    recheck_at: float | None = None  # when time alone may change the plan (an unload delay ends)
    # When each driver held by its unload delay may go: stored on the NodeDriverConfig, so that
    # the delay survives an operator restart (views.UNLOAD_AFTER_ANNOTATION).
    unload_after: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rollout:
    """Progress of a change of what runs for one driver, across the nodes already running it."""

    driver: str
    allowed: frozenset[str] = frozenset()  # old nodes that may switch now
    total: int = 0  # nodes with the driver in their spec
    updated: int = 0  # of which at the new entry
    unavailable: int = 0  # updated but not yet Loaded at it
    waiting: int = 0  # old nodes that must wait for the budget


NO_ROLLOUT = Rollout(driver="")


def max_unavailable_count(value: int | str, total: int) -> int:
    """maxUnavailable as a node count: percentages round up (as for DaemonSets); at least 1, so
    that a rollout always progresses."""
    count = math.ceil(total * int(value.rstrip("%")) / 100) if isinstance(value, str) else value
    return max(1, count)


def _serving_new(driver: StorageDriverView, config: ConfigView) -> bool:
    run = config.runs.get(driver.name)
    return (
        run is not None
        and run.loaded
        and config.settled
        and driver.template is not None
        and run.version == driver.template.version
    )


def plan_rollout(driver: StorageDriverView, configs: Iterable[ConfigView]) -> Rollout:
    """Which nodes still running an older entry of `driver` may switch to the new one now.

    Nodes whose old entry is not Loaded switch at once (they serve nothing); Loaded ones switch
    in name order while fewer than maxUnavailable switched nodes are not yet Loaded again.
    A node that cannot obtain the new file stays on the old entry.
    """
    if driver.spec is None or driver.deleting or driver.rollout_key is None:
        return Rollout(driver=driver.name)
    total = updated = unavailable = 0
    free: list[str] = []
    budgeted: list[str] = []
    for config in configs:
        key = config.rollout_keys.get(driver.name)
        if key is None:
            continue
        total += 1
        if key == driver.rollout_key:
            updated += 1
            if not _serving_new(driver, config):
                unavailable += 1
            continue
        available = config.available if config.has_status else None
        if source_unavailable(driver.spec, available) is not None:
            continue
        run = config.runs.get(driver.name)
        (budgeted if run is not None and run.loaded else free).append(config.name)
    budget = max(0, max_unavailable_count(driver.spec.max_unavailable, total) - unavailable)
    budgeted.sort()
    allowed = frozenset(free) | frozenset(budgeted[:budget])
    return Rollout(
        driver=driver.name,
        allowed=allowed,
        total=total,
        updated=updated,
        unavailable=unavailable,
        waiting=max(0, len(budgeted) - budget),
    )


def _with(entry: DesiredDriver, devices: Sequence[str], like: DesiredDriver | None = None) -> DesiredDriver:
    """`entry` binding `devices`; priority, grace period and unload policy (which restart
    nothing) from `like`."""
    update: dict[str, object] = {"devices": list(devices)}
    if like is not None:
        update["priority"] = like.priority
        update["unload_grace_period_seconds"] = like.unload_grace_period_seconds
        update["force_unload"] = like.force_unload
    return entry.model_copy(update=update)


@dataclass(slots=True)
class _Choice:
    decision: Decision
    entry: DesiredDriver | None = None
    recheck_at: float | None = None


def _decide(
    driver: StorageDriverView,
    state: NodeState,
    current: DesiredDriver | None,
    rollout: Rollout,
    now: float,
) -> _Choice:
    name = driver.name
    node = state.node.name
    if driver.deleting:
        if current is not None:
            return _Choice(
                Decision(name, Action.UNLOAD, Reason.DELETING, "the StorageDriver is being deleted")
            )
        return _Choice(Decision(name, Action.NONE, Reason.DELETING, "the StorageDriver is being deleted"))
    if driver.spec is None or driver.template is None:
        message = f"invalid spec, nothing changes on the nodes: {driver.invalid}"
        if current is not None:
            return _Choice(Decision(name, Action.HOLD, Hold.INVALID_SPEC, message), entry=current)
        return _Choice(Decision(name, Action.NONE, Reason.INVALID_SPEC, message))

    config = state.config
    available = config.available if config is not None and config.has_status else None
    match = match_node(name, driver.spec, state.node, state.devices, available)
    template = driver.template
    up_to_date = (
        current is not None and config is not None and config.rollout_keys.get(name) == driver.rollout_key
    )

    if match.matched:
        if current is None:
            return _Choice(
                Decision(name, Action.LOAD, match.reason, match.message, True), _with(template, match.devices)
            )
        if up_to_date:
            return _Choice(
                Decision(name, Action.KEEP, match.reason, match.message, True), _with(template, match.devices)
            )
        if node in rollout.allowed:
            message = f"switching to version {template.version}: {match.message}"
            return _Choice(
                Decision(name, Action.UPDATE, match.reason, message, True), _with(template, match.devices)
            )
        message = (
            f"keeps version {current.version} until the rollout reaches this node "
            f"(maxUnavailable {driver.spec.max_unavailable})"
        )
        return _Choice(
            Decision(name, Action.HOLD, Hold.ROLLOUT_PENDING, message, True),
            _with(current, match.devices, template),
        )

    if current is not None and match.reason == Reason.DRIVER_NOT_AVAILABLE:
        # The agent unloads a driver whose file disappears; the operator only declines to
        # switch a node to a file it cannot obtain.
        entry = _with(template, match.devices) if up_to_date else _with(current, match.devices, template)
        return _Choice(Decision(name, Action.HOLD, Hold.DRIVER_NOT_AVAILABLE, match.message, True), entry)

    if current is not None and match.reason == Reason.NO_MATCHING_DEVICES:
        # absent_since is None when no matching device object is left: the agent deletes absent
        # ones after its retention period (then the time recorded on the NodeDriverConfig when
        # the delay began counts, across operator restarts too), or a changed selector matches
        # none (a user's change: at once).
        recorded = state.config.unload_after.get(name) if state.config is not None else None
        if match.absent_since is not None:
            unload_at = match.absent_since + driver.spec.unload_delay_seconds
        else:
            unload_at = recorded if recorded is not None else now
        if now < unload_at:
            message = (
                f"no matching device present; unloads {driver.spec.unload_delay_seconds}s after the last "
                "one went away unless one returns"
            )
            return _Choice(
                Decision(name, Action.HOLD, Hold.UNLOAD_DELAY, message),
                _with(current, (), template),
                unload_at,
            )
        if state.lease is None or not state.lease.fresh(now):
            message = "no matching device present, but the node's agent is not reporting (Lease not renewed)"
            return _Choice(
                Decision(name, Action.HOLD, Hold.AGENT_NOT_READY, message), _with(current, (), template)
            )
        message = f"no matching device present for {driver.spec.unload_delay_seconds}s"
        return _Choice(Decision(name, Action.UNLOAD, match.reason, message))

    action = Action.UNLOAD if current is not None else Action.NONE
    return _Choice(Decision(name, action, match.reason, match.message, match.has_hardware))


def _rank(entry: DesiredDriver) -> tuple[int, str]:
    return -entry.priority, entry.name


def _file_choices(
    state: NodeState, drivers: Sequence[StorageDriverView], current: Mapping[str, DesiredDriver], now: float
) -> dict[str, _Choice]:
    """The node's autoloaded driver files (autoload.py), decided as any driver is; a node's file
    changes only that node, so a new version switches at once."""
    config = state.config
    if config is None or not config.has_status:
        return {}
    claimed = {d.spec.driver_name for d in drivers if d.spec is not None}
    claimed |= {d.driver_name for d in current.values() if not is_file_entry(d.name)}
    choices = {}
    for name, found in file_drivers(config.available, claimed).items():
        if isinstance(found, StorageDriverView):
            here = Rollout(driver=name, allowed=frozenset({state.node.name}))
            choices[name] = _decide(found, state, current.get(name), here, now)
        else:
            action = Action.UNLOAD if name in current else Action.NONE
            choices[name] = _Choice(Decision(name, action, found[0], found[1]))
    return choices


def plan_node(
    state: NodeState,
    drivers: Iterable[StorageDriverView],
    now: float,
    rollouts: Mapping[str, Rollout] | None = None,
    autoload: bool = False,
) -> NodePlan:
    """The spec `state.node` should have, with a decision for every driver concerned.

    `autoload`: the operator's directory autoload (autoload.py) is on."""
    config = state.config
    current = {d.name: d for d in config.spec_drivers} if config is not None else {}
    capacity = config.max_loaded_drivers if config is not None else DEFAULT_MAX_LOADED_DRIVERS
    choices: dict[str, _Choice] = {}
    drivers = list(drivers)
    for driver in drivers:
        rollout = (rollouts or {}).get(driver.name, NO_ROLLOUT)
        choices[driver.name] = _decide(driver, state, current.get(driver.name), rollout, now)
    if autoload:
        choices.update(_file_choices(state, drivers, current, now))
    for name in current:
        if name in choices:
            continue
        if is_file_entry(name):
            reason, message = gone(name, autoload)
            choices[name] = _Choice(Decision(name, Action.UNLOAD, reason, message))
            continue
        message = "the StorageDriver no longer exists"
        choices[name] = _Choice(Decision(name, Action.UNLOAD, Reason.DELETED, message))

    kept = sorted((c for c in choices.values() if c.entry is not None), key=lambda c: _rank(c.entry))  # type: ignore[arg-type]
    for choice in kept[capacity:]:
        decision = choice.decision
        action = Action.UNLOAD if decision.driver in current else Action.NONE
        message = (
            f"the node runs at most {capacity} drivers and {capacity} with a higher priority "
            "(or an earlier name) come first"
        )
        choice.decision = Decision(
            decision.driver, action, Reason.CAPACITY_EXCEEDED, message, decision.has_hardware
        )
        choice.entry = None
        choice.recheck_at = None

    entries = tuple(c.entry for c in kept[:capacity] if c.entry is not None)
    before = [d.to_api() for d in config.spec_drivers] if config is not None else []
    changed = [d.to_api() for d in entries] != before or (
        config is not None and config.spec_error is not None
    )
    rechecks = [c.recheck_at for c in choices.values() if c.recheck_at is not None]
    unload_after = {
        name: math.ceil(c.recheck_at)
        for name, c in choices.items()
        if c.recheck_at is not None and c.decision.reason == Hold.UNLOAD_DELAY
    }
    recorded = {k: math.ceil(v) for k, v in config.unload_after.items()} if config is not None else {}
    return NodePlan(
        node=state.node.name,
        drivers=entries,
        decisions={name: choices[name].decision for name in sorted(choices)},
        changed=changed or (unload_after != recorded and (config is not None or bool(entries))),
        recheck_at=min(rechecks) if rechecks else None,
        unload_after=unload_after,
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole observed world, as `sdctl plan` and tests hold it."""

    nodes: Mapping[str, NodeView]
    devices: Sequence[DeviceView] = ()
    configs: Mapping[str, ConfigView] = field(default_factory=dict)
    leases: Mapping[str, LeaseView] = field(default_factory=dict)
    drivers: Mapping[str, StorageDriverView] = field(default_factory=dict)

    def node_states(self) -> dict[str, NodeState]:
        by_node: dict[str, list[DeviceView]] = {}
        for device in self.devices:
            by_node.setdefault(device.node, []).append(device)
        return {
            name: NodeState(
                node=node,
                devices=tuple(by_node.get(name, ())),
                config=self.configs.get(name),
                lease=self.leases.get(name),
            )
            for name, node in sorted(self.nodes.items())
            if not node.deleting
        }


def plan_rollouts(drivers: Iterable[StorageDriverView], configs: Iterable[ConfigView]) -> dict[str, Rollout]:
    config_list = list(configs)
    return {driver.name: plan_rollout(driver, config_list) for driver in drivers}


def plan_cluster(snapshot: Snapshot, now: float, autoload: bool = False) -> dict[str, NodePlan]:
    """Every live node's plan (a node being deleted gets none: its objects are collected)."""
    drivers = [snapshot.drivers[name] for name in sorted(snapshot.drivers)]
    rollouts = plan_rollouts(drivers, snapshot.configs.values())
    return {
        name: plan_node(state, drivers, now, rollouts, autoload)
        for name, state in snapshot.node_states().items()
    }
