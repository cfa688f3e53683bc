"""Holding a deleted StorageDriver's finalizer (`Controller.wait_unloaded`): it is released once
every live node reports the driver unloaded, and a burst of reports (thousands of agents
answering one after another) is checked a few times, not once per report: each check looks at
every node."""

from __future__ import annotations

import asyncio
import time

import pytest
from storage_driver_operator.controller import Controller
from storage_driver_operator.options import Options

from tests.unit.operator.builders import NOW, config, driver, entry, lease, node


def controller() -> Controller:
    c = Controller(None, Options(), clock=lambda: NOW)  # type: ignore[arg-type]  # no API calls here
    view = driver("drv", deleting=True)
    c.drivers.items["drv"] = view
    c.nodes.items["n1"] = node("n1")
    c.leases.items["n1"] = lease("n1")
    c.configs.items["n1"] = config("n1", [entry(view, ["n1-d0"])])
    c.ready.set()
    return c


async def test_a_burst_of_reports_is_checked_a_few_times_and_the_last_one_releases_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = controller()
    checks = 0
    check = c.unloading_nodes

    def slow_check(name: str) -> list[str]:
        nonlocal checks
        checks += 1
        time.sleep(0.02)  # what a check of every node costs with thousands of them
        return check(name)

    monkeypatch.setattr(c, "unloading_nodes", slow_check)
    started = time.monotonic()
    waiting = asyncio.create_task(c.wait_unloaded("drv", timeout=30))
    for _ in range(100):  # other nodes' reports, 5 ms apart
        await asyncio.sleep(0.005)
        c._on_config("n1", None, c.configs.items["n1"])
    assert not waiting.done()
    c.configs.items["n1"] = config("n1", [])  # the last node's agent reports it unloaded
    c._on_config("n1", None, c.configs.items["n1"])
    assert await waiting == []
    # Each check takes at least 20 ms and is followed by at least 9 times that at rest, however
    # busy the machine is; checking after every report would be 101 checks.
    elapsed = time.monotonic() - started
    assert checks <= elapsed / (0.02 * 10) + 2, f"{checks} checks for 101 reports in {elapsed:.2f} s"


async def test_a_node_still_running_it_holds_the_finalizer_until_the_timeout() -> None:
    c = controller()
    assert await c.wait_unloaded("drv", timeout=0.3) == ["n1"]
