"""The whole flow with nothing but the chart's RBAC: the chart installed with the real helm, the
real storage-operator and storage-agent (with its driver-host supervisor, as the chart runs them)
logged in with the tokens of the chart's own ServiceAccounts, a real loop device attached and
detached. Each step below needs rights of its own (NodeDevices and their status, the node's
NodeDriverConfig spec and status, StorageDriver status and finalizer, Leases, Events), so a
missing right fails the step; and no component may log a refusal on the way."""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from storage_driver_api.constants import (
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import EVENTS, LEASES, KubeClient

from tests.conftest import kubectl, require
from tests.e2e.test_operator_with_agent import DRIVER_FILE, EXAMPLE, agent_missing, sd_row
from tests.harness import accounts, helm, localcluster
from tests.harness.loopdev import LoopDevice, detach
from tests.harness.processes import ComponentProcess, console_script
from tests.harness.waiting import eventually
from tests.integration.chart.release import Release, installed
from tests.integration.operator.conftest import free_port

pytestmark = pytest.mark.helm

# Not the default names: the components must be told the release namespace (Leases) and still
# find everything, and a leftover default installation cannot lend them its rights.
RELEASE = "sdo-flow"
NAMESPACE = "sdo-flow"
DRIVER = "loop-info"
# What a component logs when the API server refuses it (403, 401), in any log format: "403
# Forbidden: ..." from the project's client, APIForbiddenError from kopf.
REFUSED = re.compile(r"forbidden|unauthorized", re.IGNORECASE)


@pytest.fixture(scope="module")
def release(cluster: localcluster.ClusterConfig) -> Iterator[Release]:
    require(helm.missing())
    require(agent_missing())
    # The session's CRDs come from `kubectl apply -f crds/` (conftest): the chart leaves them alone.
    with installed(cluster, RELEASE, NAMESPACE, "--set", "crds.install=false") as rel:
        yield rel


def kubeconfig_for(release: Release, component: str, directory: Path) -> Path:
    return accounts.write_token_kubeconfig(
        release.cluster,
        directory / f"{component}.kubeconfig",
        release.username(component),
        release.token(component),
    )


def running(config: dict[str, Any]) -> dict[str, Any]:
    drivers = {d["name"]: d for d in (config.get("status") or {}).get("drivers") or []}
    return drivers.get(DRIVER) or {}


def wanted(config: dict[str, Any]) -> dict[str, Any]:
    drivers = {d["name"]: d for d in (config.get("spec") or {}).get("drivers") or []}
    return drivers.get(DRIVER) or {}


async def test_load_and_unload_with_the_charts_service_accounts_only(
    release: Release,
    clean_cluster: KubeClient,
    cluster: localcluster.ClusterConfig,
    loop_devices: Callable[..., LoopDevice],
    tmp_path: Path,
) -> None:
    kube = clean_cluster  # admin: only to set the scene and to look
    node = localcluster.local_node_name()
    driver_dir = tmp_path / "drivers"
    driver_dir.mkdir()
    shutil.copy(DRIVER_FILE, driver_dir / DRIVER_FILE.name)
    state_dir = tmp_path / "agent-state"
    agent_config = kubeconfig_for(release, "agent", tmp_path)
    operator_config = kubeconfig_for(release, "operator", tmp_path)

    # The example, bound to a loop device of a size nobody else on this shared machine uses.
    size = 7 * 2**20 + random.randrange(1, 256) * 4096
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    manifest["spec"]["deviceSelector"] = [{"key": "sizeBytes", "operator": "In", "values": [str(size)]}]
    delay = manifest["spec"]["unloadDelaySeconds"]

    # As the chart runs them: the supervisor with no credentials at all, the agent and the
    # operator each with its own account's token (also as $KUBECONFIG, so nothing falls back to admin).
    supervisor = ComponentProcess(
        "supervisor",
        [console_script("storage-agent"), "supervise", "--state-dir", str(state_dir)],
        tmp_path / "supervisor.log",
        env={"KUBECONFIG": str(tmp_path / "no-credentials")},
    ).start()
    agent = ComponentProcess(
        "storage-agent",
        [
            console_script("storage-agent"),
            "--kubeconfig", str(agent_config),
            "--node-name", node,
            "--namespace", NAMESPACE,
            "--driver-dir", str(driver_dir),
            "--state-dir", str(state_dir),
            "--launcher", "supervisor",
        ],
        tmp_path / "agent.log",
        env={"KUBECONFIG": str(agent_config)},
    )  # fmt: skip
    operator = ComponentProcess(
        "storage-operator",
        [
            console_script("storage-operator"),
            "--kubeconfig", str(operator_config),
            "--lease-namespace", NAMESPACE,
            "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
            "--metrics", f"http://127.0.0.1:{free_port()}/metrics",
        ],
        tmp_path / "operator.log",
        env={"KUBECONFIG": str(operator_config)},
    )  # fmt: skip
    components = (supervisor, agent, operator)
    try:
        supervisor.wait_for_log("supervisor listening", timeout=60)
        agent.start()
        operator.start()
        # Each names the credentials it logged in with.
        agent.wait_for_log(f"kubeconfig {agent_config} (context", timeout=60)
        operator.wait_for_log(f"kubeconfig {operator_config} (context", timeout=60)

        await kube.create(STORAGE_DRIVERS, manifest)

        async def scanned() -> bool:
            config = await kube.get_or_none(NODE_DRIVER_CONFIGS, node)
            available = ((config or {}).get("status") or {}).get("available") or []
            return any(a.get("file") == DRIVER_FILE.name and not a.get("error") for a in available)

        await eventually(
            scanned, timeout=60, what="the agent to create its NodeDriverConfig and report the scan"
        )

        async def lease_held() -> bool:
            lease = await kube.get_or_none(LEASES, f"storage-agent-{node}", NAMESPACE)
            return bool(((lease or {}).get("spec") or {}).get("renewTime"))

        await eventually(lease_held, timeout=60, what=f"the agent's Lease in {NAMESPACE}")

        async def observed() -> bool:
            driver = await kube.get(STORAGE_DRIVERS, DRIVER)
            status = driver.get("status") or {}
            return bool(status.get("observedGeneration") == driver["metadata"]["generation"])

        await eventually(observed, timeout=60, what="the operator to write the StorageDriver status")
        finalizers = (await kube.get(STORAGE_DRIVERS, DRIVER))["metadata"].get("finalizers") or []
        assert finalizers, "the operator did not add its finalizer"

        # --- hot-plug in ---
        device = loop_devices(size_bytes=size)
        published = await eventually(
            lambda: node_device_for(kube, node, device), timeout=60, what=f"a NodeDevice for {device.path}"
        )

        async def loaded() -> bool:
            config = await kube.get(NODE_DRIVER_CONFIGS, node)
            run = running(config)
            assert published in wanted(config).get("devices", []), f"spec: {config.get('spec')}"
            assert run.get("phase") == "Loaded", f"status: {run}"
            assert published in run.get("boundDevices", []), f"status: {run}"
            return True

        assert published is not None
        await eventually(loaded, timeout=90, what=f"{DRIVER} Loaded with {published} bound")

        async def bound_on_the_device() -> bool:
            status = (await kube.get(NODE_DEVICES, str(published))).get("status") or {}
            present = [c for c in status.get("conditions") or [] if c.get("type") == "Present"]
            return DRIVER in (status.get("boundDrivers") or []) and [c["status"] for c in present] == ["True"]

        await eventually(
            bound_on_the_device, timeout=60, what="the NodeDevice status to show it Present and bound"
        )
        await eventually(
            lambda: sd_row(cluster, [DRIVER, "1.0.0", "1", "1", "0", "True"]),
            what="kubectl get sd to show the driver matching, loaded and Ready",
        )
        await eventually(
            lambda: events_posted(kube, node, {("storage-agent", "Loaded"), ("storage-operator", "Loaded")}),
            timeout=60,
            what="the Loaded Events of the agent and the operator",
        )

        # --- hot-plug out ---
        detach(device)

        async def unloaded() -> bool:
            config = await kube.get(NODE_DRIVER_CONFIGS, node)
            run = running(config)
            return not wanted(config) and run.get("phase") not in ("Loading", "Loaded", "Unloading")

        await eventually(
            unloaded, timeout=60 + delay, what=f"{DRIVER} unloaded after the detach and the delay"
        )
        await eventually(
            lambda: sd_row(cluster, [DRIVER, "1.0.0", "0", "0", "0"]),
            what="kubectl get sd to show the driver loaded nowhere",
        )
        await eventually(
            lambda: events_posted(
                kube, node, {("storage-agent", "Unloaded"), ("storage-operator", "Unloaded")}
            ),
            timeout=60,
            what="the Unloaded Events of the agent and the operator",
        )

        # --- deletion: load again, then delete; the operator holds its finalizer until unloaded ---
        again = loop_devices(size_bytes=size, name="again.img")
        published = await eventually(
            lambda: node_device_for(kube, node, again), timeout=60, what=f"a NodeDevice for {again.path}"
        )
        await eventually(loaded, timeout=90, what=f"{DRIVER} Loaded again")
        await kube.delete(STORAGE_DRIVERS, DRIVER)
        await eventually(
            lambda: gone(kube), timeout=90, what="the StorageDriver deleted once the node unloaded it"
        )
        config = await kube.get(NODE_DRIVER_CONFIGS, node)
        assert not wanted(config) and running(config).get("phase") not in ("Loading", "Loaded", "Unloading")

        for component in components:
            assert component.running, f"{component.name} exited:\n{component.log()}"
    finally:
        agent.stop()
        operator.stop()
        supervisor.stop()
        logs = {c.name: c.log(100_000) for c in components}
        refusals = [
            f"{name}: {line}"
            for name, text in logs.items()
            for line in text.splitlines()
            if REFUSED.search(line)
        ]
        # Printed first: a missing right usually shows as a step that never happens.
        print("\n".join(["--- refusals ---", *refusals[:20]]))
        print("\n".join(f"--- {name} log ---\n{text[-6000:]}" for name, text in logs.items()))
    assert not refusals, "the API server refused a component:\n" + "\n".join(refusals[:20])
    assert not list((state_dir / "hosts").glob("*.sock")), "a driver host outlived the supervisor"


async def node_device_for(kube: KubeClient, node: str, device: LoopDevice) -> str | None:
    """The NodeDevice of this attachment: by backing file, because /dev/loopN is reused and the
    NodeDevice of an earlier attachment stays (not present) for a while."""
    items, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={node_label_value(node)}")
    for item in items:
        if (item.get("spec") or {}).get("backingFile") == str(device.backing_file):
            return str(item["metadata"]["name"])
    return None


async def events_posted(kube: KubeClient, node: str, wanted_events: set[tuple[str, str]]) -> bool:
    """Events (component, reason) about this test's NodeDriverConfig and StorageDriver (by uid:
    Events of earlier tests about objects of the same names stay for an hour)."""
    uids = set()
    for resource, name in ((NODE_DRIVER_CONFIGS, node), (STORAGE_DRIVERS, DRIVER)):
        if obj := await kube.get_or_none(resource, name):
            uids.add(obj["metadata"]["uid"])
    events, _ = await kube.list(EVENTS, namespace="default")
    seen = {
        ((e.get("source") or {}).get("component") or e.get("reportingComponent"), e.get("reason"))
        for e in events
        if (e.get("involvedObject") or {}).get("uid") in uids
    }
    return wanted_events <= seen


async def gone(kube: KubeClient) -> bool:
    return await kube.get_or_none(STORAGE_DRIVERS, DRIVER) is None


def test_no_component_has_more_than_the_chart_grants(release: Release) -> None:
    """The accounts the flow above ran with are the chart's, with nothing bound to them besides."""
    bindings = yaml.safe_load(
        kubectl(release.cluster, "get", "clusterrolebindings,rolebindings", "-A", "-o", "yaml")
    )
    for component in ("operator", "agent", "supervisor"):
        account = release.service_account(component)
        bound = sorted(
            b["metadata"]["name"]
            for b in bindings["items"]
            if any(
                s.get("kind") == "ServiceAccount"
                and s.get("name") == account
                and s.get("namespace") == NAMESPACE
                for s in b.get("subjects") or []
            )
        )
        owned_by_release = [name for name in bound if name.startswith(release.fullname)]
        assert bound == owned_by_release, f"{account} is bound by something besides the chart: {bound}"
