"""The simulated agents of the scale benchmark report what the operator counts: their status
(`simulated.agent_status`, the real agent's status code) reads as Loaded at the spec's version
and generation with the spec's devices bound, a driver gone from the spec as unloaded, and an
unchanged spec as an unchanged status (no write)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from storage_driver_operator.desired import Action, Decision
from storage_driver_operator.matching import Reason
from storage_driver_operator.status import NodeDriverState, aggregate
from storage_driver_operator.views import config_view, reported_runs

from tests.integration.operator import simulated as sim
from tests.unit.operator.builders import driver, entry, node

AT = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def config(drivers: list[dict[str, Any]], generation: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "n1", "uid": "ndc-n1", "generation": generation},
        "spec": {"drivers": drivers},
    }


def answered(obj: dict[str, Any], started: dict[str, float]) -> dict[str, Any]:
    return {**obj, "status": sim.agent_status(obj, started=started, now=1000.0).to_api()}


def test_a_driver_in_the_spec_reads_as_loaded_with_its_devices_bound() -> None:
    view = driver("drv", version="1.2.3")
    obj = answered(config([entry(view, ["n1-d00", "n1-d01"]).to_api()], generation=4), {})
    seen = config_view(obj)
    assert seen.settled and seen.observed_generation == 4
    run = reported_runs(seen, node("n1"))["drv"]
    assert (run.phase, run.version, run.bound_devices, run.loaded) == (
        "Loaded",
        "1.2.3",
        ("n1-d00", "n1-d01"),
        True,
    )
    decision = Decision("drv", Action.KEEP, Reason.MATCHED, "2 matching device(s)", True)
    status = aggregate(view, [NodeDriverState("n1", decision, run)], AT)
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (status.loaded_nodes, ready.status, ready.reason) == (1, "True", "Loaded")


def test_a_driver_gone_from_the_spec_is_gone_from_the_status() -> None:
    started: dict[str, float] = {}
    view = driver("drv")
    answered(config([entry(view, ["n1-d00"]).to_api()], generation=1), started)
    seen = config_view(answered(config([], generation=2), started))
    assert seen.settled
    assert dict(seen.runs) == {}
    assert started == {}


def test_an_unchanged_spec_gives_an_identical_status() -> None:
    started: dict[str, float] = {}
    obj = config([entry(driver("drv"), ["n1-d00"]).to_api()], generation=1)
    first = sim.agent_status(obj, started=started, now=1000.0)
    again = sim.agent_status(obj, started=started, previous=first, now=2000.0)
    assert again.to_api() == first.to_api()
