"""StorageDriver status aggregation and the Events between two rounds."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from storage_driver_api.meta import Condition
from storage_driver_api.storagedriver import FAILING_NODES_MAX, StorageDriverStatus
from storage_driver_operator.desired import Action, Decision, Hold
from storage_driver_operator.matching import Reason
from storage_driver_operator.status import Event, NodeDriverState, aggregate, observe, transitions
from storage_driver_operator.views import DriverRun, config_view

from tests.unit.operator.builders import driver, run

AT = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
LATER = AT + dt.timedelta(minutes=5)


def load(
    node: str, phase: str | None = "Loaded", version: str = "1.0.0", action: Action = Action.KEEP, **run: Any
) -> NodeDriverState:
    decision = Decision("drv", action, Reason.MATCHED, "1 matching device(s): d", True)
    return NodeDriverState(node, decision, DriverRun(phase=phase, version=version, **run) if phase else None)


def skip(
    node: str, reason: Reason = Reason.NO_MATCHING_DEVICES, has_hardware: bool = False
) -> NodeDriverState:
    return NodeDriverState(node, Decision("drv", Action.NONE, reason, f"{reason}", has_hardware))


def cond(status: StorageDriverStatus, type_: str) -> Condition:
    return next(c for c in status.conditions if c.type == type_)


def test_all_loaded_is_ready() -> None:
    status = aggregate(driver(generation=3), [load("a"), load("b"), skip("c")], AT)
    assert (status.matching_nodes, status.desired_nodes, status.loaded_nodes, status.failed_nodes) == (
        2,
        2,
        2,
        0,
    )
    assert status.observed_generation == 3
    ready = cond(status, "Ready")
    assert (ready.status, ready.reason, ready.observed_generation) == ("True", "Loaded", 3)
    assert ready.message == "version 1.0.0 loaded on 2 nodes; not on 1 node: NoMatchingDevices 1"
    assert cond(status, "Progressing").status == "False"
    assert cond(status, "Degraded").status == "False"
    assert [c.type for c in status.conditions] == [
        "Ready",
        "Progressing",
        "Degraded",
        "Reconciling",
        "Stalled",
    ]


def test_no_matching_node_is_ready_with_nothing_to_do() -> None:
    status = aggregate(driver(), [skip("a"), skip("b", Reason.PLATFORM_TOO_OLD)], AT)
    assert cond(status, "Ready").reason == "NoMatchingNodes"
    assert cond(status, "Ready").status == "True"
    assert (
        cond(status, "Ready").message
        == "no node needs the driver; not on 2 nodes: NoMatchingDevices 1, PlatformTooOld 1"
    )
    assert status.failing_nodes == []


def test_stalled_only_when_failing_with_nothing_in_flight() -> None:
    healthy = cond(aggregate(driver(), [load("a")], AT), "Stalled")
    assert (healthy.status, healthy.reason) == ("False", "AsExpected")
    failed = load("b", phase="Failed", error_reason="Crashed")
    in_flight = cond(aggregate(driver(), [failed, load("c", phase="Loading")], AT), "Stalled")
    assert (in_flight.status, in_flight.reason) == ("False", "StillReconciling")
    stuck = cond(aggregate(driver(), [load("a"), failed], AT), "Stalled")
    assert stuck.status == "True"


def test_loading_is_progressing() -> None:
    status = aggregate(
        driver(), [load("a"), load("b", phase="Loading"), load("c", phase=None, action=Action.LOAD)], AT
    )
    assert cond(status, "Ready").reason == "Loading"
    assert "1 of 3 nodes" in cond(status, "Ready").message
    progressing = cond(status, "Progressing")
    assert (progressing.status, progressing.reason) == ("True", "Loading")
    assert "b, c" in progressing.message


def test_failures_degrade_and_are_listed_with_reasons() -> None:
    states = [
        load("a"),
        load("b", phase="Failed", error_reason="Crashed", error_message="exit 3"),
        skip("c", Reason.CAPACITY_EXCEEDED, has_hardware=True),
        skip("d", Reason.DRIVER_NOT_AVAILABLE, has_hardware=True),
        skip("e", Reason.PLATFORM_TOO_OLD),
    ]
    status = aggregate(driver(), states, AT)
    assert status.failed_nodes == 1
    assert [(f.node, f.reason) for f in status.failing_nodes] == [
        ("b", "Crashed"),
        ("c", "CapacityExceeded"),
        ("d", "DriverNotAvailable"),
    ]
    assert status.failing_nodes[0].message == "exit 3"
    ready, degraded = cond(status, "Ready"), cond(status, "Degraded")
    assert (ready.status, ready.reason) == ("False", "LoadFailed")
    assert (degraded.status, degraded.reason) == ("True", "LoadFailed")
    assert "3 nodes failing" in degraded.message


@pytest.mark.parametrize(("count", "more"), [(2, False), (3, False), (4, True)])
def test_the_degraded_message_names_three_failing_nodes_then_says_there_are_more(
    count: int, more: bool
) -> None:
    states = [load(f"n{i}", phase="Failed", error_reason="Crashed") for i in range(count)]
    message = cond(aggregate(driver(), states, AT), "Degraded").message
    named = "; ".join(f"n{i}: Crashed" for i in range(min(count, 3)))
    assert message == f"{count} nodes failing: {named}" + ("; ..." if more else "")


def test_events_are_values() -> None:
    """Events are compared and collected in sets across rounds: they cannot change once made."""
    event = Event("Normal", "Loaded", "loaded on 1 node")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.reason = "Unloaded"  # type: ignore[misc]
    assert {event, Event("Normal", "Loaded", "loaded on 1 node")} == {event}


def test_the_failing_list_is_bounded() -> None:
    states = [load(f"n{i:03}", phase="Failed") for i in range(100)]
    status = aggregate(driver(), states, AT)
    assert status.failed_nodes == 100
    assert len(status.failing_nodes) == FAILING_NODES_MAX
    assert status.failing_nodes[0].node == "n000"


def test_a_rollout_in_progress() -> None:
    drv = driver(version="2.0.0")
    pending = NodeDriverState(
        "b",
        Decision("drv", Action.HOLD, Hold.ROLLOUT_PENDING, "keeps 1.0.0", True),
        DriverRun("Loaded", "1.0.0"),
    )
    status = aggregate(drv, [load("a", version="2.0.0"), pending], AT)
    assert cond(status, "Progressing").reason == "RollingUpdate"
    assert "b" in cond(status, "Progressing").message
    assert cond(status, "Ready").status == "False"
    assert status.loaded_nodes == 2


def test_unloading_is_progressing() -> None:
    leaving = NodeDriverState(
        "a",
        Decision("drv", Action.UNLOAD, Reason.NODE_NOT_SELECTED, "not selected"),
        DriverRun("Unloading", "1.0.0", pid=5),
    )
    status = aggregate(driver(), [leaving], AT)
    assert cond(status, "Progressing").reason == "Unloading"
    assert cond(status, "Ready").status == "True"


def test_invalid_spec() -> None:
    invalid = driver(maxUnavailable="lots")
    status = aggregate(invalid, [skip("a", Reason.INVALID_SPEC)], AT)
    ready = cond(status, "Ready")
    assert (ready.status, ready.reason) == ("False", "InvalidSpec")
    assert "spec.maxUnavailable" in ready.message
    assert cond(status, "Degraded").status == "True"


def test_deleting() -> None:
    deleting = driver(deleting=True)
    leaving = NodeDriverState(
        "a", Decision("drv", Action.UNLOAD, Reason.DELETING, "deleting"), DriverRun("Unloading", pid=5)
    )
    status = aggregate(deleting, [leaving], AT)
    assert cond(status, "Ready").reason == "Deleting"
    assert cond(status, "Progressing").message == "waiting for 1 node to unload: a"
    status = aggregate(deleting, [skip("a", Reason.DELETING)], AT)
    assert cond(status, "Progressing").reason == "Unloaded"


def test_an_unchanged_world_renders_an_identical_status() -> None:
    states = [load("a"), load("b", phase="Loading")]
    first = aggregate(driver(), states, AT)
    again = aggregate(driver(status=first.to_api()), states, LATER)
    assert again.to_api() == first.to_api()


def test_transition_times_move_only_when_a_status_changes() -> None:
    first = aggregate(driver(), [load("a", phase="Loading")], AT)
    second = aggregate(driver(status=first.to_api()), [load("a")], LATER)
    assert cond(second, "Ready").last_transition_time == LATER
    assert cond(second, "Degraded").last_transition_time == AT  # still False


# --- events ----------------------------------------------------------------------------------


def test_events_for_a_load() -> None:
    requested = {"a": observe(load("a", phase=None, action=Action.LOAD))}
    events = transitions({}, requested, [], [])
    assert [(e.type, e.reason) for e in events] == [("Normal", "LoadRequested")]
    assert events[0].message.startswith("node a: ")
    loaded = {"a": observe(load("a"))}
    assert [(e.reason, e.message) for e in transitions(requested, loaded, [], [])] == [
        ("Loaded", "node a: version 1.0.0")
    ]


def test_events_for_failure_unload_and_placement_problems() -> None:
    before = {"a": observe(load("a")), "b": observe(load("b")), "c": observe(skip("c"))}
    after = {
        "a": observe(load("a", phase="Failed", error_reason="Crashed", error_message="boom")),
        "b": observe(
            NodeDriverState("b", Decision("drv", Action.UNLOAD, Reason.NODE_NOT_SELECTED, "labels changed"))
        ),
        "c": observe(skip("c", Reason.CAPACITY_EXCEEDED, has_hardware=True)),
    }
    events = {(e.type, e.reason): e.message for e in transitions(before, after, [], [])}
    assert events[("Warning", "LoadFailed")] == "node a: boom"
    assert events[("Normal", "UnloadRequested")] == "node b: labels changed"
    assert events[("Normal", "Unloaded")] == "node b: the node no longer runs the driver"
    assert ("Warning", "CapacityExceeded") in events


def test_many_nodes_changing_alike_make_one_event() -> None:
    after = {f"n{i}": observe(load(f"n{i}")) for i in range(50)}
    events = transitions({}, after, [], [])
    loaded = [e for e in events if e.reason == "Loaded"]
    assert len(loaded) == 1
    assert loaded[0].message.startswith("50 nodes (n0, n1, n10 and 47 more)")


@pytest.mark.parametrize(("count", "events"), [(3, 3), (4, 1)])
def test_up_to_three_nodes_get_an_event_each_and_more_share_one(count: int, events: int) -> None:
    after = {f"n{i}": observe(load(f"n{i}")) for i in range(count)}
    loaded = [e for e in transitions({}, after, [], []) if e.reason == "Loaded"]
    assert len(loaded) == events
    if events > 1:
        assert sorted(e.message.split(":")[0] for e in loaded) == [f"node n{i}" for i in range(count)]


def test_repeating_a_round_makes_no_events() -> None:
    states = [load("a"), load("b", phase="Failed"), skip("c", Reason.CAPACITY_EXCEEDED, True)]
    status = aggregate(driver(), states, AT)
    observed = {s.node: observe(s) for s in states}
    assert transitions(observed, observed, status.conditions, status.conditions) == []


def test_ready_changes_are_events() -> None:
    loading = aggregate(driver(), [load("a", phase="Loading")], AT)
    ready = aggregate(driver(status=loading.to_api()), [load("a")], LATER)
    events = transitions({}, {}, loading.conditions, ready.conditions)
    assert [(e.type, e.reason) for e in events] == [("Normal", "Ready")]
    invalid = aggregate(driver(maxUnavailable="x"), [], LATER)
    events = transitions({}, {}, ready.conditions, invalid.conditions)
    assert [(e.type, e.reason) for e in events] == [("Warning", "InvalidSpec")]


def test_a_node_that_is_gone_makes_no_events() -> None:
    before = {"a": observe(load("a")), "b": observe(load("b"))}
    after = {"a": observe(load("a"))}
    assert transitions(before, after, [], []) == []


def test_events_for_an_upgrade() -> None:
    # 1.0.0 Loaded -> the node switches (UPDATE) -> 2.0.0 Loaded: one Loaded event naming the
    # new version; the switch itself is no new load request.
    old = {"a": observe(load("a", version="1.0.0")), "b": observe(load("b", version="1.0.0"))}
    switching = {
        "a": observe(load("a", phase="Loading", version="1.0.0", action=Action.UPDATE)),
        "b": observe(load("b", version="1.0.0")),
    }
    assert transitions(old, switching, [], []) == []
    upgraded = {"a": observe(load("a", version="2.0.0")), "b": observe(load("b", version="1.0.0"))}
    events = transitions(switching, upgraded, [], [])
    assert [(e.type, e.reason, e.message) for e in events] == [("Normal", "Loaded", "node a: version 2.0.0")]
    # Loaded at a new version without a Loading phase seen in between is still an upgrade.
    assert [e.message for e in transitions(old, upgraded, [], [])] == ["node a: version 2.0.0"]
    failed = {"a": observe(load("a", phase="Failed", version="2.0.0", error_message="ImportError"))}
    events = transitions(switching, failed, [], [])
    assert [(e.type, e.reason, e.message) for e in events] == [
        ("Warning", "LoadFailed", "node a: ImportError")
    ]


def test_ready_events_name_the_new_state() -> None:
    rolling = aggregate(
        driver(version="2.0.0"), [load("a", version="2.0.0"), load("b", action=Action.UPDATE)], AT
    )
    assert (cond(rolling, "Ready").status, cond(rolling, "Ready").reason) == ("False", "Loading")
    done = aggregate(
        driver(version="2.0.0", status=rolling.to_api()),
        [load("a", version="2.0.0"), load("b", version="2.0.0")],
        LATER,
    )
    events = transitions({}, {}, rolling.conditions, done.conditions)
    assert [(e.type, e.reason, e.message) for e in events] == [
        ("Normal", "Ready", "version 2.0.0 loaded on 2 nodes")
    ]
    failing = aggregate(
        driver(version="2.0.0", status=done.to_api()),
        [load("a", version="2.0.0"), load("b", phase="Failed", version="2.0.0", error_reason="Crashed")],
        LATER,
    )
    events = transitions({}, {}, done.conditions, failing.conditions)
    assert [(e.type, e.reason) for e in events] == [("Warning", "LoadFailed")]
    assert events[0].message == "1 node failing: b: Crashed"
    # Loading again after a failure is calm: a Normal event.
    events = transitions({}, {}, failing.conditions, rolling.conditions)
    assert [(e.type, e.reason) for e in events] == [("Normal", "Loading")]


def test_events_compare_what_the_agents_report_as_parsed_from_the_api() -> None:
    # Reports arrive as JSON: phases and versions are equal strings, never the same objects.
    def reported(phase: str, version: str) -> NodeDriverState:
        view = config_view(
            json.loads(
                json.dumps({"metadata": {"name": "a"}, "status": {"drivers": [run("drv", phase, version)]}})
            )
        )
        return NodeDriverState("a", Decision("drv", Action.KEEP, Reason.MATCHED, "m", True), view.runs["drv"])

    first, again = observe(reported("Loaded", "1.0.0")), observe(reported("Loaded", "1.0.0"))
    assert transitions({"a": first}, {"a": again}, [], []) == []
    upgraded = observe(reported("Loaded", "2.0.0"))
    assert [e.message for e in transitions({"a": first}, {"a": upgraded}, [], [])] == [
        "node a: version 2.0.0"
    ]
    failed, failed_again = observe(reported("Failed", "2.0.0")), observe(reported("Failed", "2.0.0"))
    assert [e.reason for e in transitions({"a": upgraded}, {"a": failed}, [], [])] == ["LoadFailed"]
    assert transitions({"a": failed}, {"a": failed_again}, [], []) == []


def test_a_placement_problem_that_stays_is_reported_once() -> None:
    # Each round observes afresh: the same reason in a new round is no news.
    stuck = skip("c", Reason.CAPACITY_EXCEEDED, has_hardware=True)
    first = transitions({}, {"c": observe(stuck)}, [], [])
    assert [(e.type, e.reason) for e in first] == [("Warning", "CapacityExceeded")]
    assert transitions({"c": observe(stuck)}, {"c": observe(stuck)}, [], []) == []
    missing = NodeDriverState("c", Decision("drv", Action.NONE, Reason.DRIVER_NOT_AVAILABLE, "no file", True))
    moved = transitions({"c": observe(stuck)}, {"c": observe(missing)}, [], [])
    assert [(e.type, e.reason, e.message) for e in moved] == [
        ("Warning", "DriverNotAvailable", "node c: no file")
    ]
    assert transitions({"c": observe(missing)}, {"c": observe(missing)}, [], []) == []


def test_a_failure_without_an_error_record_shows_the_agents_message() -> None:
    view = config_view(
        {
            "metadata": {"name": "a"},
            "status": {
                "drivers": [run("drv", "Failed", "1.0.0", message="not loaded: maxLoadedDrivers reached")]
            },
        }
    )
    state = NodeDriverState("a", Decision("drv", Action.KEEP, Reason.MATCHED, "m", True), view.runs["drv"])
    status = aggregate(driver(), [state], AT)
    assert [(f.node, f.reason, f.message) for f in status.failing_nodes] == [
        ("a", "LoadFailed", "not loaded: maxLoadedDrivers reached")
    ]


def test_an_unload_blocked_by_a_device_in_use_is_reported_and_announced() -> None:
    blocked = config_view(
        {
            "metadata": {"name": "a", "uid": "u", "generation": 1},
            "status": {
                "drivers": [
                    run(
                        "drv",
                        "Unloading",
                        unloadBlocked=[{"name": "a-dev", "heldBy": ["loop3 mounted at /mnt/data"]}],
                    )
                ]
            },
        }
    ).runs["drv"]
    assert blocked.unload_blocked == "a-dev (loop3 mounted at /mnt/data)"
    decision = Decision("drv", Action.UNLOAD, Reason.DELETING, "deleting")
    status = aggregate(driver(deleting=True), [NodeDriverState("a", decision, blocked)], AT)
    for type_ in ("Progressing", "Degraded"):
        condition = cond(status, type_)
        assert (condition.status, condition.reason) == ("True", "UnloadBlocked")
        assert condition.message == (
            "unload blocked on 1 node: a: in use, not detached: a-dev (loop3 mounted at /mnt/data)"
        )
    assert [(f.node, f.reason) for f in status.failing_nodes] == [("a", "UnloadBlocked")]
    # Not deleting (the node's match went away): the node is failing, the driver not Ready.
    gone = Decision("drv", Action.UNLOAD, Reason.NO_MATCHING_DEVICES, "none")
    status = aggregate(driver(), [NodeDriverState("a", gone, blocked)], AT)
    assert (cond(status, "Degraded").status, cond(status, "Degraded").reason) == ("True", "UnloadBlocked")
    assert cond(status, "Ready").reason == "UnloadBlocked"
    # One Warning when it starts; none while it stays.
    before = {"a": observe(NodeDriverState("a", gone, DriverRun("Unloading", "1.0.0", pid=5)))}
    after = {"a": observe(NodeDriverState("a", gone, blocked))}
    events = transitions(before, after, [], [])
    assert (
        Event("Warning", "UnloadBlocked", "node a: in use, not detached: a-dev (loop3 mounted at /mnt/data)")
        in events
    )
    assert not [e for e in transitions(after, after, [], []) if e.reason == "UnloadBlocked"]
    # Once the host is gone, a stale list counts for nothing.
    done = DriverRun("Pending", unload_blocked="a-dev (x)")
    assert NodeDriverState("a", gone, done).failure() is None


# --- what the full mutation run of status.py found unpinned ----------------------------------


def test_node_states_and_observations_are_values() -> None:
    """A round's states and observations are kept for the next round's Events: none can change."""
    state = load("a")
    for value, name in [(state, "run"), (observe(state), "phase")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)


def test_a_failing_nodes_message_is_cut_to_what_the_api_accepts() -> None:
    status = aggregate(driver(), [load("a", phase="Failed", error_message="x" * 5000)], AT)
    assert status.failing_nodes[0].message == "x" * 1024


def test_ready_names_the_first_reason_in_order_when_no_node_failed_to_load() -> None:
    states = [
        skip("a", Reason.DRIVER_NOT_AVAILABLE, has_hardware=True),
        skip("b", Reason.CAPACITY_EXCEEDED, has_hardware=True),
    ]
    assert cond(aggregate(driver(), states, AT), "Ready").reason == "CapacityExceeded"


def test_exactly_three_nodes_are_named_without_more() -> None:
    states = [load(n, phase="Loading") for n in ("a", "b", "c")]
    assert cond(aggregate(driver(), states, AT), "Progressing").message == "loading on 3 nodes: a, b, c"


def test_hundreds_of_nodes_loaded_are_ready() -> None:
    """Counts are compared by value (small integers are shared objects, larger ones are not)."""
    status = aggregate(driver(), [load(f"n{i:03}") for i in range(300)], AT)
    assert (cond(status, "Ready").status, cond(status, "Ready").reason) == ("True", "Loaded")


def test_while_deleting_only_an_unload_blocked_node_blocks() -> None:
    deleting = driver(deleting=True)
    crashed = NodeDriverState(
        "a",
        Decision("drv", Action.UNLOAD, Reason.NODE_NOT_SELECTED, "deleting"),
        DriverRun(phase="Failed", version="1.0.0", error_reason="Crashed"),
    )
    status = aggregate(deleting, [crashed], AT)  # crashed while deleted: it runs no more
    assert cond(status, "Progressing").reason == "Unloaded"
    blocked = NodeDriverState(
        "a",
        Decision("drv", Action.UNLOAD, Reason.NODE_NOT_SELECTED, "deleting"),
        DriverRun(phase="Failed", version="1.0.0", error_reason="".join(list("UnloadBlocked"))),
    )
    assert cond(aggregate(deleting, [blocked], AT), "Progressing").reason == "UnloadBlocked"


def test_a_rollback_that_loads_is_a_loaded_event() -> None:
    before = {"a": observe(load("a", version="2.0.0"))}
    after = {"a": observe(load("a", version="1.0.0"))}
    assert [(e.reason, e.message) for e in transitions(before, after, [], [])] == [
        ("Loaded", "node a: version 1.0.0")
    ]


def test_a_node_that_fails_at_its_first_report_is_a_warning() -> None:
    after = {"a": observe(load("a", phase="Failed", error_reason="Crashed", error_message="boom"))}
    events = transitions({}, after, [], [])
    assert ("Warning", "LoadFailed", "node a: boom") in [(e.type, e.reason, e.message) for e in events]


def test_a_node_whose_placement_problem_changes_gets_the_new_one() -> None:
    before = {"a": observe(skip("a", Reason.DRIVER_NOT_AVAILABLE, has_hardware=True))}
    after = {"a": observe(skip("a", Reason.CAPACITY_EXCEEDED, has_hardware=True))}
    assert [(e.type, e.reason) for e in transitions(before, after, [], [])] == [
        ("Warning", "CapacityExceeded")
    ]


def test_one_event_for_many_nodes_carries_the_first_nodes_message() -> None:
    after = {
        f"n{i}": observe(load(f"n{i}", phase="Failed", error_reason="Crashed", error_message=f"exit {i}"))
        for i in range(5)
    }
    failed = [e for e in transitions({}, after, [], []) if e.reason == "LoadFailed"]
    assert [e.message for e in failed] == ["5 nodes (n0, n1, n2 and 2 more): exit 0"]


def test_a_node_without_hardware_is_not_waited_for_whatever_its_reason() -> None:
    states = [load("a"), skip("b", Reason.DRIVER_NOT_AVAILABLE, has_hardware=False)]
    ready = cond(aggregate(driver(), states, AT), "Ready")
    assert (ready.status, ready.reason) == ("True", "Loaded")


def test_a_failed_unload_is_not_an_unload_blocked_by_a_device_in_use() -> None:
    deleting = driver(deleting=True)
    failed = NodeDriverState(
        "a",
        Decision("drv", Action.UNLOAD, Reason.NODE_NOT_SELECTED, "deleting"),
        DriverRun(
            phase="Failed", version="1.0.0", error_reason="UnloadFailed", error_message="stop() raised"
        ),
    )
    assert cond(aggregate(deleting, [failed], AT), "Progressing").reason == "Unloaded"
    before = {"a": observe(load("a"))}
    events = transitions(before, {"a": observe(failed)}, [], [])
    assert "UnloadBlocked" not in [e.reason for e in events]


@pytest.mark.parametrize("previous", ["UnloadFailed", "Crashed"])
def test_a_node_newly_blocked_by_a_device_in_use_is_a_warning(previous: str) -> None:
    def reported(reason: str) -> NodeDriverState:
        # As parsed from the API: the reason is a string of its own, not the operator's constant.
        return load("a", phase="Failed", error_reason="".join(list(reason)), error_message="held by /mnt")

    events = transitions(
        {"a": observe(reported(previous))}, {"a": observe(reported("UnloadBlocked"))}, [], []
    )
    assert ("Warning", "UnloadBlocked") in [(e.type, e.reason) for e in events]
    # Reported again: no new Event.
    again = {"a": observe(reported("UnloadBlocked"))}
    assert transitions({"a": observe(reported("UnloadBlocked"))}, again, [], []) == []
