"""Own-node admission and apply-time validation on the real control plane, with real credentials:
the chart's RBAC (installed with the real helm), the real storage-operator serving the webhook
with the chart's operator token, and agents logged in with real TokenRequest tokens bound to Pod
objects on two nodes (there is no kubelet: the Pods never run, which a bound token does not need).

Every write an agent makes is admitted for its own node and refused for the other with a
message naming both; the operator and an admin are never refused; with the webhook down the
agents are refused (closed) while StorageDriver writes and the operator's reconciling go on."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from storage_driver_api.constants import (
    LEASE_PREFIX,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import LEASES, PODS, ApiError, Credentials, KubeClient

from tests.api_cases import INVALID_CASES, apply_changes, valid_storage_driver
from tests.conftest import NodeFactory, kubectl, require
from tests.e2e.test_operator_with_agent import DRIVER_FILE, agent_missing
from tests.e2e.test_rbac_flow import node_device_for
from tests.harness import accounts, helm, localcluster
from tests.harness.agentidentity import bound_token, pod_on_node, webhook_certificate
from tests.harness.loopdev import LoopDevice, detach
from tests.harness.processes import ComponentProcess, console_script
from tests.harness.waiting import eventually
from tests.integration.chart.release import Release, installed
from tests.integration.operator.conftest import free_port

pytestmark = pytest.mark.helm

RELEASE = "sdo-trust"
NAMESPACE = "sdo-trust"
HASH = "0123456789"


@pytest.fixture(scope="module")
def release(cluster: localcluster.ClusterConfig) -> Iterator[Release]:
    require(helm.missing())
    with installed(cluster, RELEASE, NAMESPACE, "--set", "crds.install=false") as rel:
        yield rel


@dataclass
class WebhookOperator:
    """The real storage-operator with the chart's operator token; with or without its webhook."""

    release: Release
    directory: Path
    port: int
    process: ComponentProcess | None = None
    starts: int = 0

    def start(self, webhook: bool = True) -> WebhookOperator:
        config = accounts.write_token_kubeconfig(
            self.release.cluster,
            self.directory / "operator.kubeconfig",
            self.release.username("operator"),
            self.release.token("operator"),
        )
        cert, key = webhook_certificate(self.release.cluster, self.directory / "pki")
        argv = [
            console_script("storage-operator"),
            "--kubeconfig", str(config),
            "--lease-namespace", NAMESPACE,
            "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
            "--metrics", "",
            "--log-format", "text",
        ]  # fmt: skip
        if webhook:
            argv += [
                "--webhook-address", f"127.0.0.1:{self.port}",
                "--webhook-cert", str(cert),
                "--webhook-key", str(key),
                "--webhook-ca", str(self.release.cluster.pki / "ca.crt"),
                # The chart's name: the operator may rewrite only that configuration.
                "--webhook-configuration", self.release.fullname,
                "--agent-service-account", f"{NAMESPACE}:{self.release.service_account('agent')}",
                "--config-map-namespaces", NAMESPACE,
                "--require-sha256",
            ]  # fmt: skip
        name = "operator-webhook" if webhook else "operator-plain"
        self.starts += 1  # a log of its own per start, so that waiting for a line waits for this start
        self.process = ComponentProcess(
            name, argv, self.directory / f"{name}-{self.starts}.log", env={"KUBECONFIG": str(config)}
        ).start()
        if webhook:
            self.process.wait_for_log("webhook configuration written", timeout=90)
        else:
            self.process.wait_for_log("ready", timeout=90)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log(self) -> str:
        return self.process.log(100_000) if self.process else ""


@pytest.fixture(scope="module")
def operator(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookOperator]:
    op = WebhookOperator(release, tmp_path_factory.mktemp("admission"), free_port()).start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator log ---\n{op.log()[-8000:]}")
        # Persistent and fail-closed: it must not outlive the test for the rest of the session.
        kubectl(
            release.cluster,
            "delete",
            "validatingwebhookconfiguration",
            release.fullname,
            "--ignore-not-found",
        )


@dataclass
class Agent:
    node: str
    client: KubeClient


def device(node: str, name: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": NODE_DEVICES.api_version,
        "kind": NODE_DEVICES.kind,
        "metadata": {"name": name or f"{node}-{HASH}", "labels": {NODE_LABEL: node_label_value(node)}},
        "spec": {
            "nodeName": node,
            "type": "loop",
            "identity": {"kind": "virtual", "value": f"{node}/loop9"},
            "kernelName": "loop9",
            "sysPath": "/sys/devices/virtual/block/loop9",
        },
    }


EVIL = {
    "name": "evil",
    "driverName": "Evil Driver",
    "version": "1.0.0",
    "source": {"kind": "hostPath", "path": "evil.py"},
}


def config(node: str, drivers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": NODE_DRIVER_CONFIGS.api_version,
        "kind": NODE_DRIVER_CONFIGS.kind,
        "metadata": {"name": node},
        "spec": {"drivers": drivers or []},
    }


def lease(node: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE_PREFIX + node, "namespace": NAMESPACE},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40},
    }


def credentials(release: Release, token: str, source: str) -> Credentials:
    return Credentials(
        server=release.cluster.server,
        ca_data=(release.cluster.pki / "ca.crt").read_bytes(),
        token=token,
        source=source,
    )


@pytest.fixture
async def agents(
    release: Release, operator: WebhookOperator, clean_cluster: KubeClient, make_node: NodeFactory
) -> AsyncIterator[dict[str, Agent]]:
    """The agents of node-a and node-b, each with a token bound to its own Pod on its node."""
    account = release.service_account("agent")
    found: dict[str, Agent] = {}
    async with contextlib.AsyncExitStack() as stack:
        for node in ("trust-node-a", "trust-node-b"):
            await make_node(node)
            pod = await pod_on_node(
                clean_cluster, NAMESPACE, f"agent-{node}-{uuid.uuid4().hex[:6]}", node, account
            )
            # No kubelet confirms a graceful deletion: delete at once, or the namespace never goes.
            stack.push_async_callback(
                clean_cluster.request,
                "DELETE",
                PODS.path(pod["metadata"]["name"], NAMESPACE),
                body={"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
            )
            token = await bound_token(clean_cluster, NAMESPACE, account, pod)
            client = await stack.enter_async_context(
                KubeClient(credentials(release, token, f"agent of {node}"))
            )
            found[node] = Agent(node, client)
        await wait_until_enforced(found["trust-node-a"].client)
        yield found


async def wait_until_enforced(agent: KubeClient) -> None:
    """The API server picks up a new webhook configuration within a second or so."""

    async def refused() -> bool:
        try:
            await agent.create(NODE_DEVICES, device("trust-node-b", f"trust-node-b-{HASH[::-1]}"))
        except ApiError as exc:
            return exc.status == 403 and "denied the request" in exc.message
        raise AssertionError("a write for another node was admitted")

    await eventually(refused, timeout=30, what="the webhook to refuse another node's write")


def assert_refused(exc: pytest.ExceptionInfo[ApiError], *words: str) -> None:
    assert exc.value.status == 403, exc.value
    for word in ("denied the request", *words):
        assert word in exc.value.message, f"{word!r} not in {exc.value.message!r}"


async def test_an_agent_writes_its_own_nodes_devices_and_no_other(
    agents: dict[str, Agent], clean_cluster: KubeClient
) -> None:
    a, b = agents["trust-node-a"], agents["trust-node-b"]
    # Own node: create, patch, status, delete.
    own = await a.client.create(NODE_DEVICES, device(a.node))
    name = own["metadata"]["name"]
    await a.client.patch(NODE_DEVICES, name, {"spec": {"model": "renamed"}})
    await a.client.patch(NODE_DEVICES, name, {"status": {"boundDrivers": ["x"]}}, subresource="status")
    # The other node's device (its own agent made it): every write of node-a's agent is refused.
    theirs = (await b.client.create(NODE_DEVICES, device(b.node)))["metadata"]["name"]
    for attempt in (
        a.client.create(NODE_DEVICES, device(b.node, f"{b.node}-{HASH[:9]}f")),
        a.client.patch(NODE_DEVICES, theirs, {"spec": {"model": "hijacked"}}),
        a.client.patch(NODE_DEVICES, theirs, {"status": {"boundDrivers": ["x"]}}, subresource="status"),
        a.client.delete(NODE_DEVICES, theirs),
    ):
        with pytest.raises(ApiError) as refused:
            await attempt
        assert_refused(refused, a.node, b.node)
    # Nor can it move its own device to the other node.
    with pytest.raises(ApiError) as moved:
        await a.client.patch(NODE_DEVICES, name, {"spec": {"nodeName": b.node}})
    assert_refused(moved, a.node, b.node)
    assert (await clean_cluster.get(NODE_DEVICES, theirs))["spec"].get("model") is None
    await a.client.delete(NODE_DEVICES, name)
    assert await clean_cluster.get_or_none(NODE_DEVICES, name) is None


async def test_an_agent_creates_its_nodedriverconfig_without_a_spec_and_reports_only_its_own(
    agents: dict[str, Agent], clean_cluster: KubeClient
) -> None:
    a, b = agents["trust-node-a"], agents["trust-node-b"]
    with pytest.raises(ApiError) as loaded:
        await a.client.create(NODE_DRIVER_CONFIGS, config(a.node, [EVIL]))
    assert_refused(loaded, "without a spec", a.node)
    with pytest.raises(ApiError) as foreign:
        await a.client.create(NODE_DRIVER_CONFIGS, config(b.node))
    assert_refused(foreign, a.node, b.node)
    await a.client.create(NODE_DRIVER_CONFIGS, config(a.node))
    await b.client.create(NODE_DRIVER_CONFIGS, config(b.node))
    status = {"status": {"bootId": "x", "drivers": []}}
    await a.client.patch(NODE_DRIVER_CONFIGS, a.node, status, subresource="status")
    with pytest.raises(ApiError) as other_status:
        await a.client.patch(NODE_DRIVER_CONFIGS, b.node, status, subresource="status")
    assert_refused(other_status, a.node, b.node)
    # The operator (not judged) writes node-b's spec, as it does for every node.
    await clean_cluster.patch(NODE_DRIVER_CONFIGS, b.node, {"spec": {"drivers": []}})


async def test_an_agent_renews_only_its_own_lease(
    agents: dict[str, Agent], operator: WebhookOperator, clean_cluster: KubeClient
) -> None:
    """...and the operator logs the refusal, but none of the writes it admitted: an agent renews
    its Lease every 10 s, a line each would be the operator's steady state."""
    a, b = agents["trust-node-a"], agents["trust-node-b"]
    for agent in (a, b):
        with contextlib.suppress(ApiError):
            await clean_cluster.delete(LEASES, LEASE_PREFIX + agent.node, NAMESPACE)
        await agent.client.create(LEASES, lease(agent.node), namespace=NAMESPACE)
    await a.client.patch(
        LEASES, LEASE_PREFIX + a.node, {"spec": {"leaseDurationSeconds": 41}}, namespace=NAMESPACE
    )
    with pytest.raises(ApiError) as refused:
        await a.client.patch(
            LEASES, LEASE_PREFIX + b.node, {"spec": {"holderIdentity": a.node}}, namespace=NAMESPACE
        )
    assert_refused(refused, a.node, b.node)
    # kopf logs a handler's outcome before it answers, so the admitted writes' lines would be there.
    assert "Webhook 'agent-leases' succeeded" not in operator.log()


async def test_a_token_not_bound_to_a_pod_is_refused(
    agents: dict[str, Agent], release: Release, clean_cluster: KubeClient
) -> None:
    legacy = credentials(release, release.token("agent"), "the agent account's Secret token")
    async with KubeClient(legacy) as client:
        with pytest.raises(ApiError) as refused:
            await client.create(NODE_DEVICES, device("trust-node-a"))
    assert_refused(refused, "not bound to a pod")


async def test_the_operator_and_an_admin_are_never_refused(
    agents: dict[str, Agent], release: Release, operator: WebhookOperator, clean_cluster: KubeClient
) -> None:
    admin = clean_cluster
    # An admin writes any node's objects.
    name = (await admin.create(NODE_DEVICES, device("trust-node-b")))["metadata"]["name"]
    await admin.patch(NODE_DEVICES, name, {"spec": {"model": "by-admin"}})
    await admin.create(NODE_DRIVER_CONFIGS, config("trust-node-b", [EVIL]))
    await admin.delete(NODE_DEVICES, name)
    # The operator reconciles: a StorageDriver matching node-a's device lands in node-a's spec.
    a = agents["trust-node-a"]
    await a.client.create(NODE_DEVICES, device(a.node))
    await a.client.create(NODE_DRIVER_CONFIGS, config(a.node))
    await report_available(a, "trust-loop")
    driver = storage_driver_for_loop("trust-loop")
    await admin.create(STORAGE_DRIVERS, driver)

    async def planned() -> bool:
        spec = (await admin.get(NODE_DRIVER_CONFIGS, a.node)).get("spec") or {}
        return any(d.get("name") == "trust-loop" for d in spec.get("drivers") or [])

    await eventually(planned, timeout=60, what="the operator to write node-a's spec")
    assert "denied the request" not in operator.log(), "the webhook refused the operator"


async def report_available(agent: Agent, name: str) -> None:
    """What the agent's scan of its driver directory would report for the hostPath file."""
    available = [
        {
            "file": f"{name}.py",
            "sha256": "a" * 64,
            "driverName": name,
            "version": "1.1.0",
            "supportedDevices": ["loop"],
        }
    ]
    await agent.client.patch(
        NODE_DRIVER_CONFIGS, agent.node, {"status": {"available": available}}, subresource="status"
    )


def storage_driver_for_loop(name: str) -> dict[str, Any]:
    body = valid_storage_driver()
    body["metadata"] = {"name": name}
    body["spec"] = apply_changes(
        body["spec"],
        {
            "driverName": name,
            "supportedDevices": ["loop"],
            "deviceSelector": [],
            "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "trust-node-a"}},
            "source": {"hostPath": {"path": f"{name}.py"}},
        },
    )
    return body


ONLY_MODELS = [case for case in INVALID_CASES if not case.schema_rejects]


def kubectl_apply(cluster: localcluster.ClusterConfig, manifest: dict[str, Any]) -> tuple[int, str]:
    import subprocess

    out = subprocess.run(
        [str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", "apply", "-f", "-"],
        input=json.dumps(manifest),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize("case", ONLY_MODELS, ids=[c.id for c in ONLY_MODELS])
async def test_kubectl_apply_of_an_invalid_storage_driver_is_refused_naming_the_field(
    case: Any, agents: dict[str, Agent], release: Release, clean_cluster: KubeClient
) -> None:
    manifest = valid_storage_driver()
    manifest["metadata"] = {"name": f"bad-{case.id}"}
    manifest["spec"] = apply_changes(manifest["spec"], case.spec_changes)
    code, output = kubectl_apply(release.cluster, manifest)
    assert code != 0, f"kubectl apply admitted {case.id}:\n{output}"
    assert "denied the request" in output and case.field in output, output
    assert await clean_cluster.get_or_none(STORAGE_DRIVERS, f"bad-{case.id}") is None


async def test_source_policy_is_enforced_at_apply_time(
    agents: dict[str, Agent], release: Release, clean_cluster: KubeClient
) -> None:
    manifest = valid_storage_driver()
    manifest["metadata"] = {"name": "from-kube-system"}
    source = {"configMap": {"name": "d", "namespace": "kube-system", "key": "d.py", "sha256": "a" * 64}}
    manifest["spec"] = apply_changes(manifest["spec"], {"source": source})
    code, output = kubectl_apply(release.cluster, manifest)
    assert code != 0 and "spec.source.configMap.namespace" in output, output
    source["configMap"] = {"name": "d", "namespace": NAMESPACE, "key": "d.py"}
    code, output = kubectl_apply(release.cluster, manifest)
    assert code != 0 and "spec.source.configMap.sha256" in output, output
    source["configMap"]["sha256"] = "a" * 64
    code, output = kubectl_apply(release.cluster, manifest)
    assert code == 0, output


async def test_webhook_down_agents_fail_closed_while_users_and_the_operator_go_on(
    agents: dict[str, Agent], release: Release, operator: WebhookOperator, clean_cluster: KubeClient
) -> None:
    admin = clean_cluster
    a = agents["trust-node-a"]
    own = (await a.client.create(NODE_DEVICES, device(a.node)))["metadata"]["name"]
    await a.client.create(NODE_DRIVER_CONFIGS, config(a.node))
    await report_available(a, "trust-loop")
    operator.stop()  # the configuration stays (fail-closed entries are persistent); nothing answers
    plain = WebhookOperator(release, operator.directory, operator.port)
    try:
        # Agents: refused, even for their own node.
        with pytest.raises(ApiError) as closed:
            await a.client.patch(NODE_DEVICES, own, {"spec": {"model": "during-outage"}})
        assert closed.value.status >= 500 or "failed calling webhook" in closed.value.message, closed.value
        assert "failed calling webhook" in closed.value.message
        # Users: StorageDriver writes go through, a bad one included.
        case = ONLY_MODELS[0]
        bad = valid_storage_driver()
        bad["metadata"] = {"name": "bad-during-outage"}
        bad["spec"] = apply_changes(bad["spec"], case.spec_changes)
        code, output = kubectl_apply(release.cluster, bad)
        assert code == 0, output
        await admin.create(STORAGE_DRIVERS, storage_driver_for_loop("trust-loop"))
        # The operator (here without its webhook, as a replica whose endpoint is unreachable)
        # reconciles: the bad one lands as InvalidSpec, the good one in node-a's spec.
        plain.start(webhook=False)

        async def reconciled() -> bool:
            status = (await admin.get(STORAGE_DRIVERS, "bad-during-outage")).get("status") or {}
            reasons = {c["type"]: c.get("reason") for c in status.get("conditions") or []}
            spec = (await admin.get(NODE_DRIVER_CONFIGS, a.node)).get("spec") or {}
            planned = any(d.get("name") == "trust-loop" for d in spec.get("drivers") or [])
            return reasons.get("Ready") == "InvalidSpec" and planned

        await eventually(reconciled, timeout=60, what="InvalidSpec and node-a's spec during the outage")
        assert "denied the request" not in plain.log() and "failed calling webhook" not in plain.log()
    finally:
        plain.stop()
        operator.start()

    # Back up: the agent's write goes through again.
    async def written() -> bool:
        try:
            await a.client.patch(NODE_DEVICES, own, {"spec": {"model": "after-outage"}})
        except ApiError as exc:
            raise AssertionError(str(exc)) from exc  # retried until the timeout
        return True

    await eventually(written, timeout=30, what="the agent's write once the webhook is back")
    assert (await admin.get(NODE_DEVICES, own))["spec"]["model"] == "after-outage"


def test_the_chart_binds_no_extra_rights(release: Release) -> None:
    """The operator's admission rights come from the chart's own templates only."""
    rendered = yaml.safe_load_all(
        helm.run("get", "manifest", RELEASE, "--namespace", NAMESPACE, cluster=release.cluster).stdout
    )
    roles = {o["metadata"]["name"] for o in rendered if o and o["kind"] == "ClusterRole"}
    assert f"{release.fullname}-operator-admission" in roles and f"{release.fullname}-operator-pods" in roles


async def test_the_real_agent_publishes_through_the_webhook_and_catches_up_after_an_outage(
    release: Release,
    operator: WebhookOperator,
    clean_cluster: KubeClient,
    loop_devices: Callable[..., LoopDevice],
    tmp_path: Path,
) -> None:
    """The real storage-agent, logged in with a token bound to a Pod on this machine's Node: every
    write it makes (NodeDevices, its NodeDriverConfig, its Lease) is admitted; while the webhook
    is down its writes fail closed and it retries; once back, it catches up."""
    require(agent_missing())
    kube = clean_cluster
    node = localcluster.local_node_name()
    account = release.service_account("agent")
    pod = await pod_on_node(kube, NAMESPACE, f"agent-local-{uuid.uuid4().hex[:6]}", node, account)
    token = await bound_token(kube, NAMESPACE, account, pod)
    config_path = accounts.write_token_kubeconfig(
        release.cluster, tmp_path / "agent.kubeconfig", release.username("agent"), token
    )
    driver_dir = tmp_path / "drivers"
    driver_dir.mkdir()
    shutil.copy(DRIVER_FILE, driver_dir / DRIVER_FILE.name)
    agent = ComponentProcess(
        "storage-agent",
        [
            console_script("storage-agent"),
            "--kubeconfig", str(config_path),
            "--node-name", node,
            "--namespace", NAMESPACE,
            "--driver-dir", str(driver_dir),
            "--state-dir", str(tmp_path / "state"),
        ],
        tmp_path / "agent.log",
        env={"KUBECONFIG": str(config_path)},
    )  # fmt: skip
    size = 7 * 2**20 + random.randrange(1, 256) * 4096
    try:
        agent.start()
        device = loop_devices(size_bytes=size)
        published = await eventually(
            lambda: node_device_for(kube, node, device), timeout=60, what=f"a NodeDevice for {device.path}"
        )

        async def reported() -> bool:
            config = await kube.get_or_none(NODE_DRIVER_CONFIGS, node)
            lease = await kube.get_or_none(LEASES, LEASE_PREFIX + node, NAMESPACE)
            return bool(((config or {}).get("status") or {}).get("available")) and lease is not None

        await eventually(reported, timeout=60, what="the agent's NodeDriverConfig status and Lease")

        operator.stop()  # the webhook is down: the agent's writes fail closed
        detach(device)
        agent.wait_for_log("failed calling webhook", timeout=60)
        assert present(await kube.get(NODE_DEVICES, str(published))), "a write got through while down"
        operator.start()

        async def caught_up() -> bool:
            obj = await kube.get_or_none(NODE_DEVICES, str(published))
            return obj is None or not present(obj)

        await eventually(
            caught_up, timeout=90, what="the agent to mark the device absent once the webhook is back"
        )
        assert agent.running, agent.log()
    finally:
        agent.stop()
        await kube.request(
            "DELETE",
            PODS.path(pod["metadata"]["name"], NAMESPACE),
            body={"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
        )
        print(f"--- agent log ---\n{agent.log(200)}")
    assert "denied the request" not in agent.log(100_000), "the webhook refused one of the agent's own writes"


def present(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return all(c.get("status") != "False" for c in conditions if c.get("type") == "Present")
