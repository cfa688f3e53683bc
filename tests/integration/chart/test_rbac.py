"""RBAC proved with the chart's own ServiceAccounts: tokens from the control plane (1.20's token
controller writes them into Secrets), real requests, and SelfSubjectAccessReviews for every
right docs/security.md lists and for what must stay refused."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from storage_driver_api.constants import NODE_DEVICES, NODE_DRIVER_CONFIGS, STORAGE_DRIVERS
from storage_driver_api.kube import CONFIGMAPS, CRDS, EVENTS, LEASES, NODES, SECRETS, ApiError, KubeClient

from tests.conftest import REPO_ROOT, require
from tests.harness import helm
from tests.harness.localcluster import ClusterConfig, local_node_name
from tests.integration.chart.rbac_table import Grant, documented_grants
from tests.integration.chart.release import Release, installed

pytestmark = pytest.mark.helm

RELEASE = "sdo-rbac"
NAMESPACE = "sdo-rbac"
GROUP = "storage.datawarehouse.io"
ALL_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


@pytest.fixture(scope="module")
def release(cluster: ClusterConfig) -> Iterator[Release]:
    require(helm.missing())
    # The CRDs come from `kubectl apply -f crds/` (conftest): the chart leaves them alone.
    with installed(cluster, RELEASE, NAMESPACE, "--set", "crds.install=false") as rel:
        yield rel


@pytest.fixture
async def as_agent(release: Release, clean_cluster: KubeClient) -> AsyncIterator[KubeClient]:
    async with KubeClient(release.credentials("agent")) as client:
        yield client


@pytest.fixture
async def as_operator(release: Release, clean_cluster: KubeClient) -> AsyncIterator[KubeClient]:
    async with KubeClient(release.credentials("operator")) as client:
        yield client


async def denied(call: Any) -> ApiError:
    with pytest.raises(ApiError) as error:
        await call
    assert error.value.status == 403, error.value
    return error.value


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_device(node: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "NodeDevice",
        "metadata": {
            "name": f"{node}-rbac0000",
            "labels": {f"{GROUP}/node": node, f"{GROUP}/device-type": "loop"},
        },
        "spec": {
            "nodeName": node,
            "type": "loop",
            "identity": {"kind": "virtual", "value": f"{node}/loop7//rbac.img"},
            "kernelName": "loop7",
            "devPath": "/dev/loop7",
            "sysPath": "/sys/devices/virtual/block/loop7",
        },
    }


def storage_driver() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "StorageDriver",
        "metadata": {"name": "rbac-check"},
        "spec": {
            "driverName": "RBAC Check",
            "version": "1.0.0",
            "supportedDevices": ["loop"],
            "source": {"hostPath": {"path": "rbac_check.py"}},
        },
    }


# --- the agent -----------------------------------------------------------------------------------


async def test_agent_can_do_its_job(
    as_agent: KubeClient, clean_cluster: KubeClient, release: Release, test_namespace: str
) -> None:
    node = local_node_name()
    assert (await as_agent.get(NODES, node))["metadata"]["name"] == node
    device = await as_agent.create(NODE_DEVICES, node_device(node))
    name = device["metadata"]["name"]
    listed, _ = await as_agent.list(NODE_DEVICES, label_selector=f"{GROUP}/node={node}")
    assert [d["metadata"]["name"] for d in listed] == [name]
    await as_agent.patch(NODE_DEVICES, name, {"metadata": {"labels": {"checked": "yes"}}})
    condition = {
        "type": "Present",
        "status": "True",
        "reason": "Seen",
        "message": "seen",
        "lastTransitionTime": now(),
    }
    await as_agent.patch(NODE_DEVICES, name, {"status": {"conditions": [condition]}}, subresource="status")

    await as_agent.create(
        NODE_DRIVER_CONFIGS,
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "NodeDriverConfig",
            "metadata": {"name": node},
            "spec": {},
        },
    )
    reported = await as_agent.patch(
        NODE_DRIVER_CONFIGS,
        node,
        {"status": {"observedGeneration": 1, "bootId": "rbac"}},
        subresource="status",
    )
    assert reported["status"]["bootId"] == "rbac"
    # The agent reads its NodeDriverConfig by watching it, never through the status subresource.
    await denied(as_agent.request("GET", NODE_DRIVER_CONFIGS.path(node, subresource="status")))

    # configMap driver sources: readable in the allowed namespaces (default: the release's) only.
    for namespace in (NAMESPACE, test_namespace):
        with contextlib.suppress(ApiError):
            await clean_cluster.delete(CONFIGMAPS, "driver-source", namespace)
        await clean_cluster.create(
            CONFIGMAPS,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "driver-source"},
                "data": {"d.py": "x"},
            },
            namespace=namespace,
        )
    assert (await as_agent.get(CONFIGMAPS, "driver-source", NAMESPACE))["data"] == {"d.py": "x"}
    await denied(as_agent.get(CONFIGMAPS, "driver-source", test_namespace))

    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": f"storage-agent-{node}"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 30, "renewTime": now()},
    }
    created = await as_agent.create(LEASES, lease, namespace=release.namespace)
    await as_agent.patch(
        LEASES, created["metadata"]["name"], {"spec": {"renewTime": now()}}, namespace=release.namespace
    )
    await denied(as_agent.get(LEASES, created["metadata"]["name"], release.namespace))  # renews by patch only
    await clean_cluster.delete(LEASES, created["metadata"]["name"], namespace=release.namespace)

    event = await as_agent.create(
        EVENTS,
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": "rbac-"},
            "involvedObject": {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodeDevice", "name": name},
            "reason": "Loaded",
            "message": "the agent may post Events",
            "type": "Normal",
            "count": 1,
        },
        namespace="default",
    )
    await denied(as_agent.patch(EVENTS, event["metadata"]["name"], {"count": 2}, namespace="default"))
    await as_agent.delete(NODE_DEVICES, name)


async def test_agent_cannot_change_storage_drivers(as_agent: KubeClient, clean_cluster: KubeClient) -> None:
    error = await denied(as_agent.create(STORAGE_DRIVERS, storage_driver()))
    assert "storage-driver-operator-agent" in error.message
    await clean_cluster.create(STORAGE_DRIVERS, storage_driver())
    await denied(as_agent.patch(STORAGE_DRIVERS, "rbac-check", {"spec": {"priority": 5}}))
    await denied(
        as_agent.patch(STORAGE_DRIVERS, "rbac-check", {"status": {"matchingNodes": 5}}, subresource="status")
    )
    await denied(as_agent.delete(STORAGE_DRIVERS, "rbac-check"))
    await denied(as_agent.list(STORAGE_DRIVERS))


async def test_agent_cannot_read_secrets(as_agent: KubeClient, release: Release) -> None:
    for namespace in (release.namespace, "default", "kube-system"):
        await denied(as_agent.list(SECRETS, namespace=namespace))
    secrets = [s["metadata"]["name"] for s in release.list_objects("secrets", release.namespace)]
    token_secret = next(s for s in secrets if s.startswith(f"{release.service_account('agent')}-token-"))
    await denied(as_agent.get(SECRETS, token_secret, release.namespace))


async def test_agent_cannot_write_the_node_spec_or_other_namespaces(
    as_agent: KubeClient, clean_cluster: KubeClient, release: Release
) -> None:
    node = local_node_name()
    await clean_cluster.create(
        NODE_DRIVER_CONFIGS,
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "NodeDriverConfig",
            "metadata": {"name": node},
            "spec": {},
        },
    )
    await denied(as_agent.patch(NODE_DRIVER_CONFIGS, node, {"spec": {"maxLoadedDrivers": 1}}))
    await denied(as_agent.delete(NODE_DRIVER_CONFIGS, node))
    await denied(as_agent.patch(NODES, node, {"metadata": {"labels": {"x": "y"}}}))
    await denied(as_agent.list(CONFIGMAPS, namespace="default"))
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "elsewhere"},
        "spec": {},
    }
    await denied(as_agent.create(LEASES, lease, namespace="default"))
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "x-"},
        "involvedObject": {"name": "x"},
    }
    await denied(as_agent.create(EVENTS, event, namespace=release.namespace))


# --- the operator ----------------------------------------------------------------------------------


async def test_operator_can_do_its_job(
    as_operator: KubeClient, clean_cluster: KubeClient, release: Release
) -> None:
    node = local_node_name()
    await clean_cluster.create(STORAGE_DRIVERS, storage_driver())
    listed, _ = await as_operator.list(STORAGE_DRIVERS)
    assert [d["metadata"]["name"] for d in listed] == ["rbac-check"]
    await as_operator.patch(STORAGE_DRIVERS, "rbac-check", {"metadata": {"finalizers": [f"{GROUP}/unload"]}})
    await as_operator.patch(
        STORAGE_DRIVERS,
        "rbac-check",
        {"status": {"observedGeneration": 1, "matchingNodes": 0}},
        subresource="status",
    )
    await as_operator.patch(STORAGE_DRIVERS, "rbac-check", {"metadata": {"finalizers": None}})
    await as_operator.list(NODE_DEVICES)
    assert node in [n["metadata"]["name"] for n in (await as_operator.list(NODES))[0]]
    await as_operator.create(
        NODE_DRIVER_CONFIGS,
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "NodeDriverConfig",
            "metadata": {"name": node},
            "spec": {},
        },
    )
    await as_operator.patch(NODE_DRIVER_CONFIGS, node, {"spec": {"drivers": []}})
    # Node deletion garbage-collects NodeDriverConfigs; the operator's sweep deletes those a
    # gone Node left without an owner.
    await as_operator.delete(NODE_DRIVER_CONFIGS, node)
    await as_operator.list(LEASES, namespace=release.namespace)
    crds, _ = await as_operator.list(CRDS)
    assert f"storagedrivers.{GROUP}" in {c["metadata"]["name"] for c in crds}
    await as_operator.create(
        EVENTS,
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": "rbac-"},
            "involvedObject": {
                "apiVersion": f"{GROUP}/v1alpha1",
                "kind": "StorageDriver",
                "name": "rbac-check",
            },
            "reason": "Progressing",
            "message": "the operator may post Events",
            "type": "Normal",
        },
        namespace="default",
    )


async def test_operator_cannot_read_secrets_or_write_what_agents_own(
    as_operator: KubeClient, clean_cluster: KubeClient, release: Release
) -> None:
    node = local_node_name()
    for namespace in (release.namespace, "default", "kube-system"):
        error = await denied(as_operator.list(SECRETS, namespace=namespace))
    assert "storage-driver-operator-operator" in error.message
    await clean_cluster.create(
        NODE_DRIVER_CONFIGS,
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "NodeDriverConfig",
            "metadata": {"name": node},
            "spec": {},
        },
    )
    await denied(
        as_operator.patch(NODE_DRIVER_CONFIGS, node, {"status": {"bootId": "x"}}, subresource="status")
    )
    await denied(as_operator.create(NODE_DEVICES, node_device(node)))
    await denied(as_operator.create(STORAGE_DRIVERS, storage_driver()))
    # It may create Leases (its leader Lease), but update only its leader Lease: never an agent's.
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": f"storage-agent-{node}"},
    }
    with contextlib.suppress(ApiError):
        await clean_cluster.create(LEASES, {**lease, "spec": {}}, namespace=release.namespace)
    await denied(
        as_operator.patch(
            LEASES, f"storage-agent-{node}", {"spec": {"holderIdentity": "x"}}, namespace=release.namespace
        )
    )
    current = await clean_cluster.get(LEASES, f"storage-agent-{node}", release.namespace)
    await denied(as_operator.replace(LEASES, f"storage-agent-{node}", current, namespace=release.namespace))
    await denied(as_operator.patch(NODES, node, {"metadata": {"labels": {"x": "y"}}}))


# --- every documented right, and nothing else, by SelfSubjectAccessReview ---------------------------


async def can(client: KubeClient, verb: str, group: str, resource: str, namespace: str | None) -> bool:
    plural, _, subresource = resource.partition("/")
    attributes: dict[str, Any] = {"verb": verb, "group": group, "resource": plural}
    if subresource:
        attributes["subresource"] = subresource
    if namespace:
        attributes["namespace"] = namespace
    review = await client.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        body={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        },
    )
    return bool(review["status"].get("allowed"))


CHECKED_RESOURCES = {
    ("", "secrets"),
    ("", "configmaps"),
    ("", "nodes"),
    ("", "events"),
    ("", "pods"),
    ("coordination.k8s.io", "leases"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    (GROUP, "storagedrivers"),
    (GROUP, "storagedrivers/status"),
    (GROUP, "nodedevices"),
    (GROUP, "nodedevices/status"),
    (GROUP, "nodedriverconfigs"),
    (GROUP, "nodedriverconfigs/status"),
    ("rbac.authorization.k8s.io", "clusterroles"),
}


@pytest.mark.parametrize("component", ["agent", "operator"])
async def test_access_reviews_match_the_documented_rights_exactly(
    component: str, release: Release, clean_cluster: KubeClient
) -> None:
    grants = {g for g in documented_grants(REPO_ROOT / "docs" / "security.md") if g.component == component}
    namespaces = {"cluster": None, "release namespace": release.namespace, "default namespace": "default"}
    mismatches = []
    async with KubeClient(release.credentials(component)) as client:
        for (group, resource), verb, where in itertools.product(
            sorted(CHECKED_RESOURCES),
            ALL_VERBS,
            ("cluster", "release namespace", "default namespace", "other"),
        ):
            namespace = namespaces.get(where, "kube-system")
            expected = any(
                _matches(g, group, resource, verb) and g.scope in ("cluster", where) for g in grants
            )
            allowed = await can(client, verb, group, resource, namespace)
            if allowed != expected:
                mismatches.append(f"{verb} {group or 'core'}/{resource} in {where}: allowed={allowed}")
    assert not mismatches, "\n".join(mismatches)


def _matches(grant: Grant, group: str, resource: str, verb: str) -> bool:
    return grant.api_group == group and grant.resource == resource and verb in grant.verbs
