"""Rollouts across fleets, as a user sees them: maxUnavailable holds forward and back, a node
that cannot obtain the new file is skipped, and Ready waits for the last old node. The property
test drives a simulated fleet (agents that load, crash and recover) through version changes."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_driver_api.meta import ConditionStatus, find_condition
from storage_driver_api.nodedriverconfig import DesiredDriver
from storage_driver_operator.desired import Action, Hold, Snapshot, plan_cluster, plan_rollout
from storage_driver_operator.status import READY, NodeDriverState, aggregate
from storage_driver_operator.views import ConfigView, StorageDriverView, config_view

from tests.unit.operator.builders import NOW, config, device, driver, entry, lease, node, run

AT = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def fleet(
    running: dict[str, tuple[str, str]],
    target: StorageDriverView,
    *,
    available: dict[str, list[str]] | None = None,
    settled: bool = True,
) -> Snapshot:
    """Nodes running (entry version, reported phase) of `drv`; `target` is the StorageDriver now."""
    configs = {}
    for name, (version, phase) in running.items():
        spec = entry(driver(version=version), [f"{name}-d"])
        files = (available or {}).get(name, ["loop_info.py"])
        configs[name] = config(
            name,
            [spec],
            runs=[run("drv", phase, version)],
            available=files,
            generation=2,
            observed=2 if settled else 1,
        )
    return Snapshot(
        nodes={n: node(n) for n in running},
        devices=[device(f"{n}-d", n) for n in running],
        configs=configs,
        leases={n: lease(n) for n in running},
        drivers={"drv": target},
    )


def switching(world: Snapshot) -> list[str]:
    return sorted(
        n for n, p in plan_cluster(world, NOW).items() if p.decisions["drv"].action == Action.UPDATE
    )


def test_a_rollback_respects_max_unavailable() -> None:
    # Every node runs 2.0.0; the user goes back to 1.0.0: one node at a time, as forwards.
    back = driver(version="1.0.0", maxUnavailable=1, generation=3)
    world = fleet({f"n{i}": ("2.0.0", "Loaded") for i in range(4)}, back)
    assert switching(world) == ["n0"]
    rollout = plan_rollout(back, world.configs.values())
    assert (rollout.total, rollout.updated, rollout.waiting) == (4, 0, 3)
    plans = plan_cluster(world, NOW)
    assert [d.version for d in plans["n1"].drivers] == ["2.0.0"]
    assert plans["n1"].decisions["drv"].reason == Hold.ROLLOUT_PENDING


def test_a_rollback_halfway_through_a_rollout_switches_only_the_updated_nodes_back() -> None:
    back = driver(version="1.0.0", maxUnavailable=1, generation=3)
    world = fleet({"n0": ("2.0.0", "Loaded"), "n1": ("2.0.0", "Loaded"), "n2": ("1.0.0", "Loaded")}, back)
    plans = plan_cluster(world, NOW)
    assert plans["n2"].decisions["drv"].action == Action.KEEP
    assert switching(world) == ["n0"]


def test_a_switched_node_counts_as_unavailable_until_it_reports_the_new_version_loaded() -> None:
    # Rolled back to 1.0.0: n0 has the 1.0.0 entry but its agent still reports 2.0.0 Loaded.
    back = driver(version="1.0.0", maxUnavailable=1, generation=3)
    world = fleet({"n0": ("2.0.0", "Loaded"), "n1": ("2.0.0", "Loaded")}, back)
    switched = config(
        "n0", [entry(back, ["n0-d"])], runs=[run("drv", "Loaded", "2.0.0")], generation=3, observed=3
    )
    configs = [switched, world.configs["n1"]]
    rollout = plan_rollout(back, configs)
    assert (rollout.updated, rollout.unavailable, rollout.allowed) == (1, 1, frozenset())
    done = config(
        "n0", [entry(back, ["n0-d"])], runs=[run("drv", "Loaded", "1.0.0")], generation=3, observed=3
    )
    assert plan_rollout(back, [done, world.configs["n1"]]).allowed == frozenset({"n1"})
    # Forwards the same: the 2.0.0 entry with 1.0.0 still reported Loaded is not yet serving it.
    new = driver(version="2.0.0", maxUnavailable=1, generation=3)
    ahead = fleet({"n0": ("1.0.0", "Loaded"), "n1": ("1.0.0", "Loaded")}, new)
    behind = config(
        "n0", [entry(new, ["n0-d"])], runs=[run("drv", "Loaded", "1.0.0")], generation=3, observed=3
    )
    rollout = plan_rollout(new, [behind, ahead.configs["n1"]])
    assert (rollout.updated, rollout.unavailable, rollout.allowed) == (1, 1, frozenset())


def test_reports_parsed_from_the_api_move_the_rollout_on() -> None:
    # Versions in the agents' reports are parsed from JSON: equal strings, not the same objects.
    new = driver(version="2.0.0", maxUnavailable=1, generation=3)
    world = fleet({"n0": ("1.0.0", "Loaded"), "n1": ("1.0.0", "Loaded")}, new)
    body = {
        "metadata": {"name": "n0", "generation": 3},
        "spec": {"drivers": [entry(new, ["n0-d"]).to_api()]},
        "status": {"observedGeneration": 3, "drivers": [run("drv", "Loaded", "2.0.0")]},
    }
    switched = config_view(json.loads(json.dumps(body)))
    rollout = plan_rollout(new, [switched, world.configs["n1"]])
    assert (rollout.updated, rollout.unavailable, rollout.allowed) == (1, 0, frozenset({"n1"}))


def test_a_driver_being_deleted_or_invalid_rolls_nothing() -> None:
    world = fleet({"n0": ("1.0.0", "Loaded")}, driver(version="2.0.0"))
    for view in (driver(version="2.0.0", deleting=True), driver(version="2.0.0", maxUnavailable="x")):
        rollout = plan_rollout(view, world.configs.values())
        assert (rollout.allowed, rollout.total, rollout.updated, rollout.unavailable, rollout.waiting) == (
            frozenset(),
            0,
            0,
            0,
            0,
        )


def test_more_switched_nodes_unavailable_than_max_unavailable_switch_no_old_node() -> None:
    # maxUnavailable was 3 and is now 1, with three switched nodes still loading: nothing more
    # may go down until fewer than one is unavailable.
    new = driver(version="2.0.0", maxUnavailable=1, generation=3)
    running = {f"n{i}": ("2.0.0", "Loading") for i in range(3)}
    running |= {f"n{i}": ("1.0.0", "Loaded") for i in range(3, 8)}
    world = fleet(running, new)
    rollout = plan_rollout(new, world.configs.values())
    assert rollout.allowed == frozenset()
    assert (rollout.unavailable, rollout.waiting) == (3, 5)
    assert switching(world) == []


def test_a_node_that_cannot_obtain_the_new_file_is_skipped_and_the_rollout_goes_on() -> None:
    new = driver(version="2.0.0", source={"hostPath": {"path": "v2.py"}}, maxUnavailable=2, generation=3)
    running = {f"n{i}": ("1.0.0", "Loaded") for i in range(5)}
    lacking = {"n0": ["loop_info.py"], "n2": ["loop_info.py"]}
    others = {n: ["loop_info.py", "v2.py"] for n in running if n not in lacking}
    world = fleet(running, new, available={**lacking, **others})
    assert plan_rollout(new, world.configs.values()).allowed == frozenset({"n1", "n3"})
    plans = plan_cluster(world, NOW)
    assert switching(world) == ["n1", "n3"]
    for n in lacking:
        assert plans[n].decisions["drv"].reason == Hold.DRIVER_NOT_AVAILABLE
        assert [d.version for d in plans[n].drivers] == ["1.0.0"]


def test_a_budget_larger_than_the_fleet_switches_every_node_and_none_waits() -> None:
    new = driver(version="2.0.0", maxUnavailable=5, generation=3)
    world = fleet({"n0": ("1.0.0", "Loaded"), "n1": ("1.0.0", "Loaded")}, new)
    rollout = plan_rollout(new, world.configs.values())
    assert rollout.allowed == frozenset({"n0", "n1"})
    assert (rollout.total, rollout.updated, rollout.unavailable, rollout.waiting) == (2, 0, 0, 0)


def test_the_budget_left_is_max_unavailable_minus_the_unavailable() -> None:
    new = driver(version="2.0.0", maxUnavailable=3, generation=3)
    running = {"n0": ("2.0.0", "Loading")} | {f"n{i}": ("1.0.0", "Loaded") for i in range(1, 5)}
    rollout = plan_rollout(new, fleet(running, new).configs.values())
    assert (rollout.unavailable, rollout.allowed, rollout.waiting) == (1, frozenset({"n1", "n2"}), 2)


def test_every_node_running_the_driver_counts_as_matching_during_a_rollout() -> None:
    new = driver(version="2.0.0", source={"hostPath": {"path": "v2.py"}}, maxUnavailable=1, generation=3)
    running = {f"n{i}": ("1.0.0", "Loaded") for i in range(4)}
    files = {"n0": ["loop_info.py"]} | {n: ["loop_info.py", "v2.py"] for n in ("n1", "n2", "n3")}
    world = fleet(running, new, available=files)
    plans = plan_cluster(world, NOW)
    # n0 cannot get the file, n1 switches, n2 and n3 wait: all four match.
    assert [plans[n].decisions["drv"].action for n in sorted(plans)] == [
        Action.HOLD,
        Action.UPDATE,
        Action.HOLD,
        Action.HOLD,
    ]
    status = aggregate(new, states(world), AT)
    assert (status.matching_nodes, status.desired_nodes) == (4, 4)


def test_nodes_without_the_driver_and_nodes_already_updated_do_not_end_the_scan() -> None:
    new = driver(version="2.0.0", maxUnavailable=1, generation=3)
    world = fleet({"n0": ("2.0.0", "Loaded"), "n1": ("1.0.0", "Loaded"), "n2": ("1.0.0", "Loaded")}, new)
    bare = config("a-bare", [], runs=[])
    configs = [bare, *world.configs.values()]
    rollout = plan_rollout(new, configs)
    assert rollout.allowed == frozenset({"n1"})
    assert (rollout.total, rollout.updated, rollout.unavailable, rollout.waiting) == (3, 1, 0, 1)


def states(world: Snapshot) -> list[NodeDriverState]:
    plans = plan_cluster(world, NOW)
    return [
        NodeDriverState(n, p.decisions["drv"], world.configs[n].runs.get("drv")) for n, p in plans.items()
    ]


def test_ready_is_not_claimed_while_any_node_runs_an_old_version() -> None:
    new = driver(version="2.0.0", maxUnavailable=1, generation=3)
    world = fleet({"n0": ("2.0.0", "Loaded"), "n1": ("1.0.0", "Loaded"), "n2": ("1.0.0", "Loaded")}, new)
    status = aggregate(new, states(world), AT)
    ready = find_condition(status.conditions, READY)
    assert ready is not None
    assert (ready.status, ready.reason) == (ConditionStatus.FALSE, "Loading")
    assert ready.message == "version 2.0.0 loaded on 1 of 3 nodes"
    progressing = find_condition(status.conditions, "Progressing")
    assert progressing is not None
    assert progressing.reason == "RollingUpdate"
    assert progressing.message == "2 nodes still to switch to version 2.0.0: n1, n2"

    done = fleet({n: ("2.0.0", "Loaded") for n in ("n0", "n1", "n2")}, new)
    ready = find_condition(aggregate(new, states(done), AT).conditions, READY)
    assert ready is not None
    assert (ready.status, ready.message) == (ConditionStatus.TRUE, "version 2.0.0 loaded on 3 nodes")


# --- a simulated fleet -------------------------------------------------------------------------


@dataclass
class Agent:
    """One node's agent, as the operator sees it through its NodeDriverConfig."""

    spec: DesiredDriver
    version: str  # what runs (or last ran)
    phase: str = "Loaded"
    generation: int = 1
    observed: int = 1
    history: list[str] = field(default_factory=list)

    def view(self, name: str) -> ConfigView:
        return config(
            name,
            [self.spec],
            runs=[run("drv", self.phase, self.version)],
            generation=self.generation,
            observed=self.observed,
        )

    def step(self, written: DesiredDriver | None, failing: bool) -> None:
        """One round: act on the previous write, then take the new one (acted on next round)."""
        if self.observed < self.generation:
            self.observed = self.generation
            self.version = self.spec.version
            self.phase = "Failed" if failing else "Loaded"
        elif failing and self.phase == "Loaded":
            self.phase = "Failed"  # a crash
        elif not failing and self.phase == "Failed":
            self.phase = "Loaded"  # recovered
        if written is not None:
            self.spec = written
            self.generation += 1
            self.phase = "Loading" if self.phase == "Loaded" else self.phase


ROLLOUT = settings(
    max_examples=int(os.environ.get("SDO_PROPERTY_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@ROLLOUT
@given(
    size=st.integers(1, 7),
    max_unavailable=st.sampled_from([1, 2, 3, "30%", "50%"]),
    versions=st.lists(st.sampled_from(["1.0.0", "2.0.0", "3.0.0"]), min_size=1, max_size=4),
    changes_every=st.integers(1, 4),
    failures=st.lists(st.frozensets(st.integers(0, 6)), max_size=8),
)
def test_rollouts_over_a_fleet_keep_to_max_unavailable_and_finish(
    size: int,
    max_unavailable: int | str,
    versions: list[str],
    changes_every: int,
    failures: list[frozenset[int]],
) -> None:
    """Versions go up and down, nodes fail and recover: no round takes down more serving nodes
    than maxUnavailable allows, Ready is never claimed with a node off the target, and once the
    changes and failures stop every node ends up on the last version."""
    names = [f"n{i}" for i in range(size)]
    first = driver(version="1.0.0", maxUnavailable=max_unavailable)
    agents = {n: Agent(entry(first, [f"{n}-d"]), "1.0.0") for n in names}
    budget = (
        max(1, math.ceil(size * int(max_unavailable.rstrip("%")) / 100))
        if isinstance(max_unavailable, str)
        else max_unavailable
    )
    rounds = len(versions) * changes_every + len(failures) + 4 * math.ceil(size / budget) + 4
    for round_ in range(rounds):
        version = versions[min(round_ // changes_every, len(versions) - 1)]
        target = driver(version=version, maxUnavailable=max_unavailable, generation=2 + round_)
        world = Snapshot(
            nodes={n: node(n) for n in names},
            devices=[device(f"{n}-d", n) for n in names],
            configs={n: a.view(n) for n, a in agents.items()},
            leases={n: lease(n) for n in names},
            drivers={"drv": target},
        )
        plans = plan_cluster(world, NOW)

        at_target = {n for n, a in agents.items() if a.spec.version == version}
        unavailable = {
            n
            for n in at_target
            if not (agents[n].phase == "Loaded" and agents[n].observed == agents[n].generation)
        }
        serving_old = {n for n, a in agents.items() if n not in at_target and a.phase == "Loaded"}
        not_serving_old = {n for n in names if n not in at_target and n not in serving_old}
        switched = {
            n for n in names if n not in at_target and [d.version for d in plans[n].drivers] == [version]
        }
        assert len(switched & serving_old) <= max(0, budget - len(unavailable))
        assert not_serving_old <= switched  # they serve nothing: nothing to protect

        status = aggregate(
            target,
            [NodeDriverState(n, plans[n].decisions["drv"], world.configs[n].runs.get("drv")) for n in names],
            AT,
        )
        ready = find_condition(status.conditions, READY)
        assert ready is not None
        if ready.status == ConditionStatus.TRUE:
            assert all(
                a.spec.version == version and a.version == version and a.phase == "Loaded"
                for a in agents.values()
            )

        failing = failures[round_] if round_ < len(failures) else frozenset()
        for n, a in agents.items():
            plan = plans[n]
            a.step(plan.drivers[0] if plan.changed and plan.drivers else None, int(n[1:]) in failing)

    final = versions[-1]
    assert {(a.spec.version, a.version, a.phase) for a in agents.values()} == {(final, final, "Loaded")}
