"""`helm install`, `helm upgrade` and `helm uninstall` of the chart with the real helm binary on
the local control plane, starting from a cluster without the project's CRDs, as a new user's.

There is no kubelet or scheduler here: the workloads and their Pods are created by the
controller manager but never run. What is checked is what the API server and its controllers
do with the chart's objects."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from storage_driver_api.constants import STORAGE_DRIVERS
from storage_driver_api.kube import KubeClient

from tests.conftest import REPO_ROOT, apply_crds, kubectl, require, wait_established
from tests.harness import helm
from tests.harness.localcluster import ClusterConfig
from tests.harness.waiting import consistently, eventually
from tests.integration.chart.release import PROJECT_CRDS, Release, delete_namespace, delete_project_crds

pytestmark = pytest.mark.helm

NAME = "storage-driver-operator"
NAMESPACE = "storage-driver-operator"


def images(pod_list: list[dict[str, Any]]) -> set[str]:
    return {c["image"] for p in pod_list for c in p["spec"]["containers"]}


@pytest.fixture
def fresh_release(clean_cluster: KubeClient, cluster: ClusterConfig) -> Iterator[Release]:
    """No release, no namespace, none of the project's CRDs; afterwards the CRDs are back."""
    require(helm.missing())
    release = Release(cluster, NAME, NAMESPACE)
    release.uninstall(check=False)
    delete_namespace(cluster, NAMESPACE)
    delete_project_crds(cluster)
    yield release
    release.uninstall(check=False)
    delete_namespace(cluster, NAMESPACE, wait=False)
    apply_crds(cluster)


async def test_install_upgrade_uninstall(
    fresh_release: Release, kube: KubeClient, cluster: ClusterConfig, tmp_path: Path
) -> None:
    release = fresh_release
    fullname = release.fullname

    # --- install -----------------------------------------------------------------------------
    out = release.install().stdout
    assert "STATUS: deployed" in out
    assert f"installed as release {NAME} in namespace {NAMESPACE}" in out, "NOTES.txt is shown"
    for crd in PROJECT_CRDS:
        wait_established(cluster, crd)
    namespace = release.get("namespace", NAMESPACE)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for kind, name in (
        ("deployment", f"{fullname}-operator"),
        ("daemonset", f"{fullname}-agent"),
        ("daemonset", f"{fullname}-supervisor"),
        ("serviceaccount", f"{fullname}-operator"),
        ("serviceaccount", f"{fullname}-agent"),
        ("serviceaccount", f"{fullname}-supervisor"),
        ("rolebinding", f"{fullname}-agent-leases"),
        ("rolebinding", f"{fullname}-operator-leases"),
    ):
        assert release.get(kind, name, NAMESPACE) is not None, f"{kind}/{name}"
    for name in ("agent", "agent-leases", "operator", "operator-leases", "events"):
        assert release.get("clusterrole", f"{fullname}-{name}") is not None, name
    assert release.get("rolebinding", f"{fullname}-events", "default") is not None
    # The controllers accept the workloads: one Pod per component (one Node, one replica).
    for component in ("operator", "agent", "supervisor"):
        await eventually(
            lambda c=component: _async(len(release.pods(c)) == 1),  # type: ignore[misc]
            timeout=60,
            what=f"the controller manager to create the {component} Pod",
        )
    operator_pod = release.pods("operator")[0]
    assert operator_pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert operator_pod["spec"]["serviceAccountName"] == f"{fullname}-operator"
    old_agent_image = images(release.pods("agent"))
    assert images(release.pods("supervisor")) == old_agent_image

    # A user's object, to prove it survives the uninstall.
    kubectl(cluster, "apply", "-f", str(REPO_ROOT / "examples" / "storagedriver-loop.yaml"))

    # --- upgrade: a changed value takes effect ---------------------------------------------------
    # The next chart version changes a CRD: the upgrade carries it (Helm's crds/ folder would not).
    next_chart = tmp_path / "next-chart"
    shutil.copytree(helm.CHART, next_chart)
    crd_file = next_chart / "templates" / "crds" / "storagedrivers.yaml"
    crd_file.write_text(
        crd_file.read_text().replace(
            "A storage driver, the devices", "Next version, a storage driver, the devices", 1
        )
    )
    out = release.upgrade(
        "--reuse-values", "--set", "logging.level=DEBUG", "--set", "agent.image.tag=9.9.9", chart=next_chart
    ).stdout
    assert "REVISION: 2" in out
    deployment = release.get("deployment", f"{fullname}-operator", NAMESPACE)
    assert deployment is not None
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LOG_LEVEL"] == "DEBUG"
    agent_ds = release.get("daemonset", f"{fullname}-agent", NAMESPACE)
    assert agent_ds is not None
    assert agent_ds["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":9.9.9")
    upgraded_crd = release.get("crd", "storagedrivers.storage.datawarehouse.io")
    assert upgraded_crd is not None
    schema = upgraded_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["description"].startswith("Next version, "), "the CRD was not upgraded"
    # The agent rolls; the supervisor (OnDelete) keeps its Pod, and so the drivers, until deleted.
    await eventually(
        lambda: _async(
            images(release.pods("agent")) == {agent_ds["spec"]["template"]["spec"]["containers"][0]["image"]}
        ),
        timeout=90,
        what="the agent DaemonSet to roll to the new image",
    )
    await consistently(
        lambda: _async(images(release.pods("supervisor")) == old_agent_image),
        duration=5,
        what="the supervisor Pod to keep its old image (OnDelete)",
    )

    # --- uninstall: everything gone except the CRDs, the user's objects and the namespace ---------
    release.uninstall()
    for kind, name, namespace_ in (
        ("deployment", f"{fullname}-operator", NAMESPACE),
        ("daemonset", f"{fullname}-agent", NAMESPACE),
        ("daemonset", f"{fullname}-supervisor", NAMESPACE),
        ("serviceaccount", f"{fullname}-agent", NAMESPACE),
        ("clusterrole", f"{fullname}-agent", None),
        ("clusterrole", f"{fullname}-operator", None),
        ("clusterrolebinding", f"{fullname}-agent", None),
        ("rolebinding", f"{fullname}-events", "default"),
        ("secret", f"sh.helm.release.v1.{NAME}.v2", NAMESPACE),
    ):
        assert release.get(kind, name, namespace_) is None, f"{kind}/{name} left behind"
    await eventually(
        lambda: _async(not any(release.pods(c) for c in ("operator", "agent", "supervisor"))),
        timeout=90,
        what="the garbage collector to remove the Pods",
    )
    for crd_name in PROJECT_CRDS:
        assert release.get("crd", crd_name) is not None, f"{crd_name} was deleted (crds.keep)"
    assert (await kube.get(STORAGE_DRIVERS, "loop-info"))["spec"]["driverName"] == "Loop Info Driver"
    assert release.get("namespace", NAMESPACE) is not None, "the namespace is kept"
    delete_namespace(cluster, NAMESPACE, wait=False)


async def test_service_monitor_without_prometheus_operator_is_refused_and_changes_nothing(
    fresh_release: Release, cluster: ClusterConfig
) -> None:
    release = fresh_release
    result = release.helm(
        "install",
        NAME,
        str(helm.CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--set",
        "serviceMonitor.enabled=true",
        check=False,
    )
    assert result.returncode != 0
    assert "needs the Prometheus Operator's ServiceMonitor CRD" in result.stderr
    assert "serviceMonitor.enabled=false" in result.stderr
    assert release.helm("status", NAME, "--namespace", NAMESPACE, check=False).returncode != 0
    assert release.get("deployment", f"{release.fullname}-operator", NAMESPACE) is None
    assert release.get("clusterrole", f"{release.fullname}-agent") is None
    assert release.get("crd", PROJECT_CRDS[0]) is None


async def _async(value: bool) -> bool:
    await asyncio.sleep(0)
    return value
