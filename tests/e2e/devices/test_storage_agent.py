"""`storage-agent` as a real process on this machine's devices: hot-plug of real loop devices,
an agent restart that changes nothing, and garbage collection when the Node goes away.

The agent serves a simulated Node of its own: this machine's Node belongs to its kubelet, which
registers it once and cannot lose it, and the chart's agent pod is the one that serves it."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage_driver_agent.devices.diff import present_condition
from storage_driver_api.constants import DEVICE_TYPE_LABEL, NODE_DEVICES, NODE_LABEL, node_label_value
from storage_driver_api.kube import NODES, KubeClient

from tests.conftest import NodeFactory
from tests.harness import localcluster
from tests.harness.loopdev import LoopDevice
from tests.harness.processes import ComponentProcess, console_script
from tests.harness.waiting import eventually

Obj = dict[str, Any]
MiB = 1024 * 1024


NODE = "agent-process-node"


def start_agent(cluster: localcluster.ClusterConfig, tmp_path: Path) -> ComponentProcess:
    agent = ComponentProcess(
        "storage-agent",
        [
            console_script("storage-agent"),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--state-dir={tmp_path / 'state'}",
            "--log-format=text",
        ],
        tmp_path / "storage-agent.log",
        env={"NODE_NAME": NODE},
    ).start()
    agent.wait_for_log("device discovery started", timeout=60)
    return agent


async def node_objects(kube: KubeClient, node: str) -> dict[str, Obj]:
    items, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={node_label_value(node)}")
    return {item["metadata"]["name"]: item for item in items}


async def object_for(kube: KubeClient, node: str, loop: LoopDevice) -> Obj | None:
    for obj in (await node_objects(kube, node)).values():
        if obj["spec"].get("backingFile") == str(loop.backing_file):
            return obj
    return None


async def until_present(kube: KubeClient, node: str, loop: LoopDevice, state: bool = True) -> Obj:
    async def probe() -> Obj | None:
        obj = await object_for(kube, node, loop)
        condition = present_condition(obj) if obj else None
        return obj if condition is not None and (condition.status == "True") is state else None

    result = await eventually(probe, timeout=60, what=f"{loop.name} Present={state}")
    assert result is not None
    return result


async def test_storage_agent_publishes_hotplug_survives_restart_and_is_collected_with_its_node(
    cluster: localcluster.ClusterConfig,
    clean_cluster: KubeClient,
    make_node: NodeFactory,
    loop_devices: Callable[..., LoopDevice],
    tmp_path: Path,
) -> None:
    kube = clean_cluster
    node_name = NODE
    node = await make_node(node_name)
    agent = start_agent(cluster, tmp_path)
    try:
        # Attach: a NodeDevice of type loop with the right size, owned by the Node.
        loop = loop_devices(size_bytes=8 * MiB)
        obj = await until_present(kube, node_name, loop)
        assert obj["spec"]["type"] == "loop"
        assert obj["spec"]["sizeBytes"] == 8 * MiB
        assert obj["spec"]["kernelName"] == loop.name
        assert obj["metadata"]["labels"][DEVICE_TYPE_LABEL] == "loop"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
        # Detach: the same NodeDevice, absent.
        await asyncio.to_thread(subprocess.run, ["losetup", "--detach", str(loop.path)], check=True)
        gone = await until_present(kube, node_name, loop, state=False)
        assert gone["metadata"]["uid"] == obj["metadata"]["uid"]
        kept = loop_devices(size_bytes=4 * MiB)
        await until_present(kube, node_name, kept)

        # Restart: every NodeDevice keeps its uid; ours and the machine's disks are not written.
        before = await node_objects(kube, node_name)
        assert agent.stop() == 0
        assert "agent stopped" in agent.log()
        agent = start_agent(cluster, tmp_path)
        probe_after_restart = loop_devices(size_bytes=2 * MiB)
        await until_present(kube, node_name, probe_after_restart)  # the restart's first pass is done
        after = await node_objects(kube, node_name)
        for name, obj_before in before.items():
            assert name in after, f"{name} ({obj_before['spec']['kernelName']}) vanished over the restart"
            assert after[name]["metadata"]["uid"] == obj_before["metadata"]["uid"], name
        ours = {str(loop.backing_file), str(kept.backing_file)}
        stable = [
            name
            for name, o in before.items()
            if o["spec"].get("backingFile") in ours or o["spec"]["type"] in ("virtio-block", "zram")
        ]
        assert len(stable) >= 2
        for name in stable:
            assert (
                after[name]["metadata"]["resourceVersion"] == before[name]["metadata"]["resourceVersion"]
            ), name

        # The Node goes away: the controller manager collects its NodeDevices.
        await kube.delete(NODES, node_name)

        async def collected() -> bool:
            return not await node_objects(kube, node_name)

        await eventually(
            collected, timeout=90, what="the NodeDevices of the deleted Node to be garbage-collected"
        )
    finally:
        agent.stop()
