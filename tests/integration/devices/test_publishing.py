"""The device part of the agent against the real API server, with real loop devices and real
kernel uevents: reconcile on start, hot-plug, retention, event storms, an API outage.

The agent runs in-process for a simulated Node, so that it publishes this machine's devices
under a node name no other test uses; assertions name only the loop devices the test attached
(other developers attach loop devices on this machine too) and the machine's own disks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from storage_driver_agent.devices.diff import present_condition
from storage_driver_agent.devices.filters import DeviceFilter
from storage_driver_agent.devices.options import Options
from storage_driver_agent.devices.service import DeviceAgent
from storage_driver_api.constants import DEVICE_TYPE_LABEL, MANAGED_BY_LABEL, NODE_DEVICES, NODE_LABEL
from storage_driver_api.kube import KubeClient, load_kubeconfig

from tests.harness import localcluster
from tests.harness.loopdev import LoopDevice
from tests.harness.waiting import consistently, eventually

Obj = dict[str, Any]
MiB = 1024 * 1024
FAST = Options(coalesce_window=0.02, resync_interval=300.0, retention=600.0)


@contextlib.asynccontextmanager
async def running_agent(
    cluster: localcluster.ClusterConfig, node: str, options: Options = FAST
) -> AsyncIterator[DeviceAgent]:
    """The device part of storage-agent, with its own API client, until the block ends."""
    async with KubeClient(load_kubeconfig(cluster.kubeconfig)) as client:
        agent = DeviceAgent(node, options, client)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            yield agent
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def objects_of(kube: KubeClient, node: str) -> list[Obj]:
    items, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={node}")
    return items


async def object_for(kube: KubeClient, node: str, loop: LoopDevice) -> Obj | None:
    """The NodeDevice of one of our loop devices (by its backing file, unique to the test)."""
    for obj in await objects_of(kube, node):
        if obj["spec"].get("backingFile") == str(loop.backing_file):
            return obj
    return None


def present(obj: Obj | None) -> bool | None:
    if obj is None:
        return None
    condition = present_condition(obj)
    return None if condition is None else condition.status == "True"


async def until_present(kube: KubeClient, node: str, loop: LoopDevice, state: bool = True) -> Obj:
    async def probe() -> Obj | None:
        obj = await object_for(kube, node, loop)
        return obj if present(obj) is state else None

    result = await eventually(probe, timeout=60, what=f"{loop.name} to be Present={state} on {node}")
    assert result is not None
    return result


def machine_disks() -> list[str]:
    return sorted(p.name for p in Path("/sys/class/block").glob("vd*") if not p.name[-1].isdigit())


def detach(loop: LoopDevice) -> None:
    subprocess.run(["losetup", "--detach", str(loop.path)], check=True)


async def test_hotplug_publishes_then_marks_absent_then_deletes_after_retention(
    cluster: localcluster.ClusterConfig,
    kube: KubeClient,
    make_node: Callable[..., Any],
    loop_devices: Callable[..., LoopDevice],
) -> None:
    node = await make_node("devices-hotplug")
    async with running_agent(cluster, "devices-hotplug", replace(FAST, retention=3.0)):
        loop = loop_devices(size_bytes=8 * MiB)
        obj = await until_present(kube, "devices-hotplug", loop)
        assert obj["spec"]["type"] == "loop"
        assert obj["spec"]["sizeBytes"] == 8 * MiB
        assert obj["spec"]["kernelName"] == loop.name
        assert obj["spec"]["nodeName"] == "devices-hotplug"
        assert obj["metadata"]["labels"] == {
            NODE_LABEL: "devices-hotplug",
            DEVICE_TYPE_LABEL: "loop",
            MANAGED_BY_LABEL: "storage-agent",
        }
        assert obj["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Node", "name": "devices-hotplug", "uid": node["metadata"]["uid"]}
        ]
        detach(loop)
        gone = await until_present(kube, "devices-hotplug", loop, state=False)
        assert gone["metadata"]["uid"] == obj["metadata"]["uid"]
        condition = present_condition(gone)
        assert condition is not None and condition.reason == "Removed"
        await eventually(
            lambda: _absent(kube, gone["metadata"]["name"]),
            timeout=60,
            what="the NodeDevice to be deleted after the 3s retention",
        )


async def _absent(kube: KubeClient, name: str) -> bool:
    return await kube.get_or_none(NODE_DEVICES, name) is None


async def test_on_start_unchanged_objects_are_not_written_changed_ones_patched_gone_ones_marked_absent(
    cluster: localcluster.ClusterConfig,
    kube: KubeClient,
    make_node: Callable[..., Any],
    loop_devices: Callable[..., LoopDevice],
) -> None:
    node = "devices-restart"
    await make_node(node)
    loop = loop_devices(size_bytes=4 * MiB)
    async with running_agent(cluster, node) as agent:
        published = await until_present(kube, node, loop)
        await eventually(lambda: _settled(agent), what="the first agent to settle")
    disks = {
        o["spec"]["kernelName"]: o
        for o in await objects_of(kube, node)
        if o["spec"]["kernelName"] in machine_disks()
    }
    assert sorted(disks) == machine_disks()
    # While the agent is down: someone changes a field the agent owns, the driver runtime binds
    # a driver, and a NodeDevice exists for a device this node no longer has.
    name = published["metadata"]["name"]
    await kube.patch(NODE_DEVICES, name, {"spec": {"sizeBytes": 1, "model": "tampered"}})
    await kube.patch(NODE_DEVICES, name, {"status": {"boundDrivers": ["loop-info"]}}, subresource="status")
    ghost_spec = dict(published["spec"])
    ghost_spec.update(
        identity={"kind": "virtual", "value": f"{node}/loop99//gone.img"},
        kernelName="loop99",
        backingFile="/gone.img",
    )
    ghost = await kube.create(
        NODE_DEVICES,
        {
            "apiVersion": NODE_DEVICES.api_version,
            "kind": "NodeDevice",
            "metadata": {"name": f"{node}-ghost", "labels": published["metadata"]["labels"]},
            "spec": ghost_spec,
        },
    )
    await kube.patch(
        NODE_DEVICES, ghost["metadata"]["name"], {"status": published["status"]}, subresource="status"
    )
    before = {o["metadata"]["name"]: o for o in await objects_of(kube, node)}

    async with running_agent(cluster, node) as agent:
        await eventually(lambda: _settled(agent), what="the second agent to settle")
        after = {o["metadata"]["name"]: o for o in await objects_of(kube, node)}

    # Nothing deleted and recreated.
    for obj_name, obj in before.items():
        assert after[obj_name]["metadata"]["uid"] == obj["metadata"]["uid"], obj_name
    # Unchanged devices: not written at all.
    for disk in disks.values():
        disk_name = disk["metadata"]["name"]
        assert (
            after[disk_name]["metadata"]["resourceVersion"]
            == before[disk_name]["metadata"]["resourceVersion"]
        )
    # Changed: patched back, only the agent's fields; the driver runtime's field kept.
    fixed = after[name]
    assert fixed["spec"]["sizeBytes"] == 4 * MiB and "model" not in fixed["spec"]
    assert fixed["status"]["boundDrivers"] == ["loop-info"]
    assert present(fixed) is True
    # Gone: marked absent, not deleted (retention).
    assert present(after[f"{node}-ghost"]) is False


async def _settled(agent: DeviceAgent) -> bool:
    return not agent.dirty and agent.published is not None


@contextlib.asynccontextmanager
async def agent_with_one_loop_device(
    cluster: localcluster.ClusterConfig,
    kube: KubeClient,
    make_node: Callable[..., Any],
    loop_devices: Callable[..., LoopDevice],
    node: str,
) -> AsyncIterator[tuple[DeviceAgent, LoopDevice, Obj]]:
    """An agent for a new Node that publishes only one new loop device: (agent, device, its
    NodeDevice), once the agent has settled."""
    await make_node(node)
    loop = loop_devices(size_bytes=4 * MiB)
    only_ours = replace(FAST, filter=DeviceFilter(include_paths=(str(loop.path),)))
    async with running_agent(cluster, node, only_ours) as agent:
        obj = await until_present(kube, node, loop)
        await eventually(lambda: _settled(agent), what="the agent to settle")
        yield agent, loop, obj


async def test_an_event_storm_writes_nothing_and_a_real_change_writes_once(
    cluster: localcluster.ClusterConfig,
    kube: KubeClient,
    make_node: Callable[..., Any],
    loop_devices: Callable[..., LoopDevice],
) -> None:
    node = "devices-storm"
    async with agent_with_one_loop_device(cluster, kube, make_node, loop_devices, node) as (agent, loop, obj):
        writes, seen = agent.publisher.writes, agent.uevents
        uevent = Path(f"/sys/block/{loop.name}/uevent")

        def storm() -> None:
            for _ in range(500):
                uevent.write_text("change")  # a real kernel uevent, without a real change

        await asyncio.to_thread(storm)

        async def all_seen() -> bool:
            return agent.uevents >= seen + 500

        await eventually(all_seen, what="the agent to receive the 500 uevents")
        await consistently(
            lambda: _unchanged(kube, obj),
            duration=2.0,
            what="the NodeDevice to stay unwritten during the storm",
        )
        assert agent.publisher.writes == writes
        # A real change: the backing file grows and the loop device is told (LOOP_SET_CAPACITY).
        with loop.backing_file.open("r+b") as handle:
            handle.truncate(12 * MiB)
        await asyncio.to_thread(subprocess.run, ["losetup", "--set-capacity", str(loop.path)], check=True)

        async def resized() -> Obj | None:
            current = await kube.get(NODE_DEVICES, obj["metadata"]["name"])
            return current if current["spec"]["sizeBytes"] == 12 * MiB else None

        grown = await eventually(resized, what="the new size to be published")
        assert grown is not None
        await eventually(lambda: _settled(agent), what="the agent to settle")
        assert agent.publisher.writes == writes + 1
        assert grown["metadata"]["generation"] == obj["metadata"]["generation"] + 1


async def test_a_binding_written_beside_the_agent_costs_its_next_write_nothing_more(
    cluster: localcluster.ClusterConfig,
    kube: KubeClient,
    make_node: Callable[..., Any],
    loop_devices: Callable[..., LoopDevice],
) -> None:
    """The driver runtime writes status.boundDrivers of the NodeDevices the device part publishes:
    the unplug after it is one status write, with no refused write and no re-list before it."""
    node = "devices-bound"
    async with agent_with_one_loop_device(cluster, kube, make_node, loop_devices, node) as (agent, loop, obj):
        name = obj["metadata"]["name"]
        await kube.patch(
            NODE_DEVICES, name, {"status": {"boundDrivers": ["loop-info"]}}, subresource="status"
        )
        before = agent.kube.responses.copy()
        await asyncio.to_thread(detach, loop)
        gone = await until_present(kube, node, loop, state=False)
        await eventually(lambda: _settled(agent), what="the agent to settle after the unplug")
        requests = {k: n for k, n in (agent.kube.responses - before).items() if k[0] != "WATCH"}
        assert requests == {("PATCH", "200"): 1}
    assert gone["status"]["boundDrivers"] == ["loop-info"]


async def test_a_condition_another_writer_added_survives_the_agents_next_write(
    cluster: localcluster.ClusterConfig,
    kube: KubeClient,
    make_node: Callable[..., Any],
    loop_devices: Callable[..., LoopDevice],
) -> None:
    """The agent replaces the condition list only if it is the one it read: a condition written
    behind its back (a health checker's) is kept, and Present still changes."""
    node = "devices-conditions"
    async with agent_with_one_loop_device(cluster, kube, make_node, loop_devices, node) as (_, loop, obj):
        healthy = {
            "type": "Healthy",
            "status": "True",
            "reason": "Checked",
            "message": "a health checker's condition",
            "lastTransitionTime": "2026-12-01T00:00:00Z",
        }
        conditions = [*obj["status"]["conditions"], healthy]
        name = obj["metadata"]["name"]
        await kube.patch(NODE_DEVICES, name, {"status": {"conditions": conditions}}, subresource="status")
        await asyncio.to_thread(detach, loop)
        gone = await until_present(kube, node, loop, state=False)
    assert healthy in gone["status"]["conditions"]
    assert [c["type"] for c in gone["status"]["conditions"]] == ["Present", "Healthy"]


async def _unchanged(kube: KubeClient, obj: Obj) -> bool:
    current = await kube.get(NODE_DEVICES, obj["metadata"]["name"])
    return bool(current["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"])


async def test_the_agent_waits_for_its_node_then_publishes(
    cluster: localcluster.ClusterConfig,
    kube: KubeClient,
    make_node: Callable[..., Any],
    loop_devices: Callable[..., LoopDevice],
) -> None:
    node = "devices-late"
    loop = loop_devices(size_bytes=2 * MiB)
    async with running_agent(cluster, node) as agent:
        await eventually(lambda: _failing(agent), what="the agent to find its Node missing")
        assert await objects_of(kube, node) == []
        await make_node(node)
        obj = await until_present(kube, node, loop)
        assert obj["metadata"]["ownerReferences"][0]["name"] == node


async def test_an_api_outage_loses_no_change(
    cluster: localcluster.ClusterConfig,
    kube: KubeClient,
    make_node: Callable[..., Any],
    loop_devices: Callable[..., LoopDevice],
) -> None:
    node = "devices-outage"
    await make_node(node)
    leaving = loop_devices(size_bytes=4 * MiB)
    async with running_agent(cluster, node) as agent:
        before = await until_present(kube, node, leaving)
        await eventually(lambda: _settled(agent), what="the agent to settle")
        stop_apiserver(cluster)
        try:
            arriving = loop_devices(size_bytes=6 * MiB)
            await eventually(lambda: _failing(agent), timeout=30, what="the agent to notice the outage")
            await asyncio.sleep(3)  # several failed retries: the backoff has grown
            await asyncio.to_thread(detach, leaving)
            detached_at = dt.datetime.now(dt.UTC)
            await asyncio.sleep(2)
        finally:
            await asyncio.to_thread(localcluster.up, cluster)
        async with KubeClient(load_kubeconfig(cluster.kubeconfig)) as fresh:
            arrived = await until_present(fresh, node, arriving)
            gone = await until_present(fresh, node, leaving, state=False)
    assert arrived["spec"]["sizeBytes"] == 6 * MiB
    assert gone["metadata"]["uid"] == before["metadata"]["uid"]
    condition = present_condition(gone)
    assert condition is not None
    # The removal is dated when the agent saw it, not when the API server came back (seconds
    # later: the restart alone takes several).
    assert (
        detached_at - dt.timedelta(seconds=1)
        <= condition.last_transition_time
        <= detached_at + dt.timedelta(seconds=1)
    )


async def _failing(agent: DeviceAgent) -> bool:
    return agent.failing_since is not None


def stop_apiserver(cluster: localcluster.ClusterConfig) -> None:
    pid = localcluster.running_pid(cluster, "kube-apiserver")
    assert pid is not None, "the local kube-apiserver is not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while localcluster.running_pid(cluster, "kube-apiserver") is not None:
        if time.monotonic() > deadline:  # open watches hold a graceful shutdown: crash it instead
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
