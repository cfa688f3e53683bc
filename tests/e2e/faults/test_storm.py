"""Scenario 7: a storm of 1,000 attach/detach uevents on real loop devices, against a real agent
publishing to the real API server with the real operator planning the node.

One device stays attached all along, so the driver stays loaded; four more devices are detached
and attached again, as fast as `losetup` goes, about 250 times each, and end half attached, half
detached. The StorageDriver matches all five. What must hold: the driver is loaded once and never
restarted; every write the agent and the operator made changed something (the API server's audit
log counts the writes, a watch sees the changes); the writes are bounded by the changes the
storm made; the agent's memory is about what it was before; and the final state (NodeDevices
present or not, the node's spec, the driver's bound devices) is right soon after the storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from storage_driver_agent.devices.diff import present_condition
from storage_driver_api.constants import (
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import KubeClient, Resource

from tests.conftest import require
from tests.e2e.drivers.test_agent import driver
from tests.e2e.faults.conftest import storage_driver, unique_size
from tests.harness import localcluster
from tests.harness.auditlog import AuditLog, Write
from tests.harness.drivers import Agent, journal
from tests.harness.loopdev import loop_devices_available
from tests.harness.waiting import eventually
from tests.integration.operator.conftest import Operator

NAME = "storm"
STORM_DEVICES = 4
CYCLES = 125  # detach + attach per device and cycle: 4 * 125 * 2 = 1,000 changes, each a uevent
MIB = 2**20
MEMORY_GROWTH_LIMIT = 16 * MIB  # the agent's unique memory may grow this much over the storm, at most


# --- our own loop devices -------------------------------------------------------------------------


@dataclass
class Loop:
    """A loop device of ours: attached to `backing` by us, detached by us, only while it is ours."""

    backing: Path
    path: Path | None = None  # /dev/loopN while attached
    changes: int = 0  # attaches and detaches done by the storm

    @property
    def kernel_name(self) -> str:
        assert self.path is not None
        return self.path.name

    def ours(self) -> bool:
        if self.path is None:
            return False
        link = Path(f"/sys/block/{self.path.name}/loop/backing_file")
        with contextlib.suppress(OSError):
            return link.read_text().strip() == str(self.backing)
        return False

    def attach(self, path: Path | None = None) -> None:
        """Attach again at the same device when it is still free (the same NodeDevice), else at
        a free one (another engineer on this machine may have taken ours meanwhile)."""
        if path is not None:
            done = subprocess.run(["losetup", str(path), str(self.backing)], capture_output=True)
            if done.returncode == 0:
                self.path = path
                return
        out = subprocess.run(
            ["losetup", "--find", "--show", str(self.backing)], capture_output=True, text=True, check=True
        )
        self.path = Path(out.stdout.strip())

    def detach(self) -> bool:
        """Detach the device if it is attached and ours; whether it was."""
        if not self.ours():
            return False
        subprocess.run(["losetup", "--detach", str(self.path)], capture_output=True, check=True)
        return True


def make_loops(directory: Path) -> list[Loop]:
    """1 + STORM_DEVICES loop devices to be, with backing files of one size nobody else uses."""
    size = unique_size()
    made = []
    for index in range(1 + STORM_DEVICES):
        backing = directory / f"storm-{index}.img"
        with backing.open("wb") as handle:
            handle.truncate(size)
        made.append(Loop(backing))
    return made


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[list[Loop]]:
    require(loop_devices_available())
    made = make_loops(tmp_path)
    try:
        yield made
    finally:
        for loop in made:
            loop.detach()


def storm(devices: list[Loop]) -> int:
    """Detach and attach each device CYCLES times, then detach the second half once more: the
    first half ends attached, the second detached. The number of attaches and detaches done."""
    homes = {id(d): d.path for d in devices}
    before = sum(d.changes for d in devices)
    for _ in range(CYCLES):
        for device in devices:
            device.changes += device.detach()
            device.attach(homes[id(device)])
            device.changes += 1
    for device in devices[len(devices) // 2 :]:
        device.changes += device.detach()
    return sum(d.changes for d in devices) - before


# --- what the API server saw ---------------------------------------------------------------------


@dataclass
class Changes:
    """Events of a watch per object name: each write that changed an object makes exactly one."""

    counts: Counter[str] = field(default_factory=Counter)


async def count_changes(
    kube: KubeClient, res: Resource, changes: Changes, ready: asyncio.Event, **sel: str
) -> None:
    _, version = await kube.list(res, **sel)  # type: ignore[arg-type]
    ready.set()
    while True:
        async for event in kube.watch(res, resource_version=version, **sel):  # type: ignore[arg-type]
            version = event.object["metadata"].get("resourceVersion", version)
            if event.type != "BOOKMARK":
                changes.counts[event.object["metadata"]["name"]] += 1


def unique_memory(pid: int) -> int:
    """Bytes only this process holds (USS): its private pages."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Private_Clean", "Private_Dirty"):
            total += int(rest.split()[0]) * 1024
    return total


async def node_devices(kube: KubeClient, node: str) -> dict[str, dict[str, Any]]:
    items, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={node_label_value(node)}")
    return {item["metadata"]["name"]: item for item in items}


def by_backing(objects: dict[str, dict[str, Any]], backing: Path) -> dict[str, dict[str, Any]]:
    return {n: o for n, o in objects.items() if o["spec"].get("backingFile") == str(backing)}


def present(obj: dict[str, Any]) -> bool:
    condition = present_condition(obj)
    return condition is not None and condition.status == "True"


async def published(kube: KubeClient, node: str, loops: list[Loop]) -> dict[str, str] | None:
    """NodeDevice name -> backing file of every attached device of ours, once each is published
    present and each detached one absent; None until then."""
    objects = await node_devices(kube, node)
    names = {}
    for loop in loops:
        mine = by_backing(objects, loop.backing)
        live = [n for n, o in mine.items() if present(o)]
        if not loop.ours():
            if live:
                return None
            continue
        at = [n for n in live if mine[n]["spec"].get("kernelName") == loop.kernel_name]
        if len(live) != 1 or len(at) != 1:
            return None
        names[at[0]] = str(loop.backing)
    return names


async def spec_devices(kube: KubeClient, node: str) -> list[str] | None:
    config = await kube.get_or_none(NODE_DRIVER_CONFIGS, node)
    for entry in ((config or {}).get("spec") or {}).get("drivers") or []:
        if entry["name"] == NAME:
            return sorted(entry.get("devices") or [])
    return None


async def converged(kube: KubeClient, node: str, loops: list[Loop]) -> dict[str, Any] | None:
    """The driver's status entry, once the NodeDevices, the spec and the bound devices all say
    exactly which of our devices are attached."""
    names = await published(kube, node, loops)
    if names is None or await spec_devices(kube, node) != sorted(names):
        return None
    entry = await driver(kube, node, NAME)
    if not entry or entry["phase"] != "Loaded" or sorted(entry.get("boundDevices") or []) != sorted(names):
        return None
    return {**entry, "devices": names}


def successful(writes: list[Write], resource: str, names: set[str]) -> Counter[str]:
    return Counter(
        w.name for w in writes if w.succeeded and w.resource.split("/")[0] == resource and w.name in names
    )


@dataclass
class StormRun:
    """One storm and what it cost: the agent's and the operator's writes, the changes a watch
    saw, the agent's memory, and the time the node took to show the final state."""

    changes: int  # attaches and detaches
    storm_seconds: float
    settle_seconds: float
    writes: list[Write]
    device_changes: Changes
    config_changes: Changes
    memory_before: int
    memory_after: int
    after: dict[str, Any]


async def run_storm(
    kube: KubeClient, cluster: localcluster.ClusterConfig, agent: Agent, loops: list[Loop]
) -> StormRun:
    """Storm the devices after the first (which stays attached) once the node has converged;
    returns once it has converged again."""
    storming = loops[1:]
    device_changes, config_changes = Changes(), Changes()
    watching = [asyncio.Event(), asyncio.Event()]
    followers = [
        asyncio.create_task(
            count_changes(
                kube,
                NODE_DEVICES,
                device_changes,
                watching[0],
                label_selector=f"{NODE_LABEL}={node_label_value(agent.node)}",
            )
        ),
        asyncio.create_task(
            count_changes(
                kube,
                NODE_DRIVER_CONFIGS,
                config_changes,
                watching[1],
                field_selector=f"metadata.name={agent.node}",
            )
        ),
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in watching)), 30)
        assert agent.process is not None
        memory_before = unique_memory(agent.process.pid)
        audit = AuditLog(cluster)
        uevents_start = time.monotonic()
        changes = await asyncio.to_thread(storm, storming)
        storm_end = time.monotonic()
        after = await eventually(
            lambda: converged(kube, agent.node, loops), timeout=60, what="the final state after the storm"
        )
        settled = time.monotonic() - storm_end
        await asyncio.sleep(2)  # let late writes (there should be none) reach the audit log
        memory_after = unique_memory(agent.process.pid)
        writes = audit.writes()
    finally:
        for task in followers:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*followers)

    assert after is not None
    return StormRun(
        changes,
        storm_end - uevents_start,
        settled,
        writes,
        device_changes,
        config_changes,
        memory_before,
        memory_after,
        after,
    )


# --- the test ------------------------------------------------------------------------------------


async def test_a_storm_of_attach_and_detach_uevents_loads_nothing_twice_and_writes_only_changes(
    cluster: localcluster.ClusterConfig,
    clean_cluster: KubeClient,
    agent: Agent,
    operator: Operator,
    loops: list[Loop],
) -> None:
    kube = clean_cluster
    agent.start()
    for loop in loops:
        loop.attach()
    trail = agent.root / "probe.journal"
    size = loops[0].backing.stat().st_size
    await kube.create(STORAGE_DRIVERS, storage_driver(NAME, size, trail))
    before = await eventually(lambda: converged(kube, agent.node, loops), timeout=90, what="all five bound")
    assert before is not None and len(before["devices"]) == 1 + STORM_DEVICES

    stable = loops[0]
    run = await run_storm(kube, cluster, agent, loops)
    changes, writes, after = run.changes, run.writes, run.after
    device_changes, config_changes = run.device_changes, run.config_changes
    memory_before, memory_after = run.memory_before, run.memory_after

    objects = await node_devices(kube, agent.node)
    ours = {n for loop in loops for n in by_backing(objects, loop.backing)}
    stable_names = set(by_backing(objects, stable.backing))
    device_writes = successful(writes, "nodedevices", ours)
    config_spec = [
        w for w in writes if w.succeeded and w.resource == "nodedriverconfigs" and w.name == agent.node
    ]
    config_status = [
        w for w in writes if w.succeeded and w.resource == "nodedriverconfigs/status" and w.name == agent.node
    ]
    print(
        f"storm: {changes} attaches/detaches in {run.storm_seconds:.1f} s; final state "
        f"{run.settle_seconds:.2f} s after; NodeDevice writes {sum(device_writes.values())}, node spec writes "
        f"{len(config_spec)}, node status writes {len(config_status)}; agent USS "
        f"{memory_before / MIB:.1f} -> {memory_after / MIB:.1f} MiB"
    )
    assert changes >= 1000

    # No extra load: the one host that ran before the storm still runs, and started once.
    assert after["pid"] == before["pid"] and after.get("restarts", 0) == before.get("restarts", 0)
    calls = journal(trail)
    assert [c["event"] for c in calls].count("start") == 1, calls[:5]
    assert "stop" not in [c["event"] for c in calls]
    # Each device was attached to the driver and detached from it in turn, never twice in a row.
    last: dict[str, str] = {}
    for call in calls:
        if call["event"] in ("attach", "detach"):
            assert last.get(call["device"]) != call["event"], f"{call['event']} twice in a row: {call}"
            last[call["device"]] = call["event"]
    bindings = sum(1 for c in calls if c["event"] in ("attach", "detach"))
    assert bindings <= (1 + STORM_DEVICES) + changes

    # Every write changed something (a watch saw it), and the writes are bounded by the changes.
    for name, count in device_writes.items():
        assert count <= device_changes.counts[name], (
            f"{name}: {count} writes, {device_changes.counts[name]} changes"
        )
    assert not stable_names & set(device_writes), "the device that stayed attached was written"
    assert sum(device_writes.values()) <= changes
    assert len(config_spec) + len(config_status) <= config_changes.counts[agent.node]
    assert len(config_spec) <= changes and len(config_status) <= changes

    # Memory bounded: what the storm passed through the agent did not stay in it.
    assert memory_after - memory_before < MEMORY_GROWTH_LIMIT, (memory_before, memory_after)
