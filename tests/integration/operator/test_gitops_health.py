"""What GitOps tools and scripts read, against the real operator: `kubectl wait` on the Ready and
Stalled conditions (the real kubectl), and kstatus's verdict (Flux) on the StorageDriver as the
API server returns it, for a driver that loads, one that is unhealthy or crash-looping on a
node (agents simulated through their NodeDriverConfig status), and an invalid spec."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from typing import Any

from storage_driver_api.constants import STORAGE_DRIVERS
from storage_driver_api.kube import KubeClient

from tests.harness import kstatus
from tests.harness.localcluster import ClusterConfig
from tests.integration.operator import simulated as sim
from tests.integration.operator.conftest import Operator
from tests.integration.operator.test_reconcile import live_node, wait_devices, wait_status

NodeFactory = Callable[..., Any]


async def kubectl_wait(
    cluster: ClusterConfig, condition: str, name: str, timeout: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}",
        "wait", f"--for=condition={condition}", f"sd/{name}", f"--timeout={timeout}",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


async def finished(process: asyncio.subprocess.Process) -> tuple[int, str]:
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, (out + err).decode()


def as_kubectl_sees_it(cluster: ClusterConfig, name: str) -> kstatus.Result:
    out = subprocess.run(
        [str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", "get", "sd", name, "-o", "json"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return kstatus.compute(json.loads(out))


async def one_node_with_a_device(kube: KubeClient, make_node: NodeFactory, node: str, name: str) -> None:
    uid = await live_node(make_node, kube, node)
    await sim.add_device(kube, node, f"{node}-loop0", node_uid=uid)
    await kube.create(STORAGE_DRIVERS, sim.storage_driver(name))
    await wait_devices(kube, node, name, [f"{node}-loop0"])


def loaded(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "phase": "Loaded", "version": "1.0.0", "pid": 4242, **extra}


async def test_kubectl_wait_returns_when_the_driver_is_loaded(
    operator: Operator, clean_cluster: KubeClient, cluster: ClusterConfig, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    await one_node_with_a_device(kube, make_node, "gitops-1", "waited")
    waiting = await kubectl_wait(cluster, "Ready", "waited", "60s")
    await asyncio.sleep(1)
    if waiting.returncode is not None:
        raise AssertionError(f"kubectl wait returned before the driver was loaded: {await finished(waiting)}")
    # kstatus calls an object without status Current: compare once the operator has written one
    # (after the node's spec, which is what one_node_with_a_device waits for).
    await wait_status(kube, "waited", lambda s: "observedGeneration" in s, "the operator's first status")
    assert as_kubectl_sees_it(cluster, "waited").status == kstatus.IN_PROGRESS
    await sim.report_loaded(kube, "gitops-1")
    code, out = await finished(waiting)
    assert code == 0, out
    assert "condition met" in out
    assert as_kubectl_sees_it(cluster, "waited").status == kstatus.CURRENT


async def test_an_unhealthy_driver_stalls_its_storage_driver(
    operator: Operator, clean_cluster: KubeClient, cluster: ClusterConfig, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    await one_node_with_a_device(kube, make_node, "gitops-2", "sick")
    await sim.report(kube, "gitops-2", drivers=[loaded("sick", unhealthy="health() returned False")])
    code, out = await finished(await kubectl_wait(cluster, "Stalled", "sick", "60s"))
    assert code == 0, out
    status = await sim.driver_status(kube, "sick")
    ready = sim.condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unhealthy")
    assert status["failingNodes"] == [
        {"node": "gitops-2", "reason": "Unhealthy", "message": "health() returned False"}
    ]
    result = as_kubectl_sees_it(cluster, "sick")
    assert (result.status, result.message) == (kstatus.FAILED, "1 node failing: gitops-2: Unhealthy")
    # Ready is not coming: kubectl wait gives up with an error.
    code, out = await finished(await kubectl_wait(cluster, "Ready", "sick", "3s"))
    assert code != 0 and "timed out" in out

    # Healthy again: Current and Ready.
    await sim.report(kube, "gitops-2", drivers=[loaded("sick")])
    code, out = await finished(await kubectl_wait(cluster, "Ready", "sick", "60s"))
    assert code == 0, out
    assert as_kubectl_sees_it(cluster, "sick").status == kstatus.CURRENT


async def test_a_crash_looping_driver_shows_on_its_storage_driver(
    operator: Operator, clean_cluster: KubeClient, cluster: ClusterConfig, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    await one_node_with_a_device(kube, make_node, "gitops-3", "crashy")
    crashing = {
        "name": "crashy",
        "phase": "Failed",
        "version": "1.0.0",
        "restarts": 3,
        "lastError": {"reason": "Crashed", "message": "exit code 3", "time": sim.stamp()},
        "message": "Crashed; retrying after backoff (attempt 3)",
    }
    await sim.report(kube, "gitops-3", drivers=[crashing])
    status = await wait_status(
        kube, "crashy", lambda s: sim.condition(s, "Stalled").get("status") == "True", "Stalled=True"
    )
    assert sim.condition(status, "Degraded")["message"] == "1 node failing: gitops-3: Crashed"
    assert status["failingNodes"][0]["message"] == "exit code 3"
    assert as_kubectl_sees_it(cluster, "crashy").status == kstatus.FAILED


async def test_an_invalid_spec_is_stalled_and_kubectl_wait_says_so(
    operator: Operator, clean_cluster: KubeClient, cluster: ClusterConfig
) -> None:
    kube = clean_cluster
    bad = sim.storage_driver("bad", deviceSelector=[{"key": "model", "operator": "Regex", "values": ["(["]}])
    await kube.create(STORAGE_DRIVERS, bad)
    code, out = await finished(await kubectl_wait(cluster, "Stalled", "bad", "60s"))
    assert code == 0, out
    result = as_kubectl_sees_it(cluster, "bad")
    assert (result.status, result.reason) == (kstatus.FAILED, "InvalidSpec")
    assert "spec.deviceSelector[0]" in result.message
