"""Scenario 7's uevent storm, timed: how long after 1,000 attaches and detaches of loop devices
the node shows the final state, and what the storm cost in writes and memory.

    python -m tests.bench storm [--write]

The same setup as `tests/e2e/faults/test_storm.py` (whose run_storm() does the work): a real
storage-agent for a simulated Node and a real storage-operator, five loop devices of the
benchmark's own (one stays attached, four are detached and attached again), the probe driver
matching all five. The storm runs ROUNDS times on the same processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from storage_driver_api.constants import LEASE_NAMESPACE_DEFAULT, STORAGE_DRIVERS
from storage_driver_api.kube import NAMESPACES, NODES, KubeClient, load_kubeconfig

from tests.bench.bench_operator import create_node
from tests.bench.oncluster import run_on_local_cluster
from tests.bench.table import Table
from tests.e2e.faults.conftest import storage_driver
from tests.e2e.faults.test_storm import MIB, NAME, converged, make_loops, run_storm
from tests.harness import localcluster
from tests.harness.drivers import Agent, short_tmpdir, write_probe
from tests.harness.waiting import eventually
from tests.integration.operator.conftest import Operator

ROUNDS = 3
NODE = "bench-storm-node"


async def measure(cfg: localcluster.ClusterConfig, work: Path) -> list[Table]:
    table = Table(
        "A storm of 1,000 loop-device attaches and detaches",
        [
            "round",
            "attaches + detaches",
            "storm (s)",
            "final state after (s)",
            "NodeDevice writes",
            "node spec writes",
            "node status writes",
            "agent USS before / after (MiB)",
        ],
        command="python -m tests.bench storm",
        notes="One driver matching five loop devices stays loaded throughout; the storm detaches "
        "and attaches four of them (ending two attached, two detached). 'Final state after' runs "
        "from the storm's last `losetup` to the NodeDevices, the node's spec and the driver's "
        "bound devices all being right (polled every 0.1 s). Writes are those the API server's "
        f"audit log shows for the benchmark's objects. Load average at the start: {os.getloadavg()[0]:.1f}.",
    )
    loops = make_loops(work)
    size = loops[0].backing.stat().st_size
    agent = Agent(NODE, cfg.kubeconfig, LEASE_NAMESPACE_DEFAULT, short_tmpdir("sdo-bench-storm-"))
    write_probe(agent.driver_dir)
    operator = Operator(cfg, work, "--lease-namespace", LEASE_NAMESPACE_DEFAULT)
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as kube:
        if await kube.get_or_none(NAMESPACES, LEASE_NAMESPACE_DEFAULT) is None:
            await kube.create(
                NAMESPACES,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEASE_NAMESPACE_DEFAULT}},
            )
        await create_node(kube, NODE)  # with a Lease that the agent then renews
        try:
            await operator.start()
            agent.start()
            for loop in loops:
                loop.attach()
            await kube.create(STORAGE_DRIVERS, storage_driver(NAME, size, agent.root / "probe.journal"))
            await eventually(lambda: converged(kube, NODE, loops), timeout=90, what="all five bound")
            for round_ in range(1, ROUNDS + 1):
                run = await run_storm(kube, cfg, agent, loops)
                ours = {w.name for w in run.writes if w.resource.startswith("nodedevices")}
                table.add(
                    round_,
                    run.changes,
                    f"{run.storm_seconds:.1f}",
                    f"{run.settle_seconds:.2f}",
                    sum(
                        1
                        for w in run.writes
                        if w.succeeded and w.name in ours and w.resource.startswith("nodedevices")
                    ),
                    sum(
                        1
                        for w in run.writes
                        if w.succeeded and w.resource == "nodedriverconfigs" and w.name == NODE
                    ),
                    sum(
                        1
                        for w in run.writes
                        if w.succeeded and w.resource == "nodedriverconfigs/status" and w.name == NODE
                    ),
                    f"{run.memory_before / MIB:.1f} / {run.memory_after / MIB:.1f}",
                )
                # The next round starts from all five attached and bound again.
                for loop in loops[1:]:
                    if not loop.ours():
                        loop.attach(loop.path)
                await eventually(
                    lambda: converged(kube, NODE, loops), timeout=60, what="all five bound again"
                )
        finally:
            # Deleted while the operator and the agent still run, so that its finalizer goes.
            await kube.delete(STORAGE_DRIVERS, NAME)
            with contextlib.suppress(AssertionError):
                await eventually(lambda: gone(kube), timeout=60, what=f"StorageDriver {NAME} deleted")
            agent.cleanup()
            operator.stop()
            for loop in loops:
                loop.detach()
            await kube.delete(NODES, NODE)
            shutil.rmtree(agent.root, ignore_errors=True)
    return [table]


async def gone(kube: KubeClient) -> bool:
    return await kube.get_or_none(STORAGE_DRIVERS, NAME) is None


def run() -> list[Table]:
    return run_on_local_cluster("storm", measure, loop_devices=True)
