"""Fixtures of the fault tests: a simulated Node, a real storage-agent for it with the probe
driver in its driver directory, a real storage-operator that reads the agent's Lease, and mount
points that are unmounted after the test."""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from storage_driver_api.constants import NODE_DRIVER_CONFIGS, STORAGE_DRIVERS
from storage_driver_api.kube import EVENTS, KubeClient

from tests.e2e.drivers.test_agent import driver, published_device
from tests.harness.auditlog import Write
from tests.harness.drivers import Agent, short_tmpdir, write_probe
from tests.harness.localcluster import ClusterConfig
from tests.harness.loopdev import LoopDevice, unmount
from tests.harness.waiting import eventually
from tests.integration.operator.conftest import Operator

NODE = "fault-node"


@pytest.fixture
async def node(make_node: Callable[..., Any]) -> str:
    await make_node(NODE)
    return NODE


@pytest.fixture
def agent(cluster: ClusterConfig, node: str, test_namespace: str) -> Iterator[Agent]:
    runner = Agent(node, cluster.kubeconfig, test_namespace, short_tmpdir("sdo-fault-"))
    write_probe(runner.driver_dir)
    yield runner
    runner.cleanup()
    print(f"--- agent log ---\n{runner.log(200)}")
    shutil.rmtree(runner.root, ignore_errors=True)


@pytest.fixture
async def operator(cluster: ClusterConfig, test_namespace: str, tmp_path: Path) -> AsyncIterator[Operator]:
    # The agent's Lease lives in the test namespace: the operator must read it there, or it
    # takes the agent for gone and releases a deletion's finalizer at once.
    handle = Operator(cluster, tmp_path, "--lease-namespace", test_namespace)
    await handle.start()
    try:
        yield handle
    finally:
        handle.stop()
        print(f"--- operator log ---\n{handle.log()}")


@pytest.fixture
def mounts(loop_devices: Callable[..., LoopDevice]) -> Iterator[list[Path]]:
    """Mount points to unmount after the test (before the loop devices are detached)."""
    points: list[Path] = []
    yield points
    for point in points:
        unmount(point)


# --- helpers -------------------------------------------------------------------------------------


def unique_size() -> int:
    """A loop device size nobody else on this shared machine uses: a selector on it matches only
    the test's device."""
    return 6 * 2**20 + random.randrange(1, 1024) * 4096


def sizes(count: int) -> list[int]:
    found: set[int] = set()
    while len(found) < count:
        found.add(unique_size())
    return sorted(found)


def pinned(agent: Agent) -> dict[str, Any]:
    """The probe driver's source with its sha256 pinned, as a careful user writes it."""
    sha = hashlib.sha256((agent.driver_dir / "probe.py").read_bytes()).hexdigest()
    return {"hostPath": {"path": "probe.py", "sha256": sha}}


def sha_of(source: dict[str, Any]) -> str:
    return str(source["hostPath"]["sha256"])


def spec_writes(writes: list[Write]) -> list[Write]:
    """Successful writes of NodeDriverConfig specs (only the operator writes them)."""
    return [
        w
        for w in writes
        if w.resource == "nodedriverconfigs" and w.verb in ("update", "patch") and w.succeeded
    ]


def storage_driver(name: str, size: int, journal_path: Path, **spec: Any) -> dict[str, Any]:
    """The probe driver for the loop device of `size`, recording its calls in `journal_path`."""
    return {
        "apiVersion": "storage.datawarehouse.io/v1alpha1",
        "kind": "StorageDriver",
        "metadata": {"name": name},
        "spec": {
            "driverName": "Probe Driver",
            "version": "1.0.0",
            "supportedDevices": ["loop"],
            "deviceSelector": [{"key": "sizeBytes", "operator": "In", "values": [str(size)]}],
            "source": {"hostPath": {"path": "probe.py"}},
            "config": {"journal": str(journal_path)},
            "unloadDelaySeconds": 0,
            **spec,
        },
    }


async def load_driver(
    kube: KubeClient, agent: Agent, device: LoopDevice, trail: Path, name: str, **spec: Any
) -> tuple[str, dict[str, Any]]:
    """Create the StorageDriver for `device` and wait until the (running) agent has it Loaded with
    the device bound; the NodeDevice's name and the driver's status entry."""
    published = await published_device(kube, agent.node, device)
    await kube.create(STORAGE_DRIVERS, storage_driver(name, device.size_bytes, trail, **spec))

    async def bound() -> dict[str, Any] | None:
        entry = await driver(kube, agent.node, name)
        ok = entry and entry["phase"] == "Loaded" and entry.get("boundDevices") == [published]
        return entry if ok else None

    entry = await eventually(bound, timeout=60, what=f"{name} Loaded with {published} bound")
    assert entry is not None
    return published, entry


EVENT_SUBJECTS: dict[str, Any] = {"NodeDriverConfig": NODE_DRIVER_CONFIGS, "StorageDriver": STORAGE_DRIVERS}


async def events_about(kube: KubeClient, kind: str, name: str) -> list[tuple[str, str]]:
    """The (reason, message) of the Events about the object of that kind and name as it is now:
    an Event naming another uid is about an earlier object of the same name (Events stay an
    hour) and does not count."""
    obj = await kube.get_or_none(EVENT_SUBJECTS[kind], name)
    uid = (obj or {}).get("metadata", {}).get("uid")
    items, _ = await kube.list(EVENTS, namespace="default")
    return [
        (e["reason"], e.get("message", ""))
        for e in items
        if (subject := e.get("involvedObject") or {}).get("kind") == kind
        and subject.get("name") == name
        and subject.get("uid") in (None, uid)
    ]


async def event(kube: KubeClient, kind: str, name: str, reason: str, text: str) -> bool:
    return any(r == reason and text in m for r, m in await events_about(kube, kind, name))


async def condition(kube: KubeClient, resource: Any, name: str, type_: str) -> dict[str, Any]:
    """One condition of an object's status; empty when the object or the condition is missing."""
    obj = await kube.get_or_none(resource, name)
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == type_:
            return dict(item)
    return {}
