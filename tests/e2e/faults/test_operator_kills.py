"""Issue 13, scenario 3: the operator SIGKILLed at many seeded points while StorageDrivers are
applied, changed and deleted, and started again each time (a real storage-operator, a real
storage-agent with its driver hosts, real loop devices).

A kill may delay the work, never repeat it: each driver is loaded (the probe's `start`) and
unloaded (`stop`) at most as often as the changes asked (an apply loads, a change of config
reloads, a delete unloads), never two copies at once, and after the last restart the node
converges to what the surviving StorageDrivers say ("nothing lost").

The seed and the number of kill points come from $SDO_FAULT_SEED and $SDO_FAULT_KILL_POINTS
(`make soak` runs a longer variant); a failure prints both, and the same pair replays the same
actions, delays and kills.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from storage_driver_api.constants import STORAGE_DRIVERS
from storage_driver_api.kube import KubeClient

from tests.e2e.faults.conftest import pinned, sha_of, sizes, spec_writes, storage_driver
from tests.e2e.faults.nothing_lost import Expected, converged, starts_and_stops
from tests.harness.auditlog import AuditLog
from tests.harness.drivers import Agent
from tests.harness.localcluster import ClusterConfig
from tests.harness.loopdev import LoopDevice
from tests.integration.operator.conftest import Operator

SEED = int(os.environ.get("SDO_FAULT_SEED", "1313"))
KILL_POINTS = int(os.environ.get("SDO_FAULT_KILL_POINTS", "24"))
SLOTS = 5  # loop devices, each selected by the StorageDrivers of one slot
MAX_KILL_DELAY = 1.0  # seconds from an action to the kill: before, during and after its writes
STARTING_KILLS = 0.2  # the share of kills that hit an operator still starting


@dataclass
class Ledger:
    """What the actions asked for, per StorageDriver: the most loads and unloads they allow."""

    loads: Counter[str] = field(default_factory=Counter)
    unloads: Counter[str] = field(default_factory=Counter)
    live: dict[str, dict[str, object]] = field(default_factory=dict)  # name -> its config
    slot_of: dict[str, int] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    fresh: list[int] = field(default_factory=list)  # slots no StorageDriver used yet
    actions: list[str] = field(default_factory=list)


async def act(
    kube: KubeClient, rng: random.Random, ledger: Ledger, make: Callable[[int, str], dict[str, Any]]
) -> str:
    """One seeded action: apply a new StorageDriver, change one's config, or delete one."""
    # One StorageDriver stays at least, so a long run never runs out of actions.
    choices = (["apply"] if ledger.fresh else []) + (["change"] * 3 if ledger.live else [])
    choices += ["delete"] if len(ledger.live) > 1 else []
    action = rng.choice(choices)
    if action == "apply":
        slot = ledger.fresh.pop(0)
        name = f"kill-{slot}"
        body = make(slot, name)
        await kube.create(STORAGE_DRIVERS, body)
        ledger.live[name] = body["spec"]["config"]
        ledger.slot_of[name] = slot
        ledger.loads[name] += 1
    else:
        name = rng.choice(sorted(ledger.live))
        if action == "change":
            config = {**ledger.live[name], "round": int(str(ledger.live[name].get("round", 0))) + 1}
            await kube.patch(STORAGE_DRIVERS, name, {"spec": {"config": config}})
            ledger.live[name] = config
            ledger.loads[name] += 1
            ledger.unloads[name] += 1
        else:
            await kube.delete(STORAGE_DRIVERS, name)
            del ledger.live[name]
            ledger.deleted.add(name)
            ledger.unloads[name] += 1
    step = f"{action} {name}"
    ledger.actions.append(step)
    return step


# Each point waits for the operator to start (seconds on a busy machine): the suite's 300 s
# limit would end a long run.
@pytest.mark.timeout(max(300, 120 + 12 * KILL_POINTS))
async def test_the_operator_killed_at_seeded_points_loads_and_unloads_no_more_than_asked(
    clean_cluster: KubeClient,
    cluster: ClusterConfig,
    agent: Agent,
    operator: Operator,
    loop_devices: Callable[..., LoopDevice],
) -> None:
    kube = clean_cluster
    rng = random.Random(SEED)
    print(f"scenario 3: SDO_FAULT_SEED={SEED} SDO_FAULT_KILL_POINTS={KILL_POINTS}")
    agent.start()
    source = pinned(agent)
    size = sizes(SLOTS)
    device = [loop_devices(size_bytes=s) for s in size]
    ledger = Ledger(fresh=list(range(SLOTS)))

    def make(slot: int, name: str) -> dict[str, Any]:
        return storage_driver(name, size[slot], agent.root / f"{name}.journal", source=source)

    audit = AuditLog(cluster)
    landed: Counter[str] = Counter()
    for point in range(KILL_POINTS):
        # Most kills hit a ready operator acting on the change; some hit one still starting.
        starting = rng.random() < STARTING_KILLS
        if not starting:
            await operator.wait_ready()
        step = await act(kube, rng, ledger, make)
        delay = rng.uniform(0, MAX_KILL_DELAY)
        await asyncio.sleep(delay)
        assert operator.process is not None
        operator.process.kill()  # SIGKILL: no cleanup, no last write
        where = "starting" if starting else "before its spec write"
        if not starting and "node spec written" in operator.process.log(100_000):
            where = "after its spec write"
        landed[where] += 1
        print(f"kill point {point}: {step}, killed {delay:.2f} s later, {where}")
        await operator.start(wait=False)
    print(f"kills landed: {dict(landed)}")
    await operator.wait_ready()

    expected = Expected(
        running={name: sha_of(source) for name in ledger.live},
        configs=dict(ledger.live),
        deleted=ledger.deleted,
        present={str(d.backing_file) for d in device},
    )
    await converged(kube, agent, expected, timeout=120)
    for name in ledger.slot_of:
        loads, unloads = starts_and_stops(agent.root / f"{name}.journal")
        assert loads <= ledger.loads[name], f"{name}: loaded {loads} times, asked {ledger.loads[name]}"
        assert unloads <= ledger.unloads[name], (
            f"{name}: unloaded {unloads} times, asked {ledger.unloads[name]}"
        )
        assert loads - unloads == (1 if name in ledger.live else 0), (name, loads, unloads)
    # Each action needs at most one write of the node's spec; a restart of a converged operator
    # none. A kill can at most make the next start repeat the write it was killed in.
    written = spec_writes(audit.writes())
    print(f"spec writes: {len(written)} for {len(ledger.actions)} actions and {KILL_POINTS} kills")
    assert len(written) <= len(ledger.actions) + KILL_POINTS, written
