"""Scenario 4: the agent SIGKILLed while drivers load and unload (seeded, repeatable points),
with a real agent, real driver hosts and the probe driver's journal of its calls.

A driver that runs through it all keeps its host (adopted after every kill, never started
again); after each restart the node converges to exactly one host per driver in the spec and
none for the others, however far the load or unload had got; and an agent killed in the middle
of a load that never comes back leaves no driver host behind after the adoption window.
"""

from __future__ import annotations

import asyncio
import functools
import random
from typing import Any

from storage_driver_api.kube import KubeClient

from tests.e2e.drivers.test_agent import set_drivers, status, wait_phase
from tests.harness.drivers import Agent, desired_driver, journal, pid_alive
from tests.harness.waiting import eventually

SEED = 4
ROUNDS = 8
CHANGING = ["a", "b", "c"]


def spec(agent: Agent, names: list[str]) -> list[dict[str, Any]]:
    return [desired_driver(n, config={"journal": str(agent.root / f"{n}.journal")}) for n in names]


async def converged(kube: KubeClient, agent: Agent, names: list[str]) -> dict[str, int] | None:
    """name -> pid once exactly the drivers `names` are Loaded, each with the one host running."""
    entries = {e["name"]: e for e in (await status(kube, agent.node)).get("drivers") or []}
    if sorted(entries) != sorted(names) or any(e["phase"] != "Loaded" for e in entries.values()):
        return None
    pids = {name: int(e["pid"]) for name, e in entries.items()}
    return pids if sorted(agent.hosts()) == sorted(pids.values()) else None


async def test_an_agent_killed_while_drivers_load_and_unload_leaves_one_host_per_driver(
    clean_cluster: KubeClient, agent: Agent
) -> None:
    kube = clean_cluster
    rng = random.Random(SEED)
    # Health checks every second: an adopted host must pass them as it is (not be taken for one
    # that forked away), the whole time.
    agent.start("--health-interval", "1")
    await set_drivers(kube, agent.node, spec(agent, ["keep"]))
    keep = (await wait_phase(kube, agent.node, "keep", "Loaded"))["pid"]
    pids: dict[str, int] | None = {}
    for round_ in range(ROUNDS):
        names = ["keep", *sorted(rng.sample(CHANGING, rng.randint(0, len(CHANGING))))]
        await set_drivers(kube, agent.node, spec(agent, names))
        await asyncio.sleep(rng.uniform(0.0, 1.5))  # somewhere in the loads and unloads
        agent.kill()
        agent.start("--health-interval", "1")
        pids = await eventually(
            functools.partial(converged, kube, agent, names),
            timeout=60,
            what=f"round {round_}: exactly {names} loaded, one host each",
        )
        assert pids is not None and pids["keep"] == keep, (
            f"round {round_}: the driver that ran all along was started again"
        )

    # Every host of a driver that is no longer running is gone, and none ran beside another copy:
    # of each driver's started hosts, only the current one lives.
    final = pids or {}
    for name in ["keep", *CHANGING]:
        started = {e["pid"] for e in journal(agent.root / f"{name}.journal") if e["event"] == "start"}
        alive = {pid for pid in started if pid_alive(pid)}
        assert alive == ({final[name]} if name in final else set()), (name, started, alive)
    await asyncio.sleep(3)  # a few health checks of the adopted hosts
    assert await converged(kube, agent, sorted(final)) == final
    calls = journal(agent.root / "keep.journal")
    assert [c["event"] for c in calls] == ["start"], calls


async def test_an_agent_killed_during_a_load_that_never_returns_leaves_no_host(
    clean_cluster: KubeClient, agent: Agent
) -> None:
    kube = clean_cluster
    agent.start("--adoption-window", "2")
    await set_drivers(kube, agent.node, spec(agent, ["keep"]))
    await wait_phase(kube, agent.node, "keep", "Loaded")
    await set_drivers(kube, agent.node, spec(agent, ["keep", "a", "b"]))
    await asyncio.sleep(0.3)  # the new hosts are starting or loading
    agent.kill()

    async def none_left() -> bool:
        return agent.hosts() == {}

    await eventually(none_left, timeout=30, what="every driver host to stop without an agent")
    for name in ("keep", "a", "b"):
        for call in journal(agent.root / f"{name}.journal"):
            assert not pid_alive(call["pid"]), (name, call)
