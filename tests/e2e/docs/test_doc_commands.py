"""The commands of the docs that look at a working system (devices, drivers, plans, status,
troubleshooting) run against one: a real storage-operator and storage-agent for this machine's
Node, as local processes the way `make demo` runs them, the example drivers in the agent's
driver directory, and a real loop device attached. The docs reach the agent's directories
through the variables the agent itself reads (STORAGE_DRIVER_DIR, STORAGE_AGENT_STATE_DIR).
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from storage_driver_api.constants import (
    LEASE_NAMESPACE_DEFAULT,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    node_label_value,
)
from storage_driver_api.kube import EVENTS, NAMESPACES, KubeClient

from tests.conftest import REPO_ROOT, apply_crds, require
from tests.harness import doccommands, helm, localcluster
from tests.harness.drivers import Agent, short_tmpdir
from tests.harness.loopdev import LoopDevice
from tests.harness.processes import VENV_BIN
from tests.harness.waiting import eventually
from tests.integration.chart.release import Release, delete_namespace
from tests.integration.docs.test_doc_commands import check, search_path, workdir
from tests.integration.operator.conftest import Operator, free_port, remove_agent_leases
from tests.integration.operator.simulated import ensure_lease_namespace

RELEASE = "storage-driver-operator"
NAMESPACE = LEASE_NAMESPACE_DEFAULT
RUNNING = sorted(name for name, setting in doccommands.DOCUMENTS.items() if setting.components)
EXAMPLE_DRIVERS = REPO_ROOT / "examples" / "drivers"


@dataclass
class Running:
    """A working system on this machine: what the docs' commands look at."""

    cluster: localcluster.ClusterConfig
    kube: KubeClient
    node: str
    agent: Agent
    operator: Operator
    device: LoopDevice
    node_device: str
    agent_metrics: str

    def environment(self) -> dict[str, str]:
        return {
            **helm.environment(self.cluster.kubeconfig),
            "PATH": search_path(helm.helm_binary().parent, self.cluster.bin_dir, VENV_BIN),
            "STORAGE_DRIVER_DIR": str(self.agent.driver_dir),
            "STORAGE_AGENT_STATE_DIR": str(self.agent.state_dir),
            "METRICS_ENDPOINT": self.operator.metrics,
            "AGENT_METRICS": self.agent_metrics,
        }

    def logs(self) -> str:
        operator = self.operator.process.log(80) if self.operator.process else ""
        return f"--- operator log ---\n{operator}\n--- agent log ---\n{self.agent.log(120)}"


async def published(kube: KubeClient, node: str, device: LoopDevice) -> str | None:
    items, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={node_label_value(node)}")
    for item in items:
        conditions = (item.get("status") or {}).get("conditions") or []
        present = any(c.get("type") == "Present" and c.get("status") == "True" for c in conditions)
        if (item.get("spec") or {}).get("kernelName") == device.name and present:
            return str(item["metadata"]["name"])
    return None


async def usable_namespace(kube: KubeClient) -> None:
    """The release namespace, not one that an earlier test is still deleting (nothing can be
    created in a namespace that is terminating)."""

    async def not_terminating() -> bool:
        existing = await kube.get_or_none(NAMESPACES, NAMESPACE)
        return existing is None or not existing["metadata"].get("deletionTimestamp")

    await eventually(not_terminating, timeout=120, what=f"namespace {NAMESPACE} to finish terminating")
    await ensure_lease_namespace(kube, NAMESPACE)


async def remove_project_events(kube: KubeClient) -> None:
    """Events of earlier tests would make a doc's Events look right when they are not."""
    items, _ = await kube.list(EVENTS, namespace="default")
    for item in items:
        if (item.get("involvedObject") or {}).get("kind") in ("StorageDriver", "NodeDriverConfig"):
            await kube.delete(EVENTS, item["metadata"]["name"], "default")


@pytest.fixture
async def running(
    request: pytest.FixtureRequest,
    clean_cluster: KubeClient,
    cluster: localcluster.ClusterConfig,
    loop_devices: Callable[..., LoopDevice],
    tmp_path: Path,
) -> AsyncIterator[Running]:
    setting = doccommands.DOCUMENTS[request.param] if hasattr(request, "param") else doccommands.Setting()
    kube = clean_cluster
    release = Release(cluster, RELEASE, NAMESPACE)
    if setting.chart == "installed":
        require(helm.missing())
        release.uninstall(check=False)
        delete_namespace(cluster, NAMESPACE)
        release.install("--take-ownership")
    else:
        await usable_namespace(kube)
    await remove_agent_leases(kube)
    await remove_project_events(kube)
    node = localcluster.local_node_name()
    # A loop device of a size no one else on this shared machine uses, attached before the
    # agent starts (so the agent publishes it at once).
    device = loop_devices(size_bytes=8 * 2**20 + random.randrange(1, 256) * 4096)
    agent = Agent(node, cluster.kubeconfig, NAMESPACE, short_tmpdir("sdo-docs-"))
    agent.driver_dir.mkdir(parents=True)
    for driver in EXAMPLE_DRIVERS.glob("*.py"):
        shutil.copy(driver, agent.driver_dir / driver.name)
    operator = Operator(cluster, tmp_path)
    system: Running | None = None
    try:
        await operator.start()
        agent_metrics = f"127.0.0.1:{free_port()}"
        agent.start("--metrics", agent_metrics)

        async def scanned() -> bool:
            config = await kube.get_or_none(NODE_DRIVER_CONFIGS, node)
            files = {a.get("file") for a in ((config or {}).get("status") or {}).get("available") or []}
            return {"loop_info.py", "queue_settings.py"} <= files

        await eventually(scanned, timeout=60, what="the agent to report the example drivers as available")
        name = await eventually(
            lambda: published(kube, node, device), timeout=60, what=f"a NodeDevice for {device.path}"
        )
        assert name is not None  # eventually() returns only a truthy value
        system = Running(
            cluster, kube, node, agent, operator, device, name, f"http://{agent_metrics}/metrics"
        )
        yield system
    finally:
        agent.cleanup()  # stops the agent and every driver host of its state directory
        operator.stop()
        if system is not None:
            print(system.logs())
        await remove_agent_leases(kube)
        if setting.chart == "installed":
            release.uninstall(check=False)
            delete_namespace(cluster, NAMESPACE, wait=False)
            apply_crds(cluster)
        elif await kube.get_or_none(NAMESPACES, NAMESPACE):
            delete_namespace(cluster, NAMESPACE, wait=False)
        shutil.rmtree(agent.root, ignore_errors=True)


@pytest.mark.parametrize("running", RUNNING, indirect=True)
async def test_commands_on_a_working_system(
    running: Running, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = request.node.callspec.params["running"]
    check(doccommands.run(REPO_ROOT / name, workdir(tmp_path), running.environment(), tmp_path / "outputs"))


def shape(value: Any) -> Any:
    """The keys of a nested object, without the values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


async def test_the_example_nodedevice_is_what_the_agent_publishes(running: Running) -> None:
    """examples/nodedevice.yaml shows a loop device as the agent really publishes one."""
    example = yaml.safe_load((REPO_ROOT / "examples" / "nodedevice.yaml").read_text())
    real = await running.kube.get(NODE_DEVICES, running.node_device)
    assert set(example["metadata"]["labels"]) == set(real["metadata"]["labels"])
    # The example leaves out the ownerReference to the Node (its comment says why).
    assert [o["kind"] for o in real["metadata"]["ownerReferences"]] == ["Node"]
    assert "ownerReferences" not in example["metadata"]
    assert shape(example["spec"]) == shape(real["spec"])
    assert example["spec"]["identity"]["kind"] == real["spec"]["identity"]["kind"] == "virtual"
    # <node>/<loopN>/<backing file>@<st_dev>:<st_ino>:<generation>
    node, kernel_name, backing = example["spec"]["identity"]["value"].split("/", 2)
    file, _, inode = backing.rpartition("@")
    assert (node, kernel_name, file) == (
        example["spec"]["nodeName"],
        example["spec"]["kernelName"],
        example["spec"]["backingFile"],
    )
    real_inode = real["spec"]["identity"]["value"].rpartition("@")[2]
    assert len(inode.split(":")) == len(real_inode.split(":")) and all(p.isdigit() for p in inode.split(":"))
    example_present = example["status"]["conditions"][0]
    real_present = next(c for c in real["status"]["conditions"] if c["type"] == "Present")
    assert set(example_present) == set(real_present)
    assert (example_present["reason"], example_present["status"]) == (real_present["reason"], "True")
    assert example_present["message"] == real_present["message"].replace(
        running.device.name, example["spec"]["kernelName"]
    )
    assert Path(example["spec"]["devPath"]).name == example["spec"]["kernelName"]


async def test_the_metrics_operator_md_lists_are_the_ones_served(running: Running) -> None:
    doc = (REPO_ROOT / "docs" / "operator.md").read_text()
    section = doc[doc.index("## Metrics") :]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    listed = set(re.findall(r"`(storage_driver_operator_[a-z_]+)", section))
    served = await asyncio.to_thread(
        lambda: urllib.request.urlopen(running.operator.metrics, timeout=10).read()
    )
    families = set(re.findall(r"^# TYPE (\S+) ", served.decode(), re.MULTILINE))
    # The process collector's families are listed together, as `process_*`.
    assert "`process_*`" in section and any(f.startswith("process_") for f in families)
    assert listed == {f for f in families if not f.startswith("process_")}
