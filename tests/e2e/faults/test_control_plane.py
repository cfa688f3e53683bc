"""Issue 13, scenarios 1 and 2, on the real control plane with a real storage-operator, a real
storage-agent, its driver hosts and real loop devices.

1. The API server goes silent (SIGSTOP: every watch stays open and delivers nothing), resumes,
   and is then killed with SIGKILL and started again, while StorageDrivers and devices change.
2. The operator's and the agent's watches fall behind (both paused) while StorageDrivers change,
   etcd's history is compacted and the API server's watch cache starts again past it: every watch
   ends with 410 Gone, both re-list, and nothing is lost or unloaded that should not be.

Each ends with issue 13's "nothing lost" (`nothing_lost.py`) and counts loads and unloads in
the probe driver's journals: a fault may delay work, never repeat it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from storage_driver_api.constants import STORAGE_DRIVERS
from storage_driver_api.kube import TRANSPORT_ERRORS, ApiError, KubeClient

from tests.e2e.faults.conftest import load_driver, pinned, sha_of, sizes, spec_writes, storage_driver
from tests.e2e.faults.nothing_lost import Expected, converged, starts_and_stops
from tests.harness import controlplane
from tests.harness.auditlog import AuditLog
from tests.harness.drivers import Agent
from tests.harness.localcluster import ClusterConfig
from tests.harness.loopdev import LoopDevice, detach
from tests.integration.operator.conftest import Operator

SILENT_SECONDS = 12  # the API server paused: long enough for work to queue up on both sides
IN_FLIGHT_SECONDS = 3  # etcd paused before the kill: longer than the agent's Lease renewal


@pytest.fixture
async def operator(cluster: ClusterConfig, test_namespace: str, tmp_path: Path) -> AsyncIterator[Operator]:
    """The faults conftest's operator, logging at DEBUG: its watches say when they re-list."""
    handle = Operator(cluster, tmp_path, "--lease-namespace", test_namespace, "--log-level", "DEBUG")
    await handle.start()
    try:
        yield handle
    finally:
        if handle.process is not None:
            handle.process.signal(signal.SIGCONT)
        handle.stop()
        print(f"--- operator log ---\n{handle.log()}")


async def watch_expired(kube: KubeClient, version: str) -> bool:
    """Whether a watch of StorageDrivers from `version` ends with 410 Gone (retrying a connection
    left from before an API server restart)."""
    for _ in range(10):
        try:
            async for _event in kube.watch(STORAGE_DRIVERS, resource_version=version, timeout_seconds=2):
                pass
            return False
        except ApiError as exc:
            return exc.gone
        except TRANSPORT_ERRORS:
            await asyncio.sleep(0.5)
    return False


async def test_the_api_server_silent_then_killed_while_drivers_and_devices_change_loses_nothing(
    clean_cluster: KubeClient,
    cluster: ClusterConfig,
    agent: Agent,
    operator: Operator,
    loop_devices: Callable[..., LoopDevice],
) -> None:
    kube = clean_cluster
    agent.start()
    source = pinned(agent)
    size = dict(zip("abcde", sizes(5), strict=True))
    trail = {n: agent.root / f"{n}.journal" for n in size}
    device = {n: loop_devices(size_bytes=size[n]) for n in "abd"}
    for name in "abd":
        await load_driver(kube, agent, device[name], trail[name], name, source=source)
    # Two whose devices are not attached yet: nothing to load.
    for name in "ce":
        await kube.create(STORAGE_DRIVERS, storage_driver(name, size[name], trail[name], source=source))

    with controlplane.restored(cluster):
        controlplane.pause(cluster)
        # While every watch is silent: a device comes, a device goes.
        device["c"] = loop_devices(size_bytes=size["c"])
        detach(device["b"])
        await asyncio.sleep(SILENT_SECONDS)
        controlplane.resume(cluster)
        # Right after: a change that reloads, and a deletion; then the API server dies before
        # the operator and agent can be sure to have acted on them.
        config_a = {"journal": str(trail["a"]), "round": 2}
        await kube.patch(STORAGE_DRIVERS, "a", {"spec": {"config": config_a}})
        await kube.delete(STORAGE_DRIVERS, "d")
        await asyncio.sleep(0.3)
        # etcd paused: the API server reads requests and answers none, so writes are in flight
        # when it dies (the agent's Lease renewal, every 2 s, among them) and end with the
        # connection closed under them.
        controlplane.pause(cluster, "etcd")
        await asyncio.sleep(IN_FLIGHT_SECONDS)
        controlplane.kill(cluster)
        controlplane.resume(cluster, "etcd")
        device["e"] = loop_devices(size_bytes=size["e"])  # while the API server is down
        await asyncio.sleep(3)
        await asyncio.to_thread(controlplane.start_missing, cluster)

    expected = Expected(
        running={n: sha_of(source) for n in "ace"},
        configs={"a": config_a, "c": {"journal": str(trail["c"])}, "e": {"journal": str(trail["e"])}},
        deleted={"d"},
        present={str(device[n].backing_file) for n in "ace"},
        absent={str(device["b"].backing_file)},
    )
    await converged(kube, agent, expected, timeout=120)
    # Each load and unload happened as often as the changes asked, no more: a reload of a,
    # one unload each of b (its device went) and d (deleted), one load each of c and e.
    counts = {n: starts_and_stops(trail[n]) for n in size}
    assert counts == {"a": (2, 1), "b": (1, 1), "c": (1, 0), "d": (1, 1), "e": (1, 0)}, counts


async def test_watches_ended_by_410_gone_relist_and_unload_nothing_spurious(
    clean_cluster: KubeClient,
    cluster: ClusterConfig,
    agent: Agent,
    operator: Operator,
    loop_devices: Callable[..., LoopDevice],
) -> None:
    kube = clean_cluster
    agent.start("--log-level", "DEBUG")
    source = pinned(agent)
    size = dict(zip("abcd", sizes(4), strict=True))
    trail = {n: agent.root / f"{n}.journal" for n in size}
    device = {n: loop_devices(size_bytes=size[n]) for n in "abd"}
    for name in "abd":
        await load_driver(kube, agent, device[name], trail[name], name, source=source)
    assert agent.process is not None and operator.process is not None
    audit = AuditLog(cluster)
    before = controlplane.etcd_revision(cluster)
    _, version = await kube.list(STORAGE_DRIVERS)

    with controlplane.restored(cluster):
        agent.process.signal(signal.SIGSTOP)
        operator.process.signal(signal.SIGSTOP)
        try:
            # Both are behind: what changes now reaches them only through a re-list.
            config_a = {"journal": str(trail["a"]), "round": 2}
            await kube.patch(STORAGE_DRIVERS, "a", {"spec": {"config": config_a}})
            await kube.delete(STORAGE_DRIVERS, "b")
            device["c"] = loop_devices(size_bytes=size["c"])
            await kube.create(STORAGE_DRIVERS, storage_driver("c", size["c"], trail["c"], source=source))
            for round_ in range(20):  # churn that changes nothing they act on
                await kube.patch(STORAGE_DRIVERS, "d", {"metadata": {"annotations": {"churn": str(round_)}}})
            compacted = controlplane.compact(cluster)
            assert compacted > before
            # A new API server's watch cache starts at etcd's revision, past every version the
            # two hold (etcd itself no longer has them): their watches can only end with 410.
            controlplane.kill(cluster)
            await asyncio.to_thread(controlplane.start_missing, cluster)
        finally:
            agent.process.signal(signal.SIGCONT)
            operator.process.signal(signal.SIGCONT)

    expected = Expected(
        running={n: sha_of(source) for n in "acd"},
        configs={"a": config_a, "c": {"journal": str(trail["c"])}, "d": {"journal": str(trail["d"])}},
        deleted={"b"},
        present={str(device[n].backing_file) for n in "acd"},
    )
    await converged(kube, agent, expected, timeout=120)
    # The history the two held was gone: a watch from before the pause ends with 410 Gone, as
    # the operator's did (its caches re-listed). The agent lists again after any failed watch
    # (the restart broke its streams), so it never asks for the lost versions.
    assert await watch_expired(kube, version), "a watch from before the compaction did not end with 410"
    assert "watch expired; re-listing" in operator.process.log(1_000_000), "no operator watch saw 410 Gone"
    assert "list/watch failed; retrying" in agent.log(100_000)
    # No spurious unload: d, untouched, was never stopped; a stopped once (its reload); b once.
    counts = {n: starts_and_stops(trail[n]) for n in size}
    assert counts == {"a": (2, 1), "b": (1, 1), "c": (1, 0), "d": (1, 0)}, counts
    # The re-lists wrote only what the changes needed: a's new config, b's removal, c's addition
    # (in at most one write each; none of them is a write that changes nothing).
    written = spec_writes(audit.writes())
    assert len(written) <= 3, written
