"""Desired state of a node: load, keep, conservative unload, capacity, rollouts, invalid specs."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import replace

import pytest
from storage_driver_operator.desired import (
    Action,
    Hold,
    NodePlan,
    NodeState,
    Snapshot,
    max_unavailable_count,
    plan_cluster,
    plan_node,
    plan_rollout,
)
from storage_driver_operator.matching import Reason
from storage_driver_operator.status import NodeDriverState, aggregate
from storage_driver_operator.views import (
    ConfigView,
    DeviceView,
    LeaseView,
    NodeView,
    format_unload_after,
    parse_unload_after,
)

from tests.unit.operator.builders import NOW, config, device, driver, entry, lease, node, run

AT = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def state(
    *devices: DeviceView,
    cfg: ConfigView | None = None,
    lease_: LeaseView | None = None,
    n: NodeView | None = None,
) -> NodeState:
    return NodeState(
        node=n or node(), devices=devices, config=cfg, lease=lease_ if lease_ is not None else lease()
    )


def names(plan: NodePlan) -> list[str]:
    return [d.name for d in plan.drivers]


# --- load and keep ---------------------------------------------------------------------------


def test_a_matching_node_loads_the_driver_with_its_devices() -> None:
    drv = driver()
    plan = plan_node(state(device("d2"), device("d1"), cfg=config()), [drv], NOW)
    assert plan.changed
    assert names(plan) == ["drv"]
    assert plan.drivers[0].devices == ["d1", "d2"]
    assert plan.drivers[0].source.kind == "hostPath"
    assert plan.drivers[0].source.path == "loop_info.py"
    assert plan.decisions["drv"].action == Action.LOAD


def test_nothing_changes_when_the_spec_already_says_it() -> None:
    drv = driver()
    cfg = config(drivers=[entry(drv, ["d1"])])
    plan = plan_node(state(device("d1"), cfg=cfg), [drv], NOW)
    assert not plan.changed
    assert plan.decisions["drv"].action == Action.KEEP


def test_a_new_device_joins_the_entry() -> None:
    drv = driver()
    cfg = config(drivers=[entry(drv, ["d1"])])
    plan = plan_node(state(device("d1"), device("d2"), cfg=cfg), [drv], NOW)
    assert plan.changed
    assert plan.drivers[0].devices == ["d1", "d2"]
    assert plan.decisions["drv"].action == Action.KEEP


def test_no_config_and_nothing_to_run_is_no_change() -> None:
    plan = plan_node(state(cfg=None), [driver(supportedDevices=["zram"])], NOW)
    assert not plan.changed
    assert plan.drivers == ()
    assert plan.decisions["drv"].action == Action.NONE
    assert plan.decisions["drv"].reason == Reason.NO_MATCHING_DEVICES


def test_fetched_sources_resolve_to_a_managed_path() -> None:
    url = driver("u", source={"url": {"url": "https://x/u.py", "sha256": "e" * 64}})
    cm = driver("c", source={"configMap": {"name": "drivers", "namespace": "ops", "key": "c.py"}})
    plan = plan_node(state(device("d1"), cfg=None), [url, cm], NOW)
    by_name = {d.name: d for d in plan.drivers}
    assert by_name["u"].source.to_api() == {
        "kind": "url",
        "path": "managed/u.py",
        "sha256": "e" * 64,
        "url": "https://x/u.py",
    }
    assert by_name["c"].source.config_map_name == "drivers"
    assert by_name["c"].source.path == "managed/c.py"


def test_a_host_path_file_the_node_lacks_is_not_loaded() -> None:
    drv = driver(source={"hostPath": {"path": "other.py"}})
    plan = plan_node(state(device("d1"), cfg=config()), [drv], NOW)
    assert plan.drivers == ()
    assert plan.decisions["drv"].reason == Reason.DRIVER_NOT_AVAILABLE
    assert plan.decisions["drv"].has_hardware


# --- conservative unload ---------------------------------------------------------------------


def test_an_absent_device_keeps_the_driver_until_the_delay_passes() -> None:
    drv = driver(unloadDelaySeconds=30)
    cfg = config(drivers=[entry(drv, ["d1"])])
    gone = device("d1", present=False, since=NOW - 10)
    plan = plan_node(state(gone, cfg=cfg), [drv], NOW)
    assert names(plan) == ["drv"]
    assert plan.drivers[0].devices == []  # the absent device is no longer bound
    assert plan.decisions["drv"].action == Action.HOLD
    assert plan.decisions["drv"].reason == Hold.UNLOAD_DELAY
    assert plan.recheck_at == NOW + 20

    later = plan_node(state(gone, cfg=cfg, lease_=lease(renewed=NOW + 20)), [drv], NOW + 21)
    assert later.drivers == ()
    assert later.decisions["drv"].action == Action.UNLOAD
    assert later.decisions["drv"].reason == Reason.NO_MATCHING_DEVICES
    # At the moment the delay ends (the recheck time), the driver goes.
    due = plan_node(state(gone, cfg=cfg, lease_=lease(renewed=NOW + 15)), [drv], NOW + 20)
    assert (due.drivers, due.decisions["drv"].action) == ((), Action.UNLOAD)
    # While it waits, the node is not counted as matching: no matching device is present.
    status = aggregate(drv, [NodeDriverState("n1", plan.decisions["drv"], None)], AT)
    assert (status.matching_nodes, status.desired_nodes) == (0, 1)


def test_a_flap_shorter_than_the_delay_unloads_nothing() -> None:
    drv = driver(unloadDelaySeconds=30)
    cfg = config(drivers=[entry(drv, ["d1"])])
    back = device("d1", present=True, since=NOW - 2)
    plan = plan_node(state(back, cfg=cfg), [drv], NOW)
    assert not plan.changed
    assert plan.decisions["drv"].action == Action.KEEP


def test_the_latest_removal_counts() -> None:
    drv = driver(unloadDelaySeconds=30)
    cfg = config(drivers=[entry(drv, ["d1", "d2"])])
    devices = (device("d1", present=False, since=NOW - 100), device("d2", present=False, since=NOW - 5))
    plan = plan_node(state(*devices, cfg=cfg), [drv], NOW)
    assert plan.decisions["drv"].reason == Hold.UNLOAD_DELAY
    assert plan.recheck_at == NOW + 25


def test_a_silent_agent_never_causes_an_unload() -> None:
    drv = driver(unloadDelaySeconds=30)
    cfg = config(drivers=[entry(drv, ["d1"])])
    gone = device("d1", present=False, since=NOW - 3600)
    for silent in (lease(renewed=NOW - 100, duration=40), None):
        plan = plan_node(NodeState(node=node(), devices=(gone,), config=cfg, lease=silent), [drv], NOW)
        assert names(plan) == ["drv"]
        assert plan.decisions["drv"].reason == Hold.AGENT_NOT_READY


def test_devices_deleted_entirely_unload_at_once() -> None:
    # The agent deletes absent devices only after its retention period; with no device object
    # left at all (or a selector that no longer matches them) there is nothing to wait for.
    drv = driver()
    cfg = config(drivers=[entry(drv, ["d1"])])
    plan = plan_node(state(cfg=cfg), [drv], NOW)
    assert plan.drivers == ()
    assert plan.decisions["drv"].action == Action.UNLOAD


def test_user_changes_take_effect_at_once() -> None:
    drv = driver(nodeSelector={"matchLabels": {"storage": "yes"}})
    cfg = config(drivers=[entry(drv, ["d1"])])
    plan = plan_node(state(device("d1"), cfg=cfg), [drv], NOW)
    assert plan.drivers == ()
    assert plan.decisions["drv"].reason == Reason.NODE_NOT_SELECTED
    older_kernel = driver(minimumPlatform={"kernelVersion": {"atLeast": "7.0"}})
    plan = plan_node(state(device("d1"), cfg=cfg), [older_kernel], NOW)
    assert plan.decisions["drv"].reason == Reason.PLATFORM_TOO_OLD
    assert plan.decisions["drv"].action == Action.UNLOAD


def test_a_missing_file_does_not_unload_what_runs() -> None:
    # The agent unloads a driver whose file disappears; the operator keeps the entry.
    drv = driver()
    cfg = config(drivers=[entry(drv, ["d1"])], available=[])
    plan = plan_node(state(device("d1"), cfg=cfg), [drv], NOW)
    assert not plan.changed
    assert plan.decisions["drv"].reason == Hold.DRIVER_NOT_AVAILABLE


# --- deletion, invalid specs, orphans --------------------------------------------------------


def test_a_deleted_or_unknown_driver_is_unloaded_at_once() -> None:
    drv = driver()
    cfg = config(drivers=[entry(drv, ["d1"])])
    plan = plan_node(state(device("d1"), cfg=cfg), [driver(deleting=True)], NOW)
    assert plan.drivers == ()
    assert plan.decisions["drv"].reason == Reason.DELETING
    assert plan.decisions["drv"].action == Action.UNLOAD  # as `sdctl plan` shows it
    elsewhere = plan_node(state(device("d1"), cfg=config()), [driver(deleting=True)], NOW)
    assert (elsewhere.decisions["drv"].action, elsewhere.decisions["drv"].reason) == (
        Action.NONE,
        Reason.DELETING,
    )
    plan = plan_node(state(device("d1"), cfg=cfg), [], NOW)
    assert plan.drivers == ()
    assert plan.decisions["drv"].reason == Reason.DELETED


def test_an_invalid_spec_changes_nothing_on_the_nodes() -> None:
    valid = driver()
    cfg = config(drivers=[entry(valid, ["d1"])])
    invalid = driver(deviceSelector=[{"key": "model", "operator": "Regex", "values": ["(["]}])
    assert invalid.spec is None and invalid.invalid
    assert "spec.deviceSelector[0]" in invalid.invalid
    # Kept verbatim even though a new device appeared.
    plan = plan_node(state(device("d1"), device("d2"), cfg=cfg), [invalid], NOW)
    assert not plan.changed
    assert plan.decisions["drv"].reason == Hold.INVALID_SPEC
    # And never added where it is not.
    plan = plan_node(state(device("d1"), cfg=config()), [invalid], NOW)
    assert plan.drivers == ()
    assert plan.decisions["drv"].reason == Reason.INVALID_SPEC


# --- capacity and order ----------------------------------------------------------------------


def test_capacity_keeps_the_highest_priorities_then_names() -> None:
    drivers = [
        driver("c-low", priority=-5),
        driver("b-high", priority=10),
        driver("a-mid"),
        driver("z-mid"),
    ]
    plan = plan_node(state(device("d1"), cfg=config(max_loaded=3)), drivers, NOW)
    assert names(plan) == ["b-high", "a-mid", "z-mid"]
    assert plan.decisions["c-low"].action == Action.NONE
    assert plan.decisions["c-low"].reason == Reason.CAPACITY_EXCEEDED
    assert plan.decisions["c-low"].has_hardware


def test_a_higher_priority_driver_displaces_a_lower_one() -> None:
    low = driver("low")
    cfg = config(drivers=[entry(low, ["d1"])], max_loaded=1)
    plan = plan_node(state(device("d1"), cfg=cfg), [low, driver("high", priority=5)], NOW)
    assert names(plan) == ["high"]
    assert plan.decisions["low"].action == Action.UNLOAD
    assert plan.decisions["low"].reason == Reason.CAPACITY_EXCEEDED


def test_capacity_zero_runs_nothing() -> None:
    plan = plan_node(state(device("d1"), cfg=config(max_loaded=0)), [driver()], NOW)
    assert plan.drivers == ()
    assert plan.decisions["drv"].reason == Reason.CAPACITY_EXCEEDED


# --- rollouts --------------------------------------------------------------------------------


def test_max_unavailable_count() -> None:
    assert max_unavailable_count(1, 10) == 1
    assert max_unavailable_count(3, 2) == 3
    assert max_unavailable_count(0, 10) == 1
    assert max_unavailable_count("25%", 10) == 3  # rounds up, as DaemonSets do
    assert max_unavailable_count("10%", 1) == 1
    assert max_unavailable_count("0%", 10) == 1
    assert max_unavailable_count("100%", 7) == 7
    assert max_unavailable_count("100%", 101) == 101
    assert max_unavailable_count("50%", 201) == 101


def rolling_world(nodes: int, max_unavailable: int | str = 1, phase: str = "Loaded") -> Snapshot:
    old = driver(version="1.0.0")
    new = driver(version="2.0.0", maxUnavailable=max_unavailable, generation=2)
    names_ = [f"n{i}" for i in range(nodes)]
    return Snapshot(
        nodes={n: node(n) for n in names_},
        devices=[device(f"{n}-d", n) for n in names_],
        configs={n: config(n, [entry(old, [f"{n}-d"])], runs=[run("drv", phase, "1.0.0")]) for n in names_},
        leases={n: lease(n) for n in names_},
        drivers={"drv": new},
    )


def test_a_version_change_rolls_one_node_at_a_time() -> None:
    world = rolling_world(3)
    plans = plan_cluster(world, NOW)
    updated = [n for n, p in plans.items() if p.decisions["drv"].action == Action.UPDATE]
    assert updated == ["n0"]
    assert plans["n0"].drivers[0].version == "2.0.0"
    for n in ("n1", "n2"):
        assert plans[n].decisions["drv"].reason == Hold.ROLLOUT_PENDING
        assert plans[n].drivers[0].version == "1.0.0"
        assert not plans[n].changed


def test_the_rollout_waits_until_the_switched_node_reports_loaded() -> None:
    world = rolling_world(3)
    new = world.drivers["drv"]
    switched = config(
        "n0", [entry(new, ["n0-d"])], runs=[run("drv", "Loading", "1.0.0")], generation=2, observed=1
    )
    world = Snapshot(
        world.nodes, world.devices, {**world.configs, "n0": switched}, world.leases, world.drivers
    )
    rollout = plan_rollout(new, world.configs.values())
    assert rollout.allowed == frozenset()
    assert (rollout.total, rollout.updated, rollout.unavailable, rollout.waiting) == (3, 1, 1, 2)
    # Loaded at the new version, and the agent has seen the current spec: the next node goes.
    done = config(
        "n0", [entry(new, ["n0-d"])], runs=[run("drv", "Loaded", "2.0.0")], generation=2, observed=2
    )
    world = Snapshot(world.nodes, world.devices, {**world.configs, "n0": done}, world.leases, world.drivers)
    assert plan_rollout(new, world.configs.values()).allowed == frozenset({"n1"})


def test_a_failed_new_version_halts_the_rollout() -> None:
    world = rolling_world(3)
    new = world.drivers["drv"]
    failed = config(
        "n0", [entry(new, ["n0-d"])], runs=[run("drv", "Failed", "2.0.0")], generation=2, observed=2
    )
    configs = {**world.configs, "n0": failed}
    assert plan_rollout(new, configs.values()).allowed == frozenset()


def test_percent_max_unavailable() -> None:
    world = rolling_world(8, "25%")
    plans = plan_cluster(world, NOW)
    assert sorted(n for n, p in plans.items() if p.decisions["drv"].action == Action.UPDATE) == ["n0", "n1"]


def test_nodes_not_serving_the_old_version_switch_at_once() -> None:
    world = rolling_world(4, phase="Failed")
    plans = plan_cluster(world, NOW)
    assert all(p.decisions["drv"].action == Action.UPDATE for p in plans.values())


def test_a_node_that_cannot_obtain_the_new_file_keeps_the_old_entry() -> None:
    old = driver(version="1.0.0")
    new = driver(version="2.0.0", source={"hostPath": {"path": "loop_info_v2.py"}})
    cfg = config("n1", [entry(old, ["d1"])], runs=[run("drv")], available=["loop_info.py"])
    assert plan_rollout(new, [cfg]).allowed == frozenset()
    plan = plan_node(state(device("d1"), cfg=cfg), [new], NOW, {"drv": plan_rollout(new, [cfg])})
    assert not plan.changed
    assert plan.decisions["drv"].reason == Hold.DRIVER_NOT_AVAILABLE


def test_device_changes_reach_nodes_that_wait_for_the_rollout() -> None:
    world = rolling_world(2)
    more = [*world.devices, device("n1-e", "n1")]
    world = Snapshot(world.nodes, more, world.configs, world.leases, world.drivers)
    plan = plan_cluster(world, NOW)["n1"]
    assert plan.decisions["drv"].reason == Hold.ROLLOUT_PENDING
    assert plan.drivers[0].version == "1.0.0"
    assert plan.drivers[0].devices == ["n1-d", "n1-e"]


def test_priority_and_grace_period_changes_do_not_roll() -> None:
    old = driver()
    new = driver(priority=7, unloadGracePeriodSeconds=20)
    assert old.rollout_key == new.rollout_key
    cfg = config(drivers=[entry(old, ["d1"])], runs=[run("drv")])
    plan = plan_node(state(device("d1"), cfg=cfg), [new], NOW)
    assert plan.decisions["drv"].action == Action.KEEP
    assert plan.drivers[0].priority == 7
    assert plan.drivers[0].unload_grace_period_seconds == 20


def test_a_node_being_deleted_gets_no_plan() -> None:
    world = Snapshot(nodes={"gone": node("gone", deleting=True), "n1": node("n1")}, drivers={"drv": driver()})
    assert list(plan_cluster(world, NOW)) == ["n1"]


def test_a_version_bump_waits_until_the_nodes_file_declares_it() -> None:
    old = driver(version="1.0.0")
    new = driver(version="2.0.0")
    declared = {"loop_info.py": {"sha256": "a" * 64, "driverName": "Loop Info Driver", "version": "1.0.0"}}
    cfg = config("n1", [entry(old, ["d1"])], runs=[run("drv")], available=declared)
    plan = plan_node(state(device("d1"), cfg=cfg), [new], NOW, {"drv": plan_rollout(new, [cfg])})
    assert not plan.changed
    assert plan.decisions["drv"].reason == Hold.DRIVER_NOT_AVAILABLE
    assert "declares version 1.0.0" in plan.decisions["drv"].message

    declared["loop_info.py"]["version"] = "2.0.0"
    cfg = config("n1", [entry(old, ["d1"])], runs=[run("drv")], available=declared)
    plan = plan_node(state(device("d1"), cfg=cfg), [new], NOW, {"drv": plan_rollout(new, [cfg])})
    assert plan.decisions["drv"].action == Action.UPDATE
    assert [d.version for d in plan.drivers] == ["2.0.0"]


# --- the unload delay survives an operator restart -------------------------------------------


def test_the_start_of_an_unload_delay_is_recorded_on_the_node() -> None:
    drv = driver(unloadDelaySeconds=30)
    cfg = config(drivers=[entry(drv, ["d1"])])
    gone = device("d1", present=False, since=NOW - 10)
    plan = plan_node(state(gone, cfg=cfg), [drv], NOW)
    assert plan.changed and plan.unload_after == {"drv": NOW + 20}
    # Once written, planning again writes nothing.
    written = replace(cfg, spec_drivers=plan.drivers, unload_after=dict(plan.unload_after))
    assert not plan_node(state(gone, cfg=written), [drv], NOW + 1).changed


def test_a_recorded_delay_holds_after_the_devices_are_deleted_and_the_operator_restarted() -> None:
    """Nothing in memory: the NodeDevice is gone (agent retention) and the operator is new; the
    time on the NodeDriverConfig still holds the unload back."""
    drv = driver(unloadDelaySeconds=30)
    cfg = replace(config(drivers=[entry(drv, [])]), unload_after={"drv": NOW + 20})
    plan = plan_node(state(cfg=cfg), [drv], NOW)
    assert names(plan) == ["drv"]
    assert plan.decisions["drv"].reason == Hold.UNLOAD_DELAY
    assert plan.recheck_at == NOW + 20 and not plan.changed
    later = plan_node(state(cfg=cfg), [drv], NOW + 21)
    assert later.drivers == () and later.decisions["drv"].action == Action.UNLOAD
    assert later.unload_after == {} and later.changed  # the record goes with the driver


def test_a_device_that_returns_clears_the_record() -> None:
    drv = driver(unloadDelaySeconds=30)
    cfg = replace(config(drivers=[entry(drv, [])]), unload_after={"drv": NOW + 20})
    plan = plan_node(state(device("d1"), cfg=cfg), [drv], NOW)
    assert names(plan) == ["drv"] and plan.unload_after == {} and plan.changed


def test_the_unload_after_annotation_round_trips_and_bad_values_are_ignored() -> None:
    value = format_unload_after({"a": NOW + 0.2, "b": NOW})
    assert value is not None and parse_unload_after(value) == {"a": NOW + 1, "b": NOW}
    assert format_unload_after({}) is None
    assert parse_unload_after('{"a": "not a time", "b": 3}') == {}
    assert parse_unload_after("[1]") == parse_unload_after("{") == parse_unload_after(None) == {}


def test_a_node_unlabelled_from_a_driver_unloads_at_once_even_when_its_lease_is_stale() -> None:
    # A user's change (the node's labels) is not a device going away: no delay, and no need
    # for the agent to be alive to tell a restart from a real removal.
    drv = driver(nodeSelector={"matchLabels": {"storage": "yes"}}, unloadDelaySeconds=300)
    cfg = config(drivers=[entry(drv, ["d1"])], runs=[run("drv")])
    for silent in (lease(renewed=NOW - 500, duration=40), None):
        unlabelled = NodeState(node=node(labels={}), devices=(device("d1"),), config=cfg, lease=silent)
        plan = plan_node(unlabelled, [drv], NOW)
        assert plan.drivers == ()
        assert plan.changed
        assert (plan.decisions["drv"].action, plan.decisions["drv"].reason) == (
            Action.UNLOAD,
            Reason.NODE_NOT_SELECTED,
        )
        assert plan.recheck_at is None


def test_a_node_keeping_its_driver_still_counts_as_matching() -> None:
    drv = driver()
    loaded = config(drivers=[entry(drv, ["d1"])], runs=[run("drv")])
    plan = plan_node(state(device("d1"), cfg=loaded), [drv], NOW)
    assert plan.decisions["drv"].action == Action.KEEP
    assert plan.decisions["drv"].has_hardware
    status = aggregate(drv, [NodeDriverState("n1", plan.decisions["drv"], loaded.runs["drv"])], AT)
    assert (status.matching_nodes, status.desired_nodes, status.loaded_nodes) == (1, 1, 1)


def test_plans_and_what_they_are_made_from_are_values() -> None:
    """One round's snapshot, node states, rollouts and plans are read by the writer, the status
    aggregation and `sdctl plan` alike: none can change under another."""
    drv = driver()
    snapshot = Snapshot(nodes={"n1": node()}, devices=[device("d1")], drivers={"drv": drv})
    nodes = snapshot.node_states()
    plan = plan_cluster(snapshot, NOW)["n1"]
    rollout = plan_rollout(driver(version="2.0.0"), [config(drivers=[entry(drv, ["d1"])])])
    for value, field in [
        (snapshot, "drivers"),
        (nodes["n1"], "config"),
        (plan, "changed"),
        (plan.decisions["drv"], "action"),
        (rollout, "allowed"),
    ]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)


def test_the_unload_policy_reaches_the_spec_entry_and_entries_held_back() -> None:
    forced = driver(unloadDelaySeconds=30, unloadPolicy={"force": True})
    plan = plan_node(state(device("d1"), cfg=config()), [forced], NOW)
    assert [d.force_unload for d in plan.drivers] == [True]
    # Held by its unload delay, an entry written before the policy changed takes it on at once
    # (the agent needs it for the unload that follows), without restarting anything.
    old = entry(driver(unloadDelaySeconds=30), [])
    cfg = replace(config(drivers=[old]), unload_after={"drv": NOW + 20})
    plan = plan_node(state(cfg=cfg), [forced], NOW)
    assert plan.decisions["drv"].reason == Hold.UNLOAD_DELAY
    assert [d.force_unload for d in plan.drivers] == [True] and plan.changed


def test_every_entry_the_node_should_no_longer_run_gets_an_unload_decision() -> None:
    """Whatever the spec's order: a kept entry before them does not end the scan, nor does a
    file entry that goes (each unload is an Event and a line of `sdctl plan`)."""
    kept, deleted = driver("a-kept"), driver("b-deleted")
    cfg = config(drivers=[entry(kept, ["d1"]), entry(deleted, ["d1"])])
    plan = plan_node(state(device("d1"), cfg=cfg), [kept], NOW)
    assert names(plan) == ["a-kept"]
    assert (plan.decisions["b-deleted"].action, plan.decisions["b-deleted"].reason) == (
        Action.UNLOAD,
        Reason.DELETED,
    )
    file_entry = entry(driver("file-entry"), ["d1"]).model_copy(update={"name": "file:auto.py"})
    cfg = config(drivers=[file_entry, entry(deleted, ["d1"])])
    plan = plan_node(state(device("d1"), cfg=cfg), [], NOW)
    assert plan.drivers == ()
    assert {name: d.action for name, d in plan.decisions.items()} == {
        "file:auto.py": Action.UNLOAD,
        "b-deleted": Action.UNLOAD,
    }


def test_the_delay_is_written_when_the_spec_already_has_the_entry_but_not_its_time() -> None:
    """A spec written without the time (a lost write, an operator of an older version): the
    plan writes it, although the entries stay as they are."""
    drv = driver(unloadDelaySeconds=30)
    cfg = config(drivers=[entry(drv, [])])
    gone = device("d1", present=False, since=NOW - 10)
    plan = plan_node(state(gone, cfg=cfg), [drv], NOW)
    assert plan.drivers == cfg.spec_drivers
    assert plan.changed and plan.unload_after == {"drv": NOW + 20}


def test_a_stale_delay_record_is_cleared_from_a_node_that_runs_nothing() -> None:
    cfg = replace(config(), unload_after={"drv": NOW + 20})
    plan = plan_node(state(cfg=cfg), [], NOW)
    assert plan.drivers == () and plan.unload_after == {} and plan.changed
