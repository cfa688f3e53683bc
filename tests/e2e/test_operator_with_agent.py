"""End to end on this machine: a real storage-operator and a real storage-agent, the example
StorageDriver for loop devices, and a real loop device attached and detached.

The agent is built in parallel with the operator (its own issues); this test is written
against the contracts between them (NodeDevice, NodeDriverConfig, Lease) and runs wherever
the agent and `examples/drivers/loop_info.py` exist.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from storage_driver_api.constants import (
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import KubeClient

from tests.conftest import REPO_ROOT, kubectl, require
from tests.harness import localcluster
from tests.harness.loopdev import LoopDevice, detach
from tests.harness.processes import ComponentProcess, console_script
from tests.harness.waiting import eventually
from tests.integration.operator import simulated as sim
from tests.integration.operator.conftest import free_port, remove_agent_leases

EXAMPLE = REPO_ROOT / "examples" / "storagedriver-loop.yaml"
DRIVER_FILE = REPO_ROOT / "examples" / "drivers" / "loop_info.py"


def agent_missing() -> str | None:
    if not DRIVER_FILE.exists():
        return (
            f"{DRIVER_FILE.relative_to(REPO_ROOT)} is not in this checkout (the agent's driver runtime issue)"
        )
    try:
        usage = subprocess.run(
            [console_script("storage-agent"), "--help"], capture_output=True, text=True, timeout=60
        ).stdout
    except FileNotFoundError as exc:
        return str(exc)
    if "--driver-dir" not in usage:
        return "storage-agent has no --driver-dir yet (the agent's driver runtime issue)"
    return None


async def node_device_for(kube: KubeClient, node: str, device: LoopDevice) -> str | None:
    items, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={node_label_value(node)}")
    for item in items:
        spec = item.get("spec") or {}
        if spec.get("devPath") == str(device.path) or spec.get("kernelName") == device.name:
            return str(item["metadata"]["name"])
    return None


def start_operator(env: dict[str, str], log: Path, metrics_port: int | None = None) -> ComponentProcess:
    """A storage-operator process on free loopback ports (its metrics on `metrics_port` if given)."""
    return ComponentProcess(
        "storage-operator",
        [
            console_script("storage-operator"),
            "--liveness",
            f"http://127.0.0.1:{free_port()}/healthz",
            "--metrics",
            f"http://127.0.0.1:{metrics_port or free_port()}/metrics",
        ],
        log,
        env=env,
    ).start()


async def sd_row(cluster: localcluster.ClusterConfig, expected: list[str]) -> bool:
    """The first columns of `kubectl get sd loop-info` (its status is written at most once a second)."""
    row = kubectl(cluster, "get", "sd", "loop-info").splitlines()[1].split()
    return row[: len(expected)] == expected


async def test_loop_driver_loads_on_attach_and_unloads_after_detach(
    clean_cluster: KubeClient,
    cluster: localcluster.ClusterConfig,
    loop_devices: Callable[..., LoopDevice],
    tmp_path: Path,
) -> None:
    require(agent_missing())
    kube = clean_cluster
    node = localcluster.local_node_name()
    await sim.ensure_lease_namespace(kube)
    await remove_agent_leases(kube)
    driver_dir = tmp_path / "drivers"
    driver_dir.mkdir()
    shutil.copy(DRIVER_FILE, driver_dir / "loop_info.py")

    # The example, bound to a loop device of a size nobody else on this shared machine uses,
    # so that other loop devices cannot keep the driver loaded.
    size = 5 * 2**20 + random.randrange(1, 256) * 4096
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    manifest["spec"]["deviceSelector"] = [{"key": "sizeBytes", "operator": "In", "values": [str(size)]}]
    delay = manifest["spec"]["unloadDelaySeconds"]
    env = {"KUBECONFIG": str(cluster.kubeconfig)}
    operator = start_operator(env, tmp_path / "operator.log")
    agent = ComponentProcess(
        "storage-agent",
        [
            console_script("storage-agent"),
            "--node-name",
            node,
            "--driver-dir",
            str(driver_dir),
            "--state-dir",
            str(tmp_path / "agent-state"),
        ],
        tmp_path / "agent.log",
        env=env,
    ).start()
    try:
        await kube.create(STORAGE_DRIVERS, manifest)

        async def scanned() -> bool:
            config = await kube.get_or_none(NODE_DRIVER_CONFIGS, node)
            available = ((config or {}).get("status") or {}).get("available") or []
            return any(a.get("file") == "loop_info.py" and not a.get("error") for a in available)

        await eventually(scanned, timeout=60, what="the agent to report loop_info.py as available")

        device = loop_devices(size_bytes=size)
        published = await eventually(
            lambda: node_device_for(kube, node, device), timeout=60, what=f"a NodeDevice for {device.path}"
        )

        async def loaded() -> bool:
            config = await kube.get(NODE_DRIVER_CONFIGS, node)
            wanted = {d["name"]: d for d in config["spec"].get("drivers") or []}
            runs = {d["name"]: d for d in (config.get("status") or {}).get("drivers") or []}
            return (
                published in (wanted.get("loop-info") or {}).get("devices", [])
                and (runs.get("loop-info") or {}).get("phase") == "Loaded"
                and published in runs["loop-info"].get("boundDevices", [])
            )

        await eventually(loaded, timeout=90, what="loop-info Loaded with the new device bound")
        await eventually(
            lambda: sd_row(cluster, ["loop-info", "1.0.0", "1", "1", "0", "True"]),
            what="kubectl get sd to show loop-info matching, loaded and Ready",
        )

        detach(device)

        async def unloaded() -> bool:
            config = await kube.get(NODE_DRIVER_CONFIGS, node)
            wanted = [d["name"] for d in config["spec"].get("drivers") or []]
            runs = {d["name"]: d for d in (config.get("status") or {}).get("drivers") or []}
            run = runs.get("loop-info")
            stopped = run is None or (
                run.get("phase") not in ("Loading", "Loaded", "Unloading") and not run.get("pid")
            )
            return "loop-info" not in wanted and stopped

        await eventually(
            unloaded, timeout=60 + delay, what="loop-info unloaded after the detach and the delay"
        )
        await eventually(
            lambda: sd_row(cluster, ["loop-info", "1.0.0", "0", "0", "0"]),
            what="kubectl get sd to show loop-info loaded nowhere",
        )
    finally:
        agent.stop()
        operator.stop()
        await remove_agent_leases(kube)
        print(f"--- operator log ---\n{operator.log()}\n--- agent log ---\n{agent.log()}")
