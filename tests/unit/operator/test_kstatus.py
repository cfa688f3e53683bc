"""The StorageDriver status as GitOps tools read it: kstatus's rules (Flux) and the Argo CD Lua
check (docs/argocd-health.lua) applied to what `aggregate` writes, in every kind of round."""

from __future__ import annotations

import datetime as dt
import shutil
from typing import Any

import pytest
from storage_driver_api.storagedriver import StorageDriverStatus
from storage_driver_operator.desired import Action, Decision, Hold
from storage_driver_operator.matching import Reason
from storage_driver_operator.status import NodeDriverState, aggregate
from storage_driver_operator.views import DriverRun, StorageDriverView

from tests.harness import kstatus
from tests.unit.docs.test_argocd_health import EXAMPLE, INTERPRETERS, health
from tests.unit.operator.builders import NOW, driver, iso
from tests.unit.operator.test_status import load, skip

AT = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
GENERATION = 4


def pending(node: str) -> NodeDriverState:
    return NodeDriverState(
        node,
        Decision("drv", Action.HOLD, Hold.ROLLOUT_PENDING, "keeps 1.0.0", True),
        DriverRun("Loaded", "1.0.0"),
    )


def unloading(node: str, reason: Reason = Reason.NODE_NOT_SELECTED) -> NodeDriverState:
    return NodeDriverState(
        node, Decision("drv", Action.UNLOAD, reason, "leaving"), DriverRun("Unloading", pid=5)
    )


def crashed(node: str) -> NodeDriverState:
    return load(node, phase="Failed", error_reason="Crashed", error_message="exit 3")


def obj(view: StorageDriverView, status: StorageDriverStatus) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": view.name, "generation": view.generation}
    if view.deleting:
        meta["deletionTimestamp"] = iso(NOW)
        meta["finalizers"] = ["storage.datawarehouse.io/unload"]
    return {
        "apiVersion": EXAMPLE["apiVersion"],
        "kind": "StorageDriver",
        "metadata": meta,
        "spec": EXAMPLE["spec"],
        "status": status.to_api(),
    }


# (driver, states on the nodes) -> what kstatus says, and what Argo CD says.
ROUNDS: dict[str, tuple[StorageDriverView, list[NodeDriverState], str, str]] = {
    "loaded everywhere": (
        driver(generation=GENERATION),
        [load("a"), load("b"), skip("c")],
        "Current",
        "Healthy",
    ),
    "no node needs it": (driver(generation=GENERATION), [skip("a")], "Current", "Healthy"),
    "loading": (
        driver(generation=GENERATION),
        [load("a"), load("b", phase="Loading"), load("c", phase=None, action=Action.LOAD)],
        "InProgress",
        "Progressing",
    ),
    "rolling update": (
        driver(generation=GENERATION, version="2.0.0"),
        [load("a", version="2.0.0"), pending("b")],
        "InProgress",
        "Progressing",
    ),
    "unloading from a node": (
        driver(generation=GENERATION),
        [load("a"), unloading("b")],
        "InProgress",
        "Progressing",
    ),
    "crashing on its only node": (driver(generation=GENERATION), [crashed("a")], "Failed", "Degraded"),
    "no node has room": (
        driver(generation=GENERATION),
        [skip("a", Reason.CAPACITY_EXCEEDED, has_hardware=True)],
        "Failed",
        "Degraded",
    ),
    "failing on one node, loaded on the rest": (
        driver(generation=GENERATION),
        [load("a"), crashed("b")],
        "Failed",
        "Degraded",
    ),
    "failing on one node, still loading on another": (
        driver(generation=GENERATION),
        [crashed("a"), load("b", phase="Loading")],
        "InProgress",
        "Degraded",
    ),
    "unhealthy on its only node": (
        driver(generation=GENERATION),
        [load("a", unhealthy="health() returned False")],
        "Failed",
        "Degraded",
    ),
    "invalid spec": (
        driver(generation=GENERATION, maxUnavailable="lots"),
        [skip("a", Reason.INVALID_SPEC)],
        "Failed",
        "Degraded",
    ),
    "deleting": (
        driver(generation=GENERATION, deleting=True),
        [unloading("a", Reason.DELETING)],
        "Terminating",
        "Progressing",
    ),
}


@pytest.mark.parametrize("case", sorted(ROUNDS))
def test_kstatus_reads_what_the_operator_writes(case: str) -> None:
    view, states, expected, _ = ROUNDS[case]
    status = aggregate(view, states, AT)
    assert kstatus.compute(obj(view, status)).status == expected
    # Every condition is about the generation it was computed for.
    assert {c.observed_generation for c in status.conditions} == {GENERATION}
    assert status.observed_generation == GENERATION


@pytest.mark.parametrize("case", sorted(ROUNDS))
def test_reconciling_and_stalled_follow_progressing_and_degraded(case: str) -> None:
    view, states, _, _ = ROUNDS[case]
    conditions = {c.type: c for c in aggregate(view, states, AT).conditions}
    progressing, degraded = conditions["Progressing"], conditions["Degraded"]
    reconciling, stalled = conditions["Reconciling"], conditions["Stalled"]
    assert (reconciling.status, reconciling.reason, reconciling.message) == (
        progressing.status,
        progressing.reason,
        progressing.message,
    )
    stuck = degraded.status == "True" and progressing.status == "False"
    assert stalled.status == ("True" if stuck else "False")
    # kstatus takes the first of the two that is True: never both.
    assert not (reconciling.status == "True" and stalled.status == "True")
    if stuck:
        assert (stalled.reason, stalled.message) == (degraded.reason, degraded.message)


def test_stalled_names_why_and_clears_when_fixed() -> None:
    view = driver(generation=GENERATION)
    failing = aggregate(view, [crashed("a")], AT)
    stalled = next(c for c in failing.conditions if c.type == "Stalled")
    assert (stalled.reason, stalled.message) == ("LoadFailed", "1 node failing: a: Crashed")
    assert kstatus.compute(obj(view, failing)).message == "1 node failing: a: Crashed"
    fixed = aggregate(
        driver(generation=GENERATION, status=failing.to_api()), [load("a")], AT + dt.timedelta(1)
    )
    stalled = next(c for c in fixed.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason) == ("False", "AsExpected")
    assert stalled.last_transition_time == AT + dt.timedelta(1)
    assert kstatus.compute(obj(view, fixed)).status == "Current"


def test_failing_while_still_in_flight_says_so() -> None:
    status = aggregate(driver(generation=GENERATION), [crashed("a"), load("b", phase="Loading")], AT)
    stalled = next(c for c in status.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason) == ("False", "StillReconciling")
    assert stalled.message == "failing, and still in flight: loading on 1 node: b"


def test_a_status_of_an_older_generation_is_in_progress() -> None:
    view = driver(generation=GENERATION)
    status = aggregate(view, [load("a")], AT)
    newer = {**obj(view, status), "metadata": {"name": "drv", "generation": GENERATION + 1}}
    result = kstatus.compute(newer)
    assert (result.status, result.reason) == ("InProgress", "LatestGenerationNotObserved")


@pytest.mark.parametrize("interpreter", INTERPRETERS)
@pytest.mark.parametrize("case", sorted(ROUNDS))
def test_argo_cd_agrees(interpreter: str, case: str) -> None:
    if not shutil.which(interpreter):
        from tests.conftest import require

        require(f"{interpreter} is not installed: run 'make deps'")
    view, states, _, expected = ROUNDS[case]
    assert health(interpreter, obj(view, aggregate(view, states, AT)))[0] == expected


def test_an_unhealthy_driver_is_not_ready_and_names_the_node() -> None:
    states = [load("a"), load("b", unhealthy="health() did not answer within 10s")]
    status = aggregate(driver(generation=GENERATION), states, AT)
    conditions = {c.type: c for c in status.conditions}
    assert (conditions["Ready"].status, conditions["Ready"].reason) == ("False", "Unhealthy")
    assert conditions["Degraded"].message == "1 node failing: b: Unhealthy"
    assert conditions["Stalled"].status == "True"
    assert [(f.node, f.reason, f.message) for f in status.failing_nodes] == [
        ("b", "Unhealthy", "health() did not answer within 10s")
    ]
    # Counted loaded (it runs), not failed (it did not stop).
    assert (status.loaded_nodes, status.failed_nodes) == (2, 0)


def test_a_health_verdict_counts_only_while_the_driver_is_loaded() -> None:
    # A host still starting, or stopping, has no health to speak of yet.
    for phase in ("Loading", "Unloading", "Pending"):
        state = load("a", phase=phase, unhealthy="stale")
        assert state.failure() is None, phase
    assert load("a", unhealthy="").failure() is None
    assert load("a", unhealthy="disk gone").failure() == ("Unhealthy", "disk gone")


def test_a_crash_loop_shows_while_the_driver_waits_out_its_backoff() -> None:
    # The agent reports Failed/Crashed between restarts (the backoff grows to minutes).
    status = aggregate(driver(generation=GENERATION), [crashed("a")], AT)
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "LoadFailed")
    assert status.failing_nodes[0].reason == "Crashed"
