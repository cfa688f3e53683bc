"""A StorageDriver's status and Events, from the per-node decisions and the agents' reports.

Pure: `aggregate` turns the state of one driver on every node into counts, a bounded list of
failing nodes and the Ready / Progressing / Degraded conditions, with kstatus's Reconciling and
Stalled beside them for Flux and other kstatus readers (Reconciling: work is still in flight
for the current generation, as Progressing; Stalled: it cannot converge, an invalid spec or
failing nodes with nothing left in flight); `transitions` compares two
rounds and names the changes worth an Event (summarised when many nodes change at once).
Messages carry no times or volatile numbers, so an unchanged world renders an identical
status and causes no write.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from storage_driver_api.meta import Condition, ConditionStatus, find_condition, set_condition
from storage_driver_api.storagedriver import FAILING_NODES_MAX, FailingNode, StorageDriverStatus

from storage_driver_operator.desired import Action, Decision, Hold
from storage_driver_operator.matching import Reason
from storage_driver_operator.views import DriverRun, StorageDriverView

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"
RECONCILING, STALLED = "Reconciling", "Stalled"  # kstatus (sigs.k8s.io/cli-utils)
LOAD_FAILED = "LoadFailed"
UNHEALTHY = "Unhealthy"  # loaded, but its health() says otherwise
UNLOAD_BLOCKED = "UnloadBlocked"  # an unload or a detach waits for a device in use on the node
AT_TEMPLATE = frozenset({Action.LOAD, Action.KEEP, Action.UPDATE})
SHOWN_NODES = 3


@dataclass(frozen=True, slots=True)
class NodeDriverState:
    """One driver on one node: the operator's decision and what the agent reports."""

    node: str
    decision: Decision
    run: DriverRun | None = None

    @property
    def wanted(self) -> bool:
        """The node should run the driver (perhaps still an older version of it)."""
        d = self.decision
        return d.action in AT_TEMPLATE or (
            d.action == Action.HOLD and d.reason in (Hold.ROLLOUT_PENDING, Hold.DRIVER_NOT_AVAILABLE)
        )

    def failure(self) -> tuple[str, str] | None:
        """(reason, message) when the driver fails on this node, or cannot be placed there."""
        if self.run is not None and self.run.failed:
            reason = self.run.error_reason or LOAD_FAILED
            return reason, self.run.error_message or self.run.message or "the driver failed on the node"
        if self.run is not None and self.run.loaded and self.run.unhealthy:
            return UNHEALTHY, self.run.unhealthy
        if self.run is not None and self.run.unload_blocked and not self.run.stopped:
            return UNLOAD_BLOCKED, f"in use, not detached: {self.run.unload_blocked}"
        d = self.decision
        if d.has_hardware and d.reason in (Reason.CAPACITY_EXCEEDED, Reason.DRIVER_NOT_AVAILABLE):
            return str(d.reason), d.message
        return None


def _names(nodes: Sequence[str]) -> str:
    shown = ", ".join(nodes[:SHOWN_NODES])
    return shown + (f" and {len(nodes) - SHOWN_NODES} more" if len(nodes) > SHOWN_NODES else "")


def _nodes(count: int) -> str:
    return f"{count} node" + ("" if count == 1 else "s")


def aggregate(
    driver: StorageDriverView, states: Iterable[NodeDriverState], now: dt.datetime
) -> StorageDriverStatus:
    """The status the driver should have; conditions keep their lastTransitionTime unless their
    status changes."""
    states = sorted(states, key=lambda s: s.node)
    version = driver.template.version if driver.template is not None else None
    matching = sum(1 for s in states if s.decision.has_hardware)
    desired = sum(1 for s in states if s.decision.in_spec)
    loaded = sum(1 for s in states if s.run is not None and s.run.loaded)
    failed = sum(1 for s in states if s.run is not None and s.run.failed)
    failures = [(s.node, f) for s in states if (f := s.failure()) is not None]
    wanted = [s for s in states if s.wanted]
    current = [
        s
        for s in wanted
        if s.decision.action in AT_TEMPLATE
        and s.run is not None
        and s.run.loaded
        and s.run.version == version
    ]
    waiting = [
        s.node
        for s in wanted
        if s.decision.reason == Hold.ROLLOUT_PENDING or s.decision.action == Action.UPDATE
    ]
    unloading = [s.node for s in states if not s.decision.in_spec and s.run is not None and not s.run.stopped]

    failing = [
        FailingNode(node=node, reason=reason, message=message[:1024]) for node, (reason, message) in failures
    ]
    conditions = list(driver.status.conditions)
    generation = driver.generation

    def put(type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions, type_, status, reason, message, observed_generation=generation, at=now
        )

    failure_reasons = sorted({reason for _, (reason, _) in failures})
    failure_reason = LOAD_FAILED if failed else (failure_reasons[0] if failure_reasons else LOAD_FAILED)
    failure_message = (
        f"{_nodes(len(failures))} failing: "
        + "; ".join(f"{node}: {reason}" for node, (reason, _) in failures[:SHOWN_NODES])
        + ("; ..." if len(failures) > SHOWN_NODES else "")
    )

    # Why the other nodes do not run it (NoMatchingDevices, PlatformTooOld, ...), counted.
    elsewhere = Counter(
        str(s.decision.reason) for s in states if not s.decision.in_spec and s.failure() is None
    )
    not_here = (
        f"; not on {_nodes(sum(elsewhere.values()))}: "
        + ", ".join(f"{reason} {count}" for reason, count in sorted(elsewhere.items()))
        if elsewhere
        else ""
    )

    T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
    if driver.spec is None:
        message = f"{driver.invalid}; nothing changes on the nodes until the spec is fixed"
        put(READY, F, Reason.INVALID_SPEC, message)
        put(PROGRESSING, F, Reason.INVALID_SPEC, "waiting for a valid spec")
        put(DEGRADED, T, Reason.INVALID_SPEC, message)
    elif driver.deleting:
        still = sorted({s.node for s in states if s.decision.in_spec} | set(unloading))
        blocked = [(node, message) for node, (reason, message) in failures if reason == UNLOAD_BLOCKED]
        put(READY, F, Reason.DELETING, "the StorageDriver is being deleted")
        if blocked:
            message = f"unload blocked on {_nodes(len(blocked))}: " + "; ".join(
                f"{node}: {text}" for node, text in blocked[:SHOWN_NODES]
            )
            put(PROGRESSING, T, UNLOAD_BLOCKED, message)
            put(DEGRADED, T, UNLOAD_BLOCKED, message)
        elif still:
            put(PROGRESSING, T, "Unloading", f"waiting for {_nodes(len(still))} to unload: {_names(still)}")
            put(DEGRADED, F, "AsExpected", "deleting")
        else:
            put(PROGRESSING, F, "Unloaded", "unloaded from every node")
            put(DEGRADED, F, "AsExpected", "deleting")
    else:
        if failures:
            put(READY, F, failure_reason, failure_message)
        elif len(current) == len(wanted):
            if wanted:
                put(READY, T, "Loaded", f"version {version} loaded on {_nodes(len(wanted))}{not_here}")
            else:
                put(READY, T, "NoMatchingNodes", f"no node needs the driver{not_here}")
        else:
            put(
                READY,
                F,
                "Loading",
                f"version {version} loaded on {len(current)} of {_nodes(len(wanted))}{not_here}",
            )

        current_nodes = {s.node for s in current}
        not_yet = [s.node for s in wanted if s.node not in current_nodes and s.failure() is None]
        if waiting:
            put(
                PROGRESSING,
                T,
                "RollingUpdate",
                f"{_nodes(len(waiting))} still to switch to version {version}: {_names(waiting)}",
            )
        elif not_yet:
            put(PROGRESSING, T, "Loading", f"loading on {_nodes(len(not_yet))}: {_names(not_yet)}")
        elif unloading:
            put(PROGRESSING, T, "Unloading", f"unloading from {_nodes(len(unloading))}: {_names(unloading)}")
        else:
            put(PROGRESSING, F, "Complete", "every node runs what it should")

        if failures:
            put(DEGRADED, T, failure_reason, failure_message)
        else:
            put(DEGRADED, F, "AsExpected", "no node is failing")

    # kstatus: Reconciling mirrors Progressing; Stalled is Degraded with nothing left in flight.
    progressing = find_condition(conditions, PROGRESSING)
    degraded = find_condition(conditions, DEGRADED)
    assert progressing is not None and degraded is not None  # set above on every path
    put(RECONCILING, progressing.status, progressing.reason, progressing.message)
    if degraded.status == T and progressing.status == F:
        put(STALLED, T, degraded.reason, degraded.message)
    elif degraded.status == T:
        put(STALLED, F, "StillReconciling", f"failing, and still in flight: {progressing.message}")
    else:
        put(STALLED, F, "AsExpected", degraded.message)

    order = {READY: 0, PROGRESSING: 1, DEGRADED: 2, RECONCILING: 3, STALLED: 4}
    conditions.sort(key=lambda c: (order.get(c.type, 9), c.type))
    return StorageDriverStatus(
        observed_generation=generation,
        conditions=conditions,
        matching_nodes=matching,
        desired_nodes=desired,
        loaded_nodes=loaded,
        failed_nodes=failed,
        failing_nodes=failing[:FAILING_NODES_MAX],
    )


# --- Events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observed:
    """What Events compare for one driver on one node between two rounds."""

    in_spec: bool = False
    phase: str | None = None
    version: str | None = None
    reason: str = ""
    message: str = ""
    has_hardware: bool = False


NOTHING = Observed()


def observe(state: NodeDriverState) -> Observed:
    run = state.run
    failure = state.failure()
    return Observed(
        in_spec=state.decision.in_spec,
        phase=run.phase if run is not None else None,
        version=run.version if run is not None else None,
        reason=failure[0] if failure else str(state.decision.reason),
        message=failure[1] if failure else state.decision.message,
        has_hardware=state.decision.has_hardware,
    )


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


def _node_changes(node: str, before: Observed, after: Observed) -> list[tuple[str, str, str]]:
    changes: list[tuple[str, str, str]] = []
    if after.in_spec and not before.in_spec:
        changes.append(("Normal", "LoadRequested", after.message))
    if before.in_spec and not after.in_spec:
        changes.append(("Normal", "UnloadRequested", after.message))
    if after.phase == "Loaded" and (before.phase != "Loaded" or before.version != after.version):
        changes.append(("Normal", "Loaded", f"version {after.version}"))
    if after.phase == "Failed" and before.phase != "Failed":
        changes.append(("Warning", LOAD_FAILED, after.message))
    if before.phase is not None and after.phase is None and not after.in_spec:
        changes.append(("Normal", "Unloaded", "the node no longer runs the driver"))
    if after.reason == UNLOAD_BLOCKED and before.reason != UNLOAD_BLOCKED:
        changes.append(("Warning", UNLOAD_BLOCKED, after.message))
    placement = (Reason.CAPACITY_EXCEEDED, Reason.DRIVER_NOT_AVAILABLE)
    if (
        after.reason in placement
        and after.has_hardware
        and (before.reason != after.reason or not before.has_hardware)
    ):
        changes.append(("Warning", after.reason, after.message))
    return changes


def transitions(
    before: Mapping[str, Observed],
    after: Mapping[str, Observed],
    old_conditions: Sequence[Condition],
    new_conditions: Sequence[Condition],
) -> list[Event]:
    """Events for what changed between two rounds: per node (grouped into one summary when more
    than a few nodes change the same way) and for the Ready condition. A node missing from
    `after` is gone (deleted with its objects): nothing to report about it."""
    grouped: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for node in sorted(after):
        for type_, reason, message in _node_changes(
            node, before.get(node, NOTHING), after.get(node, NOTHING)
        ):
            grouped.setdefault((type_, reason), []).append((node, message))
    events: list[Event] = []
    for (type_, reason), items in grouped.items():
        if len(items) <= SHOWN_NODES:
            events.extend(Event(type_, reason, f"node {node}: {message}") for node, message in items)
        else:
            nodes = [node for node, _ in items]
            events.append(Event(type_, reason, f"{_nodes(len(nodes))} ({_names(nodes)}): {items[0][1]}"))
    old_ready = find_condition(old_conditions, READY)
    new_ready = find_condition(new_conditions, READY)
    if new_ready is not None and (
        old_ready is None or (old_ready.status, old_ready.reason) != (new_ready.status, new_ready.reason)
    ):
        if new_ready.status == ConditionStatus.TRUE:
            events.append(Event("Normal", READY, new_ready.message))
        else:
            calm = new_ready.reason in ("Loading", Reason.DELETING)
            events.append(Event("Normal" if calm else "Warning", new_ready.reason, new_ready.message))
    return events
