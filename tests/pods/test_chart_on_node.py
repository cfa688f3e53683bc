"""The product through its own pods: `helm install` on the local node, hot-plug through the
containerized agent, the upgrade and crash promises of docs/driver-runtime.md, the operator pod
replaced mid-deletion, two operator pods electing a leader, the securityContexts that really ran,
directory autoload, a device mounted on the node that keeps its driver, no refusal in any log,
and `helm uninstall`.

The tests share one release (module scope) and run in file order; each leaves the release Ready
for the next, and the last one uninstalls it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from storage_driver_api.constants import NODE_DEVICES, NODE_DRIVER_CONFIGS, NODE_LABEL, STORAGE_DRIVERS
from storage_driver_api.constants import node_label_value as label_value
from storage_driver_api.kube import LEASES, KubeClient
from storage_driver_operator import autoload

from tests.conftest import REPO_ROOT
from tests.harness import localcluster, podprocesses
from tests.harness.loopdev import LoopDevice, mount_filesystem, unmount
from tests.harness.waiting import eventually
from tests.pods.conftest import COMPONENTS, DRIVER_FILE, NAMESPACE, Installed, pod_ready, wait_all_ready

pytestmark = [pytest.mark.helm, pytest.mark.root]

DRIVER = "loop-info-pods"
MiB = 1024 * 1024
Apply = Callable[[int], Awaitable[None]]


def storage_driver(size: int) -> dict[str, Any]:
    """The example StorageDriver, narrowed to loop devices of `size` bytes (the test's own)."""
    manifest: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "examples" / "storagedriver-loop.yaml").read_text()
    )
    manifest["metadata"]["name"] = DRIVER
    manifest["spec"]["deviceSelector"] = [{"key": "sizeBytes", "operator": "In", "values": [str(size)]}]
    manifest["spec"]["unloadDelaySeconds"] = 0
    return manifest


def unique_size(mib: int) -> int:
    """A loop size no one else on this machine uses, so that the StorageDriver selects ours only."""
    return mib * MiB + (os.getpid() % 200 + 1) * 4096


async def node_device(kube: KubeClient, loop: LoopDevice, *, present: bool = True) -> dict[str, Any] | None:
    node = localcluster.local_node_name()
    items, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={label_value(node)}")
    for item in items:
        conditions = (item.get("status") or {}).get("conditions") or []
        is_present = any(c["type"] == "Present" and c["status"] == "True" for c in conditions)
        if item["spec"].get("backingFile") == str(loop.backing_file) and is_present == present:
            return dict(item)
    return None


async def driver_status(kube: KubeClient, name: str = DRIVER) -> dict[str, Any]:
    config = await kube.get_or_none(NODE_DRIVER_CONFIGS, localcluster.local_node_name())
    for entry in ((config or {}).get("status") or {}).get("drivers") or []:
        if entry.get("name") == name:
            return dict(entry)
    return {}


async def loaded_with(kube: KubeClient, device: str) -> dict[str, Any] | None:
    """The driver's status entry once it is Loaded with `device` bound, else None."""
    entry = await driver_status(kube)
    if entry.get("phase") == "Loaded" and device in (entry.get("boundDevices") or []):
        return entry
    return None


async def until_loaded(kube: KubeClient, device: str, what: str) -> dict[str, Any]:
    entry = await eventually(lambda: loaded_with(kube, device), timeout=90, what=what)
    assert entry is not None
    return entry


async def load(kube: KubeClient, loop: LoopDevice) -> tuple[str, dict[str, Any]]:
    """Wait until the agent pod published `loop` and the driver is Loaded with it bound."""
    device = await eventually(
        lambda: node_device(kube, loop), timeout=60, what=f"a NodeDevice for {loop.path} from the agent pod"
    )
    assert device is not None
    name = str(device["metadata"]["name"])
    entry = await until_loaded(kube, name, f"{DRIVER} Loaded with {name}")
    return name, entry


def driver_hosts(installed: Installed) -> list[podprocesses.HostProcess]:
    """The driver host processes in the supervisor pod's cgroups."""
    return podprocesses.driver_hosts(installed.pod("supervisor")["metadata"]["uid"])


async def node_device_uid(kube: KubeClient, name: str) -> str:
    """The uid of the test's own NodeDevice (the machine's other loop devices come and go with
    whatever else runs on it, so only this one is compared)."""
    return str((await kube.get(NODE_DEVICES, name))["metadata"]["uid"])


@pytest.fixture
async def apply(kube: KubeClient, installed: Installed) -> AsyncIterator[Apply]:
    """apply(size): the test's StorageDriver for loop devices of that size; deleted afterwards."""

    async def apply_for(size: int) -> None:
        installed.kubectl("apply", "-f", "-", input=yaml.safe_dump(storage_driver(size)))

    yield apply_for
    installed.kubectl("delete", "storagedriver", DRIVER, "--ignore-not-found", "--wait=true", "--timeout=55s")


# --- 1. install ------------------------------------------------------------------------------


async def test_install_runs_every_pod_ready_with_probes(installed: Installed) -> None:
    for component in COMPONENTS:
        pod = installed.pod(component)
        assert pod_ready(pod), component
        assert pod["spec"]["nodeName"] == localcluster.local_node_name()
        container = pod["spec"]["containers"][0]
        assert "readinessProbe" in container, f"{component} has no readiness probe"
        statuses = pod["status"]["containerStatuses"]
        assert [s["restartCount"] for s in statuses] == [0], f"{component} restarted"
        assert statuses[0]["image"].startswith("localhost/storage-driver-operator/"), statuses[0]["image"]
    # The agent reached the API server through the kubernetes Service: it holds its Lease.
    lease = f"storage-agent-{localcluster.local_node_name()}"

    async def lease_held() -> bool:
        return installed.release.get("lease", lease, NAMESPACE) is not None

    await eventually(lease_held, timeout=60, what=f"the agent's Lease {lease}")
    # kubectl logs and exec reach the kubelet (the API server's client certificate).
    agent = installed.pod("agent")["metadata"]["name"]
    assert "agent starting" in installed.kubectl("-n", NAMESPACE, "logs", agent)
    version = installed.kubectl("-n", NAMESPACE, "exec", agent, "--", "storage-agent", "--version")
    assert version.startswith("storage-agent "), version
    print(f"helm install -> every pod Ready: {installed.ready_seconds:.1f}s")


# --- 6. securityContexts, as they ran ------------------------------------------------------------


def test_security_contexts_are_the_ones_that_ran(installed: Installed) -> None:
    operator = installed.main_process("operator")
    assert operator.uid == 65532, "the operator runs as its unprivileged user"
    assert "ro" in operator.mount_options("/"), "the operator's root filesystem is read-only"
    assert operator.effective_capabilities == 0

    agent = installed.main_process("agent")
    assert agent.uid == 0
    assert agent.effective_capabilities == 0, f"the agent has capabilities {agent.effective_capabilities:#x}"
    assert "ro" in agent.mount_options("/")
    assert "ro" in agent.mount_options("/sys")

    supervisor = installed.main_process("supervisor")
    assert supervisor.uid == 0
    caps = supervisor.effective_capabilities
    assert caps & podprocesses.CAP_SYS_ADMIN, f"the supervisor is not privileged: {caps:#x}"
    assert "rw" in supervisor.mount_options("/sys"), "a privileged container writes sysfs"
    assert "ro" in supervisor.mount_options("/")


# --- 2. hot-plug through the containerized agent ----------------------------------------------


async def test_hotplug_loads_the_driver_in_the_supervisor_pod_and_unplug_unloads_it(
    installed: Installed, kube: KubeClient, apply: Apply, loop_devices: Callable[..., LoopDevice]
) -> None:
    size = unique_size(9)
    await apply(size)
    loop = loop_devices(size_bytes=size)
    name, entry = await load(kube, loop)
    hosts = driver_hosts(installed)
    assert len(hosts) == 1, f"one driver host in the supervisor pod: {hosts}"
    supervisor_uid = installed.pod("supervisor")["metadata"]["uid"]
    assert f"pod{supervisor_uid}" in hosts[0].cgroup, hosts[0].cgroup
    assert entry.get("pid"), entry
    # The privileged supervisor container runs without a seccomp filter: its template creates the
    # host in its cgroup with clone3, the fast path, not the double fork and join.
    supervisor_log = installed.kubectl(
        "-n", NAMESPACE, "logs", installed.pod("supervisor")["metadata"]["name"]
    )
    assert "creates driver hosts with clone3" in supervisor_log, supervisor_log[-2000:]

    await asyncio.to_thread(subprocess.run, ["losetup", "--detach", str(loop.path)], check=True)

    async def unloaded() -> bool:
        return not (await driver_status(kube)) and not driver_hosts(installed)

    await eventually(unloaded, timeout=60, what=f"{DRIVER} unloaded and its host gone")
    assert await node_device(kube, loop, present=False) is not None, f"{name} marked absent"


async def test_a_storage_driver_without_supported_devices_binds_what_the_nodes_file_declares(
    installed: Installed, kube: KubeClient, apply: Apply, loop_devices: Callable[..., LoopDevice]
) -> None:
    """supportedDevices left out: the node's hostPath file (loop_info.py declares loop) decides."""
    size = unique_size(10)
    manifest = storage_driver(size)
    del manifest["spec"]["supportedDevices"]
    installed.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    stored = await kube.get(STORAGE_DRIVERS, DRIVER)
    assert "supportedDevices" not in stored["spec"], stored["spec"]
    loop = loop_devices(size_bytes=size)
    await load(kube, loop)  # `apply` (unused here) deletes the StorageDriver afterwards


# --- 3. upgrades ---------------------------------------------------------------------------------


async def test_agent_upgrade_keeps_the_driver_running_and_supervisor_updates_on_delete(
    installed: Installed, kube: KubeClient, apply: Apply, loop_devices: Callable[..., LoopDevice]
) -> None:
    size = unique_size(10)
    await apply(size)
    loop = loop_devices(size_bytes=size)
    name, before = await load(kube, loop)
    [host] = driver_hosts(installed)
    agent_uid = installed.pod("agent")["metadata"]["uid"]
    supervisor_uid = installed.pod("supervisor")["metadata"]["uid"]
    uid = await node_device_uid(kube, name)

    # A changed agent (and supervisor) template: the agent rolls, the supervisor waits (OnDelete).
    installed.release.upgrade(
        "--reuse-values",
        "--set-string",
        "agent.podAnnotations.upgraded=1",
        "--set-string",
        "supervisor.podAnnotations.upgraded=1",
    )

    async def agent_replaced() -> bool:
        pods = installed.pods("agent")
        return len(pods) == 1 and pods[0]["metadata"]["uid"] != agent_uid and pod_ready(pods[0])

    await eventually(agent_replaced, timeout=120, interval=0.5, what="the agent pod to roll")
    assert host.alive(), "the driver host survived the agent's upgrade"
    assert driver_hosts(installed) == [host], "no second host"
    adopted = await until_loaded(kube, name, "the new agent to adopt")
    assert adopted["pid"] == before["pid"], "adopted, not reloaded"
    assert adopted.get("restarts", 0) == before.get("restarts", 0)
    assert await node_device_uid(kube, name) == uid, "the NodeDevice was not recreated"
    supervisor = installed.pod("supervisor")
    assert supervisor["metadata"]["uid"] == supervisor_uid, "OnDelete: the supervisor pod stays"
    assert "upgraded" not in (supervisor["metadata"].get("annotations") or {})

    # As docs/driver-runtime.md says: deleting the supervisor pod takes the update, and the
    # agent loads the drivers again through the new supervisor (the one planned bounce).
    installed.kubectl("-n", NAMESPACE, "delete", "pod", supervisor["metadata"]["name"], "--wait=false")

    async def supervisor_replaced() -> bool:
        pods = installed.pods("supervisor")
        return bool(pods) and pods[0]["metadata"]["uid"] != supervisor_uid

    await eventually(supervisor_replaced, timeout=150, interval=0.5, what="a new supervisor pod")
    await wait_all_ready(installed)
    new_supervisor = installed.pod("supervisor")
    assert new_supervisor["metadata"]["annotations"]["upgraded"] == "1"
    assert not host.alive(), "the old supervisor's hosts stopped with it"
    await until_loaded(kube, name, "the driver loaded again")
    [new_host] = driver_hosts(installed)
    assert f"pod{new_supervisor['metadata']['uid']}" in new_host.cgroup


# --- 4. agent killed ---------------------------------------------------------------------------


async def test_agent_killed_or_deleted_leaves_the_driver_running_and_is_adopted(
    installed: Installed, kube: KubeClient, apply: Apply, loop_devices: Callable[..., LoopDevice]
) -> None:
    size = unique_size(11)
    await apply(size)
    loop = loop_devices(size_bytes=size)
    name, before = await load(kube, loop)
    [host] = driver_hosts(installed)
    uid = await node_device_uid(kube, name)
    agent_pod = installed.pod("agent")
    restarts = agent_pod["status"]["containerStatuses"][0]["restartCount"]

    # SIGKILL of the agent's process: the kubelet restarts the container in the same pod.
    os.kill(installed.main_process("agent").pid, signal.SIGKILL)

    async def restarted() -> bool:
        pod = installed.pod("agent")
        return pod["status"]["containerStatuses"][0]["restartCount"] > restarts and pod_ready(pod)

    await eventually(restarted, timeout=120, interval=0.5, what="the agent container to restart")
    assert host.alive() and driver_hosts(installed) == [host]
    adopted = await until_loaded(kube, name, "adoption after SIGKILL")
    assert adopted["pid"] == before["pid"]

    # The agent pod deleted: the DaemonSet makes a new one, which adopts the same host.
    installed.kubectl("-n", NAMESPACE, "delete", "pod", agent_pod["metadata"]["name"], "--wait=false")

    async def agent_replaced() -> bool:
        pods = installed.pods("agent")
        return bool(pods) and pods[0]["metadata"]["uid"] != agent_pod["metadata"]["uid"]

    await eventually(agent_replaced, timeout=150, interval=0.5, what="a new agent pod")
    await wait_all_ready(installed)
    assert installed.pod("agent")["metadata"]["uid"] != agent_pod["metadata"]["uid"]
    assert host.alive() and driver_hosts(installed) == [host]
    adopted = await until_loaded(kube, name, "adoption by a new pod")
    assert adopted["pid"] == before["pid"]
    assert await node_device_uid(kube, name) == uid, "the NodeDevice was not recreated"


# --- 5. operator replaced during a deletion ---------------------------------------------------


async def test_operator_pod_deleted_while_a_storage_driver_is_deleted_releases_the_finalizer(
    installed: Installed, kube: KubeClient, apply: Apply, loop_devices: Callable[..., LoopDevice]
) -> None:
    size = unique_size(12)
    await apply(size)
    loop = loop_devices(size_bytes=size)
    await load(kube, loop)
    [host] = driver_hosts(installed)
    operator_pod = installed.pod("operator")

    installed.kubectl("delete", "storagedriver", DRIVER, "--wait=false")
    deleting = await kube.get(STORAGE_DRIVERS, DRIVER)
    assert deleting["metadata"].get("deletionTimestamp") and deleting["metadata"].get("finalizers")
    installed.kubectl("-n", NAMESPACE, "delete", "pod", operator_pod["metadata"]["name"], "--wait=false")

    async def gone() -> bool:
        return await kube.get_or_none(STORAGE_DRIVERS, DRIVER) is None

    await eventually(
        gone, timeout=120, interval=0.5, what="the finalizer released and the StorageDriver gone"
    )
    assert not host.alive(), "unloaded before the finalizer went"
    await wait_all_ready(installed)
    assert installed.pod("operator")["metadata"]["uid"] != operator_pod["metadata"]["uid"]


# --- 6. two operator replicas ------------------------------------------------------------------


async def test_two_operator_pods_elect_one_leader_and_hand_over_when_its_pod_is_deleted(
    installed: Installed, kube: KubeClient, apply: Apply, loop_devices: Callable[..., LoopDevice]
) -> None:
    installed.release.upgrade("--reuse-values", "--set", "operator.replicas=2")

    async def two_ready() -> list[dict[str, Any]] | None:
        pods = installed.pods("operator")
        return pods if len(pods) == 2 and all(pod_ready(p) for p in pods) else None

    pods = await eventually(two_ready, timeout=150, interval=0.5, what="two operator pods Ready")
    assert pods is not None

    async def holder() -> str:
        lease = await kube.get_or_none(LEASES, "storage-operator-leader", NAMESPACE)
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    async def leader_pod() -> dict[str, Any] | None:
        held = await holder()
        return next((p for p in installed.pods("operator") if held.startswith(p["metadata"]["name"])), None)

    leader = await eventually(leader_pod, timeout=60, interval=0.5, what="one operator pod to lead")
    assert leader is not None
    deleted = leader["metadata"]["name"]

    # A rolling update or a drain deletes the leader's pod: it releases the Lease as it stops,
    # and another pod (the other replica, or the one that replaces it) leads.
    installed.kubectl("-n", NAMESPACE, "delete", "pod", deleted, "--wait=false")

    async def another_leads() -> str | None:
        held = await holder()
        return held if held and not held.startswith(deleted) else None

    try:
        await eventually(another_leads, timeout=90, interval=0.5, what="another operator pod to lead")
    except AssertionError:
        print(f"Lease holder: {await holder()!r}")
        for pod in installed.pods("operator"):
            print(installed.kubectl("-n", NAMESPACE, "logs", pod["metadata"]["name"], "--tail=40"))
        raise
    # The new leader reconciles: a hot-plug loads the driver.
    size = unique_size(14)
    await apply(size)
    loop = loop_devices(size_bytes=size)
    await load(kube, loop)
    await eventually(two_ready, timeout=150, interval=0.5, what="the Deployment back at two pods")


# --- 8. directory autoload, turned on with the chart's value ----------------------------------


async def test_directory_autoload_loads_the_dropped_in_file_without_a_storage_driver(
    installed: Installed, kube: KubeClient, loop_devices: Callable[..., LoopDevice]
) -> None:
    """operator.directoryAutoload=true: the administrator's loop_info.py (auto_load=True, declares
    loop) loads on the node's loop device with no StorageDriver; turned off, it unloads."""
    entry_name = autoload.entry_name(DRIVER_FILE.name)
    assert not (await kube.list(STORAGE_DRIVERS))[0]

    async def rolled_out() -> bool:  # the next tests find the operator's pods all Ready again
        deployment = installed.release.get("deployment", f"{installed.release.fullname}-operator", NAMESPACE)
        pods = installed.pods("operator")
        return (
            deployment is not None
            and len(pods) == deployment["spec"]["replicas"]
            and all(map(pod_ready, pods))
        )

    installed.release.upgrade("--reuse-values", "--set", "operator.directoryAutoload=true")
    try:
        loop = loop_devices(size_bytes=unique_size(16))
        device = await eventually(
            lambda: node_device(kube, loop), timeout=60, what=f"a NodeDevice for {loop.path}"
        )
        assert device is not None
        name = device["metadata"]["name"]

        async def autoloaded() -> dict[str, Any] | None:
            entry = await driver_status(kube, entry_name)
            return (
                entry
                if entry.get("phase") == "Loaded" and name in (entry.get("boundDevices") or [])
                else None
            )

        await eventually(
            autoloaded, timeout=150, what=f"{entry_name} Loaded with {name}, with no StorageDriver"
        )
        assert len(driver_hosts(installed)) == 1
    finally:
        # Rolled out even when the test failed, so that its failure is not the next tests' too.
        installed.release.upgrade("--reuse-values", "--set", "operator.directoryAutoload=false")
        await eventually(
            rolled_out, timeout=150, interval=0.5, what="the operator's pods Ready after the upgrades"
        )

    async def unloaded() -> bool:
        return not await driver_status(kube, entry_name) and not driver_hosts(installed)

    await eventually(unloaded, timeout=150, what=f"{entry_name} unloaded once autoload is off")


# --- 7. a device in use, as the node's mount table shows it --------------------------------------


async def test_a_device_mounted_on_the_node_keeps_its_driver_until_it_is_unmounted(
    installed: Installed,
    kube: KubeClient,
    apply: Apply,
    loop_devices: Callable[..., LoopDevice],
    tmp_path: Path,
) -> None:
    """The containerized agent reads the node's mount table, not its container's: a device that
    is mounted on the host blocks the unload, and the node says what holds it."""
    size = unique_size(15)
    loop = loop_devices(size_bytes=size)
    point = tmp_path / "mounted on the node"
    mount_filesystem(loop, point)
    try:
        await apply(size)
        name, loaded = await load(kube, loop)
        installed.kubectl("delete", "storagedriver", DRIVER, "--wait=false")

        async def blocked() -> dict[str, Any] | None:
            entry = await driver_status(kube)
            return entry if entry.get("unloadBlocked") else None

        entry = await eventually(blocked, timeout=60, what="the agent pod to report UnloadBlocked")
        assert entry is not None
        (blocker,) = entry["unloadBlocked"]
        assert blocker["name"] == name and any(f"mounted at {point}" in h for h in blocker["heldBy"]), blocker
        assert entry["pid"] == loaded["pid"] and len(driver_hosts(installed)) == 1
    finally:
        unmount(point)

    async def released() -> bool:
        gone = await kube.get_or_none(STORAGE_DRIVERS, DRIVER) is None
        return gone and not await driver_status(kube) and not driver_hosts(installed)

    await eventually(
        released, timeout=90, what=f"{DRIVER} unloaded once unmounted, and its finalizer released"
    )


def test_no_component_was_refused_by_the_api_server(installed: Installed) -> None:
    """A right the chart's RBAC lacks shows only in the logs (the components retry and carry on)."""
    for component in COMPONENTS:
        for pod in installed.pods(component):
            logs = installed.kubectl("-n", NAMESPACE, "logs", pod["metadata"]["name"])
            refused = [line for line in logs.splitlines() if re.search("forbidden|unauthorized", line, re.I)]
            assert not refused, f"{component} {pod['metadata']['name']}: {refused[:3]}"


# --- 1. uninstall ------------------------------------------------------------------------------


async def test_uninstall_leaves_no_pod_no_driver_host_and_nothing_in_the_host_directories(
    installed: Installed, kube: KubeClient, loop_devices: Callable[..., LoopDevice]
) -> None:
    size = unique_size(13)
    installed.kubectl("apply", "-f", "-", input=yaml.safe_dump(storage_driver(size)))
    loop = loop_devices(size_bytes=size)
    await load(kube, loop)
    [host] = driver_hosts(installed)

    installed.release.uninstall()
    assert not any(installed.release.pods(c) for c in COMPONENTS)
    # The operator wrote the webhook configuration, not helm: it belongs to a ClusterRole of the
    # release, so it goes with it; left behind, it would refuse every later agent's writes.
    webhook = installed.release.fullname

    async def configuration_gone() -> bool:
        return installed.release.get("validatingwebhookconfiguration", webhook) is None

    await eventually(configuration_gone, timeout=60, what=f"webhook configuration {webhook} collected")
    assert not host.alive() and not podprocesses.image_driver_hosts(), "a driver host outlived the release"
    # What the administrator put there stays; nothing the chart's pods wrote does.
    assert sorted(p.name for p in installed.driver_dir.iterdir()) == [DRIVER_FILE.name]
    assert not any(installed.state_dir.iterdir()), sorted(installed.state_dir.rglob("*"))
    # The user's StorageDriver stays (the CRDs are kept), held by the finalizer of an operator
    # that is gone; an administrator who removes the project for good lets it go.
    remaining = await kube.get(STORAGE_DRIVERS, DRIVER)
    assert remaining["metadata"].get("finalizers")
    await kube.patch(STORAGE_DRIVERS, DRIVER, {"metadata": {"finalizers": None}})
    await kube.delete(STORAGE_DRIVERS, DRIVER)
