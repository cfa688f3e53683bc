"""Properties of the planners over generated worlds: idempotent (a written plan plans to itself),
no flapping (repeating the input repeats the output; time only ever unloads), every non-match
has a reason, capacity and order hold, unloads are conservative, rollouts keep to their budget."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_driver_api.constants import opt_in_label
from storage_driver_api.nodedriverconfig import DesiredDriver
from storage_driver_operator.desired import (
    Action,
    Hold,
    NodePlan,
    Snapshot,
    max_unavailable_count,
    plan_cluster,
    plan_rollouts,
)
from storage_driver_operator.matching import Reason, device_matches
from storage_driver_operator.status import NodeDriverState, aggregate, observe, transitions
from storage_driver_operator.views import ConfigView, StorageDriverView

from tests.unit.operator.builders import NOW, config, device, driver, entry, lease, node, run

NODES = ["n0", "n1", "n2"]
DRIVERS = ["d0", "d1", "d2", "d3"]
TYPES = ["loop", "nvme-namespace", "zram"]


@st.composite
def driver_views(draw: st.DrawFn, name: str) -> StorageDriverView:
    spec: dict[str, Any] = {
        "supportedDevices": draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True)),
        "version": draw(st.sampled_from(["1.0.0", "2.0.0"])),
        "priority": draw(st.integers(-2, 2)),
        "unloadDelaySeconds": draw(st.sampled_from([0, 10, 60])),
        "autoLoad": draw(st.booleans()),
        "maxUnavailable": draw(st.sampled_from([1, 2, "50%"])),
    }
    if draw(st.booleans()):
        spec["deviceSelector"] = [{"key": "sizeBytes", "operator": "Gt", "values": ["1000"]}]
    if draw(st.booleans()):
        spec["nodeSelector"] = {"matchLabels": {"zone": "a"}}
    if draw(st.booleans()):
        spec["minimumPlatform"] = {"kernelVersion": {"atLeast": "6.0"}}
    if draw(st.booleans()):
        spec["source"] = {"url": {"url": f"https://x/{name}.py", "sha256": "c" * 64}}
    if draw(st.integers(0, 9)) == 0:
        spec["maxUnavailable"] = "invalid"
    return driver(name, deleting=draw(st.integers(0, 9)) == 0, **spec)


@st.composite
def worlds(draw: st.DrawFn) -> Snapshot:
    drivers = {name: draw(driver_views(name)) for name in DRIVERS[: draw(st.integers(1, 4))]}
    nodes, devices, configs, leases = {}, [], {}, {}
    for name in NODES[: draw(st.integers(1, 3))]:
        labels = {"zone": draw(st.sampled_from(["a", "b"]))}
        for d in drivers:
            if draw(st.booleans()):
                labels[opt_in_label(d)] = "true"
        nodes[name] = node(name, labels=labels, kernel=draw(st.sampled_from(["5.4.0", "6.1.0-18-amd64"])))
        for i in range(draw(st.integers(0, 4))):
            devices.append(
                device(
                    f"{name}-dev{i}",
                    name,
                    draw(st.sampled_from(TYPES)),
                    present=draw(st.sampled_from([True, True, False, None])),
                    since=NOW - draw(st.sampled_from([1, 5, 30, 100])),
                    sizeBytes=draw(st.sampled_from([10, 5000])),
                )
            )
        if draw(st.booleans()):
            current: list[DesiredDriver] = []
            runs = []
            for d, view in drivers.items():
                if view.template is None or not draw(st.booleans()):
                    continue
                old = draw(st.booleans())
                made = entry(driver(d, version="0.9.0") if old else view)
                current.append(made)
                phase = draw(st.sampled_from(["Loaded", "Loaded", "Failed", "Loading", None]))
                if phase:
                    runs.append(run(d, phase, made.version))
            generation = draw(st.integers(1, 3))
            configs[name] = config(
                name,
                current,
                runs=runs,
                available=draw(st.sampled_from([["loop_info.py"], []])),
                max_loaded=draw(st.sampled_from([None, 1, 2, 3])),
                generation=generation,
                observed=draw(st.sampled_from([generation, generation - 1])),
            )
        lease_kind = draw(st.sampled_from(["fresh", "stale", "none"]))
        if lease_kind != "none":
            leases[name] = lease(name, renewed=NOW - (5 if lease_kind == "fresh" else 500))
    return Snapshot(nodes=nodes, devices=devices, configs=configs, leases=leases, drivers=drivers)


def applied(world: Snapshot, plans: dict[str, NodePlan]) -> Snapshot:
    """The world after every changed plan was written (the agents' reports unchanged)."""
    configs = dict(world.configs)
    for name, plan in plans.items():
        if not plan.changed:
            continue
        before = configs.get(name)
        if before is None:
            configs[name] = config(name, plan.drivers, status=False, generation=1)
        else:
            configs[name] = ConfigView(
                **{
                    **{f: getattr(before, f) for f in ConfigView.__dataclass_fields__},
                    "spec_drivers": plan.drivers,
                    "rollout_keys": config(name, plan.drivers).rollout_keys,
                    "generation": before.generation + 1,
                    "unload_after": dict(plan.unload_after),
                }
            )
    return Snapshot(world.nodes, world.devices, configs, world.leases, world.drivers)


PROPERTY = settings(
    max_examples=int(os.environ.get("SDO_PROPERTY_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(worlds())
def test_written_plans_converge_and_a_converged_plan_plans_to_itself(world: Snapshot) -> None:
    """Writing the plans reaches a fixed point: usually at once; a node that drops a driver
    can free rollout budget (maxUnavailable) for another node in the next round, so each round
    must make progress and at most one more round per node is allowed."""
    plans = plan_cluster(world, NOW)
    for _ in range(len(world.nodes) + 1):
        if not any(plan.changed for plan in plans.values()):
            break
        world = applied(world, plans)
        plans = plan_cluster(world, NOW)
    assert not any(plan.changed for plan in plans.values()), plans
    again = plan_cluster(applied(world, plans), NOW)
    for name, plan in again.items():
        assert not plan.changed, (name, plans[name], plan)
        assert [d.to_api() for d in plan.drivers] == [d.to_api() for d in plans[name].drivers]


@PROPERTY
@given(worlds())
def test_the_same_input_gives_the_same_output(world: Snapshot) -> None:
    assert plan_cluster(world, NOW) == plan_cluster(world, NOW)


@PROPERTY
@given(worlds(), st.sampled_from([1, 11, 61, 3600]))
def test_time_alone_only_ever_unloads(world: Snapshot, later: int) -> None:
    settled = applied(world, plan_cluster(world, NOW))
    now_plans = plan_cluster(settled, NOW)
    later_plans = plan_cluster(settled, NOW + later)
    for name, plan in later_plans.items():
        assert {d.name for d in plan.drivers} <= {d.name for d in now_plans[name].drivers}


KNOWN_REASONS = {str(r) for r in Reason} | {str(h) for h in Hold}


@PROPERTY
@given(worlds())
def test_every_decision_has_a_reason_and_a_message(world: Snapshot) -> None:
    for plan in plan_cluster(world, NOW).values():
        for decision in plan.decisions.values():
            assert decision.reason in KNOWN_REASONS
            assert decision.message
            if decision.action == Action.HOLD:
                assert decision.reason in {str(h) for h in Hold}
            if decision.action in (Action.NONE, Action.UNLOAD):
                assert decision.reason in {str(r) for r in Reason} - {Reason.MATCHED}
            if decision.action in (Action.LOAD, Action.UPDATE):
                assert decision.reason == Reason.MATCHED


@PROPERTY
@given(worlds())
def test_capacity_and_order(world: Snapshot) -> None:
    for name, plan in plan_cluster(world, NOW).items():
        cfg = world.configs.get(name)
        capacity = cfg.max_loaded_drivers if cfg else 100
        assert len(plan.drivers) <= capacity
        ranks = [(-d.priority, d.name) for d in plan.drivers]
        assert ranks == sorted(ranks)
        assert len({d.name for d in plan.drivers}) == len(plan.drivers)
        in_spec = {n for n, d in plan.decisions.items() if d.in_spec}
        assert in_spec == {d.name for d in plan.drivers}


@PROPERTY
@given(worlds())
def test_unloads_for_missing_devices_are_conservative(world: Snapshot) -> None:
    states = world.node_states()
    for name, plan in plan_cluster(world, NOW).items():
        for decision in plan.decisions.values():
            if decision.action != Action.UNLOAD or decision.reason != Reason.NO_MATCHING_DEVICES:
                continue
            spec = world.drivers[decision.driver].spec
            assert spec is not None
            assert states[name].lease is not None and states[name].lease.fresh(NOW)  # type: ignore[union-attr]
            for dev in states[name].devices:
                if device_matches(spec.supported_devices or (), spec, dev):
                    assert not dev.present
                    assert dev.since is not None and dev.since + spec.unload_delay_seconds <= NOW


@PROPERTY
@given(worlds())
def test_invalid_drivers_change_nothing_on_the_nodes(world: Snapshot) -> None:
    for name, plan in plan_cluster(world, NOW).items():
        cfg = world.configs.get(name)
        for driver_name, view in world.drivers.items():
            if view.spec is not None or view.deleting:
                continue
            before = cfg.entry(driver_name) if cfg else None
            after = next((d for d in plan.drivers if d.name == driver_name), None)
            if plan.decisions[driver_name].reason != Reason.CAPACITY_EXCEEDED:
                assert after == before


@PROPERTY
@given(worlds())
def test_rollouts_keep_to_their_budget(world: Snapshot) -> None:
    rollouts = plan_rollouts(world.drivers.values(), world.configs.values())
    for name, rollout in rollouts.items():
        view = world.drivers[name]
        if view.spec is None:
            assert rollout.allowed == frozenset()
            continue
        serving_old = {
            n
            for n, cfg in world.configs.items()
            if cfg.rollout_keys.get(name) not in (None, view.rollout_key)
            and (r := cfg.runs.get(name)) is not None
            and r.loaded
        }
        budget = max(0, max_unavailable_count(view.spec.max_unavailable, rollout.total) - rollout.unavailable)
        assert len(rollout.allowed & serving_old) <= budget


@PROPERTY
@given(worlds())
def test_status_of_an_unchanged_world_is_rewritten_identically_and_makes_no_events(world: Snapshot) -> None:
    plans = plan_cluster(world, NOW)
    at = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    for name, view in world.drivers.items():
        states = [
            NodeDriverState(
                n, p.decisions[name], (world.configs[n].runs.get(name) if n in world.configs else None)
            )
            for n, p in plans.items()
        ]
        first = aggregate(view, states, at)
        again = aggregate(dataclasses.replace(view, status=first), states, at + dt.timedelta(hours=1))
        assert again.to_api() == first.to_api()
        observed = {s.node: observe(s) for s in states}
        assert transitions(observed, observed, first.conditions, first.conditions) == []
