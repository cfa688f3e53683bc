"""Operator failover: from SIGKILL (or SIGTERM) of the leader to the other replica leading, and
to its first plan done (`ready`), for a converged cluster (it must write nothing).

    python -m tests.bench failover [--write]

Two real storage-operator replicas (tests/harness/replicas.py: Lease duration 6 s, renew deadline
4 s, retry 1 s; the chart's defaults are 15 s, 10 s, 2 s) against the local control plane, with
one simulated node, one NodeDevice and one StorageDriver already converged. Each round kills the
leader (then, as many rounds, stops it with SIGTERM), times the handover, then starts the
replica again as the next follower.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from storage_driver_api.constants import (
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import NAMESPACES, NODES, KubeClient, load_kubeconfig

from tests.api_cases import apply_changes, valid_storage_driver
from tests.bench.oncluster import run_on_local_cluster
from tests.bench.table import Table, percentile
from tests.conftest import apply_crds, kubectl
from tests.harness import localcluster
from tests.harness.replicas import LEASE_DURATION, Replica, start_replica, wait_for_leader

ROUNDS = 5
NAMESPACE = "sdo-bench-failover"
NODE = "failover-node"
DRIVER = "failover"


def s(seconds: float) -> str:
    return f"{seconds:.1f} s"


async def remove(kube: KubeClient) -> None:
    """What the benchmark creates, so that it leaves the cluster as it found it."""
    for res, name in (
        (STORAGE_DRIVERS, DRIVER),
        (NODE_DRIVER_CONFIGS, NODE),
        (NODE_DEVICES, f"{NODE}-0123456789"),
    ):
        obj = await kube.get_or_none(res, name)
        if obj and obj["metadata"].get("finalizers"):
            await kube.patch(res, name, {"metadata": {"finalizers": None}})
        await kube.delete(res, name)
    await kube.delete(NODES, NODE)


async def converge(kube: KubeClient) -> None:
    await remove(kube)
    await localcluster.ensure_node(kube, NODE, localcluster.local_node_info())
    await kube.create(
        NODE_DEVICES,
        {
            "apiVersion": NODE_DEVICES.api_version,
            "kind": NODE_DEVICES.kind,
            "metadata": {"name": f"{NODE}-0123456789", "labels": {NODE_LABEL: node_label_value(NODE)}},
            "spec": {
                "nodeName": NODE,
                "type": "loop",
                "identity": {"kind": "virtual", "value": "x"},
                "kernelName": "loop9",
                "sysPath": "/sys/devices/virtual/block/loop9",
            },
        },
    )
    await kube.create(
        NODE_DRIVER_CONFIGS,
        {
            "apiVersion": NODE_DRIVER_CONFIGS.api_version,
            "kind": NODE_DRIVER_CONFIGS.kind,
            "metadata": {"name": NODE},
        },
    )
    available = [{"file": f"{DRIVER}.py", "sha256": "a" * 64, "driverName": DRIVER, "version": "1.1.0"}]
    await kube.patch(NODE_DRIVER_CONFIGS, NODE, {"status": {"available": available}}, subresource="status")
    body = valid_storage_driver()
    body["metadata"] = {"name": DRIVER}
    body["spec"] = apply_changes(
        body["spec"],
        {
            "driverName": DRIVER,
            "supportedDevices": ["loop"],
            "deviceSelector": [],
            "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": NODE}},
            "source": {"hostPath": {"path": f"{DRIVER}.py"}},
        },
    )
    await kube.create(STORAGE_DRIVERS, body)


async def wait_ready(replica: Replica, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while (writes := replica.ready_writes()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{replica.identity} never planned:\n{replica.process.log()}")
        await asyncio.sleep(0.05)
    return writes


async def measure(cfg: localcluster.ClusterConfig, work: Path) -> list[Table]:
    handovers: dict[str, list[float]] = {"SIGKILL": [], "SIGTERM": []}
    readies: dict[str, list[float]] = {"SIGKILL": [], "SIGTERM": []}
    writes: list[int] = []
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as kube:
        await converge(kube)
        replicas = [start_replica(f"bench-{i}", cfg.kubeconfig, NAMESPACE, work) for i in range(2)]
        started = len(replicas)
        try:
            leader = wait_for_leader(replicas)
            await wait_ready(leader)
            await asyncio.sleep(3)  # statuses settle: converged
            for how in ("SIGKILL", "SIGTERM"):
                for _ in range(ROUNDS):
                    (follower,) = [r for r in replicas if r is not leader]
                    ended = time.monotonic()
                    # SIGTERM is a rolling update: the leader releases the Lease as it stops.
                    if how == "SIGKILL":
                        leader.process.kill()
                    else:
                        leader.process.stop()
                    wait_for_leader([follower], timeout=LEASE_DURATION + 30)
                    handovers[how].append(time.monotonic() - ended)
                    writes.append(await wait_ready(follower))
                    readies[how].append(time.monotonic() - ended)
                    replicas.remove(leader)
                    replicas.append(start_replica(f"bench-{started}", cfg.kubeconfig, NAMESPACE, work))
                    started += 1
                    leader = follower
                    await asyncio.sleep(2)
        finally:
            for replica in replicas:
                replica.process.stop()
            await remove(kube)
            await kube.delete(NAMESPACES, NAMESPACE)
    table = Table(
        "Failover: the leader replica killed (SIGKILL) or stopped (SIGTERM, as a rolling update does)",
        ["", "median", "max"],
        command="python -m tests.bench failover",
        notes=(
            f"{ROUNDS} rounds each; Lease duration {LEASE_DURATION:.0f} s (the chart's default is 15 s: add "
            "the difference after SIGKILL). The new leader's first plan wrote "
            f"{sum(writes)} spec(s) in total over the rounds (a converged cluster: 0 expected)."
        ),
    )
    for how in ("SIGKILL", "SIGTERM"):
        table.add(
            f"{how}: to the other replica leading", s(percentile(handovers[how], 50)), s(max(handovers[how]))
        )
        table.add(
            f"{how}: to its first plan done (ready)", s(percentile(readies[how], 50)), s(max(readies[how]))
        )
    return [table]


def prepare(cfg: localcluster.ClusterConfig) -> None:
    apply_crds(cfg)
    kubectl(cfg, "create", "namespace", NAMESPACE, check=False)


def run() -> list[Table]:
    return run_on_local_cluster("failover", measure, prepare=prepare)
