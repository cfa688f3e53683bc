"""Two real storage-operator replicas with the chart's operator token electing a leader by the
Lease: exactly one reconciles; SIGKILL of the leader hands over within the Lease duration and
the new leader writes nothing for a converged cluster; a leader paused with SIGSTOP (as a
network partition looks from the API server) writes nothing once it resumes, and exits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from storage_driver_api.constants import (
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import LEASES, PODS, VALIDATING_WEBHOOKS, ApiError, Credentials, KubeClient

from tests.api_cases import apply_changes, valid_storage_driver
from tests.conftest import NodeFactory, require
from tests.harness import accounts, helm, localcluster
from tests.harness.agentidentity import bound_token, pod_on_node, webhook_certificate
from tests.harness.auditlog import AuditLog, Write
from tests.harness.replicas import LEASE_DURATION, RETRY, Replica, free_port, start_replica, wait_for_leader
from tests.harness.waiting import eventually
from tests.integration.chart.release import Release, installed

pytestmark = pytest.mark.helm

RELEASE = "sdo-leader"
NAMESPACE = "sdo-leader"
NODE = "leader-node"
REPLICA_NODE = "leader-replicas"  # where the replicas' Pods are bound (no kubelet runs them)
LEASE = "storage-operator-leader"


@pytest.fixture(scope="module")
def release(cluster: localcluster.ClusterConfig) -> Iterator[Release]:
    require(helm.missing())
    with installed(
        cluster, RELEASE, NAMESPACE, "--set", "crds.install=false", "--set", "operator.replicas=2"
    ) as rel:
        yield rel


@pytest.fixture
async def replicas(
    release: Release, clean_cluster: KubeClient, make_node: NodeFactory, tmp_path: Path
) -> AsyncIterator[list[Replica]]:
    """Two replicas, each with a token bound to a Pod of its own name, as each replica's pod's
    token is: the API server's audit log tells their writes apart."""
    kube = clean_cluster
    await make_node(REPLICA_NODE)
    account = release.service_account("operator")
    started: list[Replica] = []
    try:
        for identity in ("replica-a", "replica-b"):
            pod = await pod_on_node(kube, NAMESPACE, identity, REPLICA_NODE, account)
            token = await bound_token(kube, NAMESPACE, account, pod)
            kubeconfig = accounts.write_token_kubeconfig(
                release.cluster, tmp_path / f"{identity}.kubeconfig", release.username("operator"), token
            )
            started.append(start_replica(identity, kubeconfig, NAMESPACE, tmp_path, log_level="DEBUG"))
        yield started
    finally:
        for replica in started:
            replica.process.signal(signal.SIGCONT)
            replica.process.stop()
        for replica in started:
            print(f"--- {replica.identity} ---\n{replica.process.log(80)}")
        for identity in ("replica-a", "replica-b"):
            await delete_pod_now(kube, identity)


async def delete_pod_now(kube: KubeClient, name: str) -> None:
    """No kubelet confirms the deletion of a Pod on a simulated node: delete it at once."""
    with contextlib.suppress(ApiError):
        await kube.request(
            "DELETE",
            PODS.path(name, NAMESPACE),
            body={"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
        )


def overlapping(writes: list[Write], old: Replica, new: Replica) -> list[Write]:
    """The old leader's writes that the API server completed after the new leader took the
    Lease: what a deposed leader must never do."""
    taken = next(
        i
        for i, w in enumerate(writes)
        if w.pod == new.identity and w.succeeded and w.resource == "leases" and w.name == LEASE
    )
    return [w for w in writes[taken:] if w.pod == old.identity and w.succeeded]


def driver_body(name: str) -> dict[str, Any]:
    body = valid_storage_driver()
    body["metadata"] = {"name": name}
    body["spec"] = apply_changes(
        body["spec"],
        {
            "driverName": name,
            "supportedDevices": ["loop"],
            "deviceSelector": [],
            "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": NODE}},
            "source": {"hostPath": {"path": f"{name}.py"}},
        },
    )
    return body


async def scene(kube: KubeClient, make_node: NodeFactory, drivers: list[str]) -> None:
    """A node with one device and the driver files its agent would report."""
    await make_node(NODE)
    await kube.create(NODE_DEVICES, device_body())
    config = {
        "apiVersion": NODE_DRIVER_CONFIGS.api_version,
        "kind": NODE_DRIVER_CONFIGS.kind,
        "metadata": {"name": NODE},
    }
    await kube.create(NODE_DRIVER_CONFIGS, {**config, "spec": {"drivers": []}})
    await report(kube, drivers)


async def report(kube: KubeClient, drivers: list[str]) -> None:
    available = [
        {
            "file": f"{d}.py",
            "sha256": "a" * 64,
            "driverName": d,
            "version": "1.1.0",
            "supportedDevices": ["loop"],
        }
        for d in drivers
    ]
    await kube.patch(NODE_DRIVER_CONFIGS, NODE, {"status": {"available": available}}, subresource="status")


async def planned(kube: KubeClient, driver: str) -> bool:
    spec = (await kube.get(NODE_DRIVER_CONFIGS, NODE)).get("spec") or {}
    return any(d.get("name") == driver for d in spec.get("drivers") or [])


async def versions(kube: KubeClient) -> dict[str, str]:
    found = {}
    for res in (NODE_DRIVER_CONFIGS, STORAGE_DRIVERS):
        items, _ = await kube.list(res)
        found.update(
            {f"{res.plural}/{i['metadata']['name']}": i["metadata"]["resourceVersion"] for i in items}
        )
    return found


async def converged(kube: KubeClient, driver: str) -> None:
    await eventually(lambda: planned(kube, driver), timeout=60, what=f"the leader to plan {driver}")

    async def observed() -> bool:
        status = (await kube.get(STORAGE_DRIVERS, driver)).get("status") or {}
        return bool(status.get("observedGeneration"))

    await eventually(observed, timeout=60, what=f"the leader to write {driver}'s status")
    await asyncio.sleep(3)  # status rounds settle


async def test_exactly_one_replica_leads_and_writes(
    replicas: list[Replica], clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    await scene(kube, make_node, ["one-leader"])
    leader = wait_for_leader(replicas)
    (follower,) = [r for r in replicas if r is not leader]
    await kube.create(STORAGE_DRIVERS, driver_body("one-leader"))
    await converged(kube, "one-leader")
    lease = await kube.get(LEASES, LEASE, NAMESPACE)
    assert lease["spec"]["holderIdentity"] == leader.identity
    assert "node spec written" in leader.process.log(100_000)
    assert not follower.leading and "node spec written" not in follower.process.log(100_000)
    assert follower.process.running


async def test_sigkill_of_the_leader_hands_over_and_the_new_leader_writes_nothing(
    replicas: list[Replica], clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    await scene(kube, make_node, ["handover"])
    leader = wait_for_leader(replicas)
    (follower,) = [r for r in replicas if r is not leader]
    await kube.create(STORAGE_DRIVERS, driver_body("handover"))
    await converged(kube, "handover")
    before = await versions(kube)
    leader.process.kill()
    # How long the handover takes is measured by `python -m tests.bench failover`.
    wait_for_leader([follower], timeout=LEASE_DURATION + 4 * RETRY + 30)
    await eventually(lambda: asyncio.sleep(0, follower.ready_writes() is not None), timeout=60, what="ready")
    assert follower.ready_writes() == 0, follower.process.log()
    await asyncio.sleep(3)
    assert await versions(kube) == before, "the new leader wrote to a converged cluster"


async def test_a_leader_stopped_cleanly_hands_over_at_once(
    replicas: list[Replica], clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    """A rolling update stops the leader with SIGTERM: it releases the Lease once it has stopped
    writing, so the other replica leads after one retry instead of the whole Lease duration."""
    kube = clean_cluster
    leader = wait_for_leader(replicas)
    (follower,) = [r for r in replicas if r is not leader]
    audit = AuditLog(localcluster.ClusterConfig.from_env())
    assert leader.process.stop() == 0, leader.process.log()
    assert "released the leadership" in leader.process.log(100_000)
    # Released, not left to expire: the Lease no longer names the stopped leader (it is empty,
    # or already the follower's). The time it takes: `python -m tests.bench failover`.
    lease = await kube.get(LEASES, LEASE, NAMESPACE)
    assert lease["spec"].get("holderIdentity") in ("", None, follower.identity), lease["spec"]
    wait_for_leader([follower], timeout=LEASE_DURATION + 30)
    writes = audit.writes()
    assert any(w.pod == leader.identity and w.resource == "leases" and w.succeeded for w in writes), writes
    assert overlapping(writes, leader, follower) == []


async def test_a_paused_leader_writes_nothing_after_another_took_over(
    replicas: list[Replica], clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    await scene(kube, make_node, ["before-pause", "during-pause"])
    leader = wait_for_leader(replicas)
    (follower,) = [r for r in replicas if r is not leader]
    audit = AuditLog(localcluster.ClusterConfig.from_env())
    await kube.create(STORAGE_DRIVERS, driver_body("before-pause"))
    await converged(kube, "before-pause")
    leader.process.signal(signal.SIGSTOP)
    paused_at = leader.log_size()
    wait_for_leader([follower], timeout=LEASE_DURATION + 4 * RETRY + 10)
    # A change the paused leader has not seen: only the new leader may act on it.
    await kube.create(STORAGE_DRIVERS, driver_body("during-pause"))
    await converged(kube, "during-pause")
    leader.process.signal(signal.SIGCONT)
    assert leader.process.process is not None
    code = await asyncio.to_thread(leader.process.process.wait, 30)
    after = leader.log_since(paused_at)
    assert code == 3, after
    assert "lost the leadership" in after
    assert "node spec written" not in after and "status written" not in after, after
    # The new leader did that work instead.
    assert "status written" in follower.process.log(100_000)
    lease = await kube.get(LEASES, LEASE, NAMESPACE)
    assert lease["spec"]["holderIdentity"] == follower.identity
    # Counted by the API server, kopf's writes (finalizers, annotations) included: the old
    # leader wrote before the pause (so its writes are seen) and nothing after the takeover.
    writes = audit.writes()
    assert any(w.pod == leader.identity and w.resource.startswith("storagedrivers") for w in writes), writes
    assert overlapping(writes, leader, follower) == []


async def test_every_replica_serves_the_webhook_so_a_dead_leader_does_not_stop_the_agents(
    release: Release, clean_cluster: KubeClient, make_node: NodeFactory, tmp_path: Path
) -> None:
    """Both replicas listen on one port (SO_REUSEPORT: the kernel spreads the API server's
    connections over them, as a Service spreads them over pods). Right after the leader is
    killed, before the follower has taken over, an agent's writes are still admitted."""
    kube = clean_cluster
    await make_node(NODE)
    kubeconfig = accounts.write_token_kubeconfig(
        release.cluster,
        tmp_path / "operator.kubeconfig",
        release.username("operator"),
        release.token("operator"),
    )
    cert, key = webhook_certificate(release.cluster, tmp_path / "pki")
    port = free_port()
    configuration = release.fullname  # the chart's name: the only one the operator may rewrite
    webhook_args = [
        "--webhook-address", f"127.0.0.1:{port}",
        "--webhook-cert", str(cert),
        "--webhook-key", str(key),
        "--webhook-ca", str(release.cluster.pki / "ca.crt"),
        "--webhook-configuration", configuration,
        "--agent-service-account", f"{NAMESPACE}:{release.service_account('agent')}",
    ]  # fmt: skip
    account = release.service_account("agent")
    pod = await pod_on_node(kube, NAMESPACE, "agent-leader-node", NODE, account)
    token = await bound_token(kube, NAMESPACE, account, pod)
    credentials = Credentials(
        server=release.cluster.server, ca_data=(release.cluster.pki / "ca.crt").read_bytes(), token=token
    )
    started: list[Replica] = []
    try:
        for identity in ("webhook-a", "webhook-b"):
            started.append(start_replica(identity, kubeconfig, NAMESPACE, tmp_path, extra_args=webhook_args))
            started[-1].process.wait_for_log("webhook configuration written", timeout=60)
        leader = wait_for_leader(started)
        (follower,) = [r for r in started if r is not leader]
        async with KubeClient(credentials) as agent:
            name = f"{NODE}-0123456789"

            async def admitted(model: str) -> bool:
                await agent.patch(NODE_DEVICES, name, {"spec": {"model": model}})
                return True

            await agent.create(NODE_DEVICES, device_body())
            with pytest.raises(ApiError) as refused:
                await agent.create(NODE_DEVICES, {**device_body(), "metadata": {"name": "other-0123456789"}})
            assert refused.value.status == 403 and "denied the request" in refused.value.message
            leader.process.kill()
            for i in range(20):  # many connections: each would reach the dead one if it still served
                await admitted(f"after-kill-{i}")
            assert not follower.leading, "the follower took over already; the check proves nothing"
    finally:
        for replica in started:
            replica.process.stop()
        # Fail-closed entries must not outlive the test.
        await kube.delete(VALIDATING_WEBHOOKS, configuration)
        await delete_pod_now(kube, pod["metadata"]["name"])


def device_body() -> dict[str, Any]:
    return {
        "apiVersion": NODE_DEVICES.api_version,
        "kind": NODE_DEVICES.kind,
        "metadata": {"name": f"{NODE}-0123456789", "labels": {NODE_LABEL: node_label_value(NODE)}},
        "spec": {
            "nodeName": NODE,
            "type": "loop",
            "identity": {"kind": "virtual", "value": "x"},
            "kernelName": "loop9",
            "sysPath": "/sys/devices/virtual/block/loop9",
        },
    }
