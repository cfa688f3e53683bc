"""Driver files whose declarations take effect, end to end: a real storage-operator and a real
storage-agent on this machine's (simulated) node, real loop devices, and driver files in the
agent's driver directory.

- A StorageDriver without supportedDevices loads on the devices the file declares; one that asks
  for a type the file does not declare is reported failing on the node, with both named.
- Directory autoload off (the default): a file declaring auto_load=True loads nothing by itself.
  On: the dropped-in file loads on the node's matching devices as the entry `file:<path>`, with
  the agent's Loaded Event; removing the file unloads it.

Other engineers' loop devices on this machine are published too, so the StorageDriver here selects
its own device by size; the autoloaded driver binds every loop device, which is why it is a driver
that does nothing to a device (attach returns facts only).
"""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from storage_driver_api.constants import NODE_DRIVER_CONFIGS, STORAGE_DRIVERS
from storage_driver_api.kube import EVENTS, KubeClient

from tests.conftest import require
from tests.e2e.test_operator_with_agent import agent_missing, node_device_for, start_operator
from tests.harness import localcluster
from tests.harness.drivers import kill_hosts, short_tmpdir
from tests.harness.loopdev import LoopDevice
from tests.harness.processes import ComponentProcess, console_script
from tests.harness.waiting import eventually
from tests.integration.operator import simulated as sim
from tests.integration.operator.conftest import remove_agent_leases

NOOP_DRIVER = """
from storage_driver_sdk import DeviceType, storage_driver


@storage_driver("__NAME__", version="1.0.0", supported_devices=[__TYPES__], auto_load=True)
class Noop:
    def start(self, config):
        pass

    def attach(self, device):
        return {"kernelName": device.kernel_name}

    def detach(self, device):
        pass

    def stop(self):
        pass
"""


def noop_driver(name: str, *types: str) -> str:
    return NOOP_DRIVER.replace("__NAME__", name).replace(
        "__TYPES__", ", ".join(f"DeviceType.{t.upper().replace('-', '_')}" for t in types)
    )


@dataclass
class Scene:
    kube: KubeClient
    cluster: localcluster.ClusterConfig
    node: str
    driver_dir: Path
    tmp: Path
    state_dir: Path
    agent: ComponentProcess | None = None
    operator: ComponentProcess | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.cluster.kubeconfig)}

    def start_agent(self) -> None:
        self.agent = ComponentProcess(
            "storage-agent",
            [
                console_script("storage-agent"),
                "--node-name",
                self.node,
                "--driver-dir",
                str(self.driver_dir),
                "--state-dir",
                str(self.state_dir),
            ],
            self.tmp / "agent.log",
            env=self.env,
        ).start()

    def start_operator(self, *extra: str, env: dict[str, str] | None = None) -> None:
        if self.operator is not None:
            self.operator.stop()
        count = len(list(self.tmp.glob("operator-*.log")))
        self.operator = start_operator({**self.env, **(env or {})}, self.tmp / f"operator-{count}.log")

    async def config(self) -> dict[str, Any]:
        return await self.kube.get_or_none(NODE_DRIVER_CONFIGS, self.node) or {}

    async def available(self, file: str) -> bool:
        items = ((await self.config()).get("status") or {}).get("available") or []
        return any(a.get("file") == file and not a.get("error") for a in items)

    async def entry(self, name: str) -> dict[str, Any] | None:
        drivers = ((await self.config()).get("spec") or {}).get("drivers") or []
        return next((d for d in drivers if d["name"] == name), None)

    async def run(self, name: str) -> dict[str, Any]:
        runs = ((await self.config()).get("status") or {}).get("drivers") or []
        return next((d for d in runs if d["name"] == name), {})


@pytest.fixture
async def scene(
    clean_cluster: KubeClient, cluster: localcluster.ClusterConfig, tmp_path: Path
) -> AsyncIterator[Scene]:
    require(agent_missing())
    await sim.ensure_lease_namespace(clean_cluster)
    await remove_agent_leases(clean_cluster)
    driver_dir = tmp_path / "drivers"
    driver_dir.mkdir()
    # Short: the hosts' unix socket paths must stay under 108 bytes.
    state_dir = short_tmpdir("sdo-decl-")
    found = Scene(clean_cluster, cluster, localcluster.local_node_name(), driver_dir, tmp_path, state_dir)
    try:
        yield found
    finally:
        for process in (found.agent, found.operator):
            if process is not None:
                process.stop()
        kill_hosts(state_dir)  # a stopped agent leaves its hosts running, to adopt them again
        shutil.rmtree(state_dir, ignore_errors=True)
        await remove_agent_leases(clean_cluster)
        for process in (found.operator, found.agent):
            if process is not None:
                print(f"--- {process.name} log ---\n{process.log()}")


async def test_a_storage_driver_without_device_types_loads_on_the_files_declared_devices(
    scene: Scene, loop_devices: Callable[..., LoopDevice]
) -> None:
    kube = scene.kube
    (scene.driver_dir / "noop_loop.py").write_text(noop_driver("Noop Loop", "loop"))
    (scene.driver_dir / "noop_zram.py").write_text(noop_driver("Noop Zram", "zram"))
    size = 5 * 2**20 + random.randrange(1, 256) * 4096
    mine = [{"key": "sizeBytes", "operator": "In", "values": [str(size)]}]
    scene.start_operator()
    scene.start_agent()
    # Declarations only: no supportedDevices, no autoLoad.
    await kube.create(
        STORAGE_DRIVERS,
        {
            "apiVersion": "storage.datawarehouse.io/v1alpha1",
            "kind": "StorageDriver",
            "metadata": {"name": "declared"},
            "spec": {
                "driverName": "Noop Loop",
                "version": "1.0.0",
                "deviceSelector": mine,
                "source": {"hostPath": {"path": "noop_loop.py"}},
            },
        },
    )
    # Asks for loop devices; the file declares zram only.
    await kube.create(
        STORAGE_DRIVERS,
        sim.storage_driver(
            "disagrees",
            driverName="Noop Zram",
            supportedDevices=["loop"],
            deviceSelector=mine,
            source={"hostPath": {"path": "noop_zram.py"}},
        ),
    )
    device = loop_devices(size_bytes=size)
    published = await eventually(
        lambda: node_device_for(kube, scene.node, device), timeout=60, what=f"a NodeDevice for {device.path}"
    )

    async def loaded() -> bool:
        entry, run = await scene.entry("declared"), await scene.run("declared")
        return (
            entry is not None
            and entry["devices"] == [published]
            and run.get("phase") == "Loaded"
            and run.get("boundDevices") == [published]
        )

    await eventually(loaded, timeout=90, what="'declared' Loaded on the file's declared device type")

    async def failing() -> list[dict[str, Any]]:
        status = await sim.driver_status(kube, "disagrees")
        return list(status.get("failingNodes") or [])

    (reported,) = await eventually(failing, timeout=60, what="'disagrees' reported failing on the node")
    assert reported["node"] == scene.node and reported["reason"] == "DriverNotAvailable"
    assert reported["message"] == (
        "noop_zram.py declares supported devices zram, not loop "
        "(the StorageDriver's supportedDevices asks for it)"
    )
    assert await scene.entry("disagrees") is None


async def test_directory_autoload_loads_a_dropped_in_file_only_when_on_and_unloads_it_when_removed(
    scene: Scene, loop_devices: Callable[..., LoopDevice]
) -> None:
    kube = scene.kube
    scene.start_operator()
    scene.start_agent()
    device = loop_devices()
    published = await eventually(
        lambda: node_device_for(kube, scene.node, device), timeout=60, what=f"a NodeDevice for {device.path}"
    )
    (scene.driver_dir / "dropped.py").write_text(noop_driver("Dropped In", "loop"))
    await eventually(lambda: scene.available("dropped.py"), timeout=60, what="the agent to report dropped.py")
    # Off by default: the operator has seen the report (a plan follows within a second) and
    # puts nothing on the node.
    await asyncio.sleep(3)
    assert await scene.entry("file:dropped.py") is None
    assert await scene.run("file:dropped.py") == {}

    scene.start_operator(env={"DIRECTORY_AUTOLOAD": "true"})

    async def loaded() -> bool:
        entry, run = await scene.entry("file:dropped.py"), await scene.run("file:dropped.py")
        return (
            entry is not None
            and entry["driverName"] == "Dropped In"
            and published in entry["devices"]
            and run.get("phase") == "Loaded"
            and published in (run.get("boundDevices") or [])
        )

    await eventually(loaded, timeout=90, what="file:dropped.py Loaded with the new loop device bound")

    async def event(reason: str) -> bool:
        items, _ = await kube.list(EVENTS, namespace="default")
        return any(
            e.get("reason") == reason
            and (e.get("involvedObject") or {}).get("name") == scene.node
            and str(e.get("message", "")).startswith("file:dropped.py: ")
            for e in items
        )

    await eventually(lambda: event("Loaded"), timeout=30, what="the agent's Loaded Event for file:dropped.py")

    (scene.driver_dir / "dropped.py").unlink()

    async def unloaded() -> bool:
        run = await scene.run("file:dropped.py")
        return await scene.entry("file:dropped.py") is None and not run.get("pid")

    await eventually(unloaded, timeout=60, what="file:dropped.py unloaded after the file was removed")
    await eventually(lambda: event("Unloaded"), timeout=30, what="the agent's Unloaded Event")
