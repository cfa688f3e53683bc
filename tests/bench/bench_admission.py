"""What the own-node admission webhook adds to an agent's NodeDevice write.

    python -m tests.bench admission [--write]

An agent's identity as the chart gives it (a ServiceAccount with the agent's NodeDevice rights,
a real TokenRequest token bound to a Pod on this machine's Node) patches its own NodeDevice
WRITES times one after another with the real storage-operator serving the webhook (the API
server calls it for every write; it looks the Pod up once, then from its cache) and as many
times with no webhook configured, in alternating rounds. Each write changes the object.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from storage_driver_api.constants import NODE_DEVICES, NODE_LABEL, node_label_value
from storage_driver_api.kube import (
    NAMESPACES,
    PODS,
    SERVICEACCOUNTS,
    VALIDATING_WEBHOOKS,
    ApiError,
    Credentials,
    KubeClient,
    Resource,
    load_kubeconfig,
)

from tests.bench.oncluster import run_on_local_cluster
from tests.bench.table import Table, percentile
from tests.harness import localcluster
from tests.harness.agentidentity import bound_token, pod_on_node, webhook_certificate
from tests.harness.processes import ComponentProcess, console_script

REPO_ROOT = Path(__file__).resolve().parents[2]
WRITES = 200
ROUNDS = 5
SETTLE_WRITES = 20
SETTLE_SECONDS = 2.0
NAMESPACE = "sdo-bench-admission"
ACCOUNT = "bench-agent"
CONFIGURATION = "sdo-bench-admission"
CLUSTER_ROLES = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole")
CLUSTER_ROLE_BINDINGS = Resource(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding"
)


async def ensure(kube: KubeClient, res: Resource, body: dict[str, Any], namespace: str | None = None) -> None:
    try:
        await kube.create(res, body, namespace=namespace)
    except ApiError as exc:
        if not exc.conflict:  # exists from an earlier run
            raise


async def agent_client(cfg: localcluster.ClusterConfig, admin: KubeClient, node: str) -> KubeClient:
    await ensure(
        admin, NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    )
    await ensure(
        admin,
        SERVICEACCOUNTS,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}},
        NAMESPACE,
    )
    rules = [
        {"apiGroups": [NODE_DEVICES.group], "resources": ["nodedevices"], "verbs": ["get", "create", "patch"]}
    ]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": ACCOUNT},
    }
    await ensure(admin, CLUSTER_ROLES, {**role, "rules": rules})
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}],
    }
    await ensure(admin, CLUSTER_ROLE_BINDINGS, binding)
    pod = await pod_on_node(admin, NAMESPACE, f"bench-agent-{int(time.time())}", node, ACCOUNT)
    token = await bound_token(admin, NAMESPACE, ACCOUNT, pod)
    credentials = Credentials(
        server=cfg.server, ca_data=(cfg.pki / "ca.crt").read_bytes(), token=token, source="bench agent"
    )
    return KubeClient(credentials)


async def write_times(agent: KubeClient, name: str, label: str, count: int = WRITES) -> list[float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        await agent.patch(NODE_DEVICES, name, {"spec": {"model": f"{label}-{i}"}})
        samples.append(time.perf_counter() - started)
    return samples


async def measure(cfg: localcluster.ClusterConfig, work: Path) -> list[Table]:
    node = localcluster.local_node_name()
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as admin:
        await localcluster.ensure_node(admin, node, localcluster.local_node_info())
        await admin.delete(VALIDATING_WEBHOOKS, CONFIGURATION)
        name = f"{node}-0123456789"
        await admin.delete(NODE_DEVICES, name)
        device = {
            "apiVersion": NODE_DEVICES.api_version,
            "kind": NODE_DEVICES.kind,
            "metadata": {"name": name, "labels": {NODE_LABEL: node_label_value(node)}},
            "spec": {
                "nodeName": node,
                "type": "loop",
                "identity": {"kind": "virtual", "value": "bench"},
                "kernelName": "loop99",
                "sysPath": "/sys/devices/virtual/block/loop99",
            },
        }
        await admin.create(NODE_DEVICES, device)
        async with await agent_client(cfg, admin, node) as agent:
            await write_times(agent, name, "warmup")
            without: list[float] = []
            with_webhook: list[float] = []
            cert, key = webhook_certificate(cfg, work / "pki")
            port = free_port()
            operator = ComponentProcess(
                "storage-operator",
                [
                    console_script("storage-operator"),
                    "--kubeconfig", str(cfg.kubeconfig),
                    "--lease-namespace", NAMESPACE,
                    "--liveness", "",
                    "--metrics", "",
                    "--webhook-address", f"127.0.0.1:{port}",
                    "--webhook-cert", str(cert),
                    "--webhook-key", str(key),
                    "--webhook-ca", str(cfg.pki / "ca.crt"),
                    "--webhook-configuration", CONFIGURATION,
                    "--agent-service-account", f"{NAMESPACE}:{ACCOUNT}",
                ],
                work / "operator.log",
            ).start()  # fmt: skip
            try:
                operator.wait_for_log("webhook configuration written", timeout=90)
                configuration = await admin.get(VALIDATING_WEBHOOKS, CONFIGURATION)
                configuration["metadata"] = {"name": CONFIGURATION}
                await write_times(agent, name, "warmup-webhook", SETTLE_WRITES)
                # Alternate, so that the shared machine's load falls on both alike.
                for round_ in range(ROUNDS):
                    with_webhook += await write_times(agent, name, f"webhook-{round_}", WRITES // ROUNDS)
                    await admin.delete(VALIDATING_WEBHOOKS, CONFIGURATION)
                    await asyncio.sleep(SETTLE_SECONDS)  # the API server's webhook informer
                    without += await write_times(agent, name, f"plain-{round_}", WRITES // ROUNDS)
                    await admin.create(VALIDATING_WEBHOOKS, configuration)
                    await asyncio.sleep(SETTLE_SECONDS)
                assert "refused" not in operator.log(10_000), operator.log()
            finally:
                operator.stop()
                await admin.delete(VALIDATING_WEBHOOKS, CONFIGURATION)
        await admin.delete(NODE_DEVICES, name)
        # Leave the cluster as it was: the Pod has no kubelet to confirm a graceful deletion.
        pods, _ = await admin.list(PODS, namespace=NAMESPACE)
        for pod in pods:
            await admin.request(
                "DELETE",
                PODS.path(pod["metadata"]["name"], NAMESPACE),
                body={"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
            )
        await admin.delete(NAMESPACES, NAMESPACE)
        await admin.delete(CLUSTER_ROLE_BINDINGS, ACCOUNT)
        await admin.delete(CLUSTER_ROLES, ACCOUNT)
    table = Table(
        "Admission: an agent's NodeDevice write",
        ["", "p50", "p95", "max"],
        command="python -m tests.bench admission",
        notes=(
            f"{WRITES} sequential merge patches of the agent's own NodeDevice in each case, in {ROUNDS} "
            "alternating rounds (the webhook configuration deleted and created again between them)."
        ),
    )
    for label, samples in (("without the webhook", without), ("with the webhook", with_webhook)):
        table.add(label, ms(percentile(samples, 50)), ms(percentile(samples, 95)), ms(max(samples)))
    table.add(
        "added",
        ms(percentile(with_webhook, 50) - percentile(without, 50)),
        ms(percentile(with_webhook, 95) - percentile(without, 95)),
        "",
    )
    return [table]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run() -> list[Table]:
    return run_on_local_cluster("admission", measure)
