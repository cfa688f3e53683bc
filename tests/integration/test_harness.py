"""Proof that the test harness is real: the control plane serves and validates CRDs, the
controller manager garbage-collects, RBAC denies, and the kernel delivers uevents."""

from __future__ import annotations

import base64
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pyudev
from storage_driver_api.kube import (
    CONFIGMAPS,
    CRDS,
    NODES,
    SECRETS,
    SERVICEACCOUNTS,
    ApiError,
    Credentials,
    KubeClient,
    Resource,
)

from tests.conftest import REPO_ROOT
from tests.harness.localcluster import ClusterConfig
from tests.harness.loopdev import LoopDevice
from tests.harness.waiting import eventually

WIDGETS = Resource("harness.test.storage.datawarehouse.io", "v1", "widgets", "Widget")

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.harness.test.storage.datawarehouse.io"},
    "spec": {
        "group": WIDGETS.group,
        "scope": "Cluster",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 10}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, size: object) -> dict[str, Any]:
    return {
        "apiVersion": WIDGETS.api_version,
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }


async def test_crd_is_served_and_validates(clean_cluster: KubeClient) -> None:
    kube = clean_cluster
    await kube.delete(CRDS, WIDGET_CRD["metadata"]["name"])
    await eventually(lambda: _absent(kube, CRDS, WIDGET_CRD["metadata"]["name"]), what="old CRD gone")
    await kube.create(CRDS, WIDGET_CRD)
    try:

        async def served() -> bool:
            try:
                await kube.list(WIDGETS)
                return True
            except ApiError:
                return False

        await eventually(served, what="widgets served")
        created = await kube.create(WIDGETS, widget("good", 3))
        assert created["spec"]["size"] == 3
        with pytest.raises(ApiError) as rejected:
            await kube.create(WIDGETS, widget("too-big", 11))
        assert rejected.value.status == 422
        assert "spec.size" in rejected.value.message
        assert await kube.get_or_none(WIDGETS, "too-big") is None
    finally:
        await kube.delete(CRDS, WIDGET_CRD["metadata"]["name"])


async def _absent(kube: KubeClient, res: Resource, name: str, namespace: str | None = None) -> bool:
    return await kube.get_or_none(res, name, namespace) is None


async def test_deleting_a_node_garbage_collects_what_it_owns(
    clean_cluster: KubeClient, make_node: Callable[..., Any], test_namespace: str
) -> None:
    kube = clean_cluster
    node = await make_node("gc-node")
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned-by-node",
            "namespace": test_namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": "gc-node", "uid": node["metadata"]["uid"]}
            ],
        },
    }
    await kube.create(CONFIGMAPS, owned, namespace=test_namespace)
    await kube.delete(NODES, "gc-node")
    await eventually(
        lambda: _absent(kube, CONFIGMAPS, "owned-by-node", test_namespace),
        timeout=60,
        what="the controller manager to garbage-collect the ConfigMap owned by the deleted Node",
    )


async def test_service_account_without_role_is_denied(
    clean_cluster: KubeClient, cluster: ClusterConfig, test_namespace: str
) -> None:
    kube = clean_cluster
    await kube.create(
        SERVICEACCOUNTS,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}},
        namespace=test_namespace,
    )

    async def token() -> str | None:
        secrets, _ = await kube.list(
            SECRETS, namespace=test_namespace, field_selector="type=kubernetes.io/service-account-token"
        )
        for secret in secrets:
            annotations = secret["metadata"].get("annotations") or {}
            if annotations.get("kubernetes.io/service-account.name") == "nobody":
                return base64.b64decode(secret["data"]["token"]).decode()
        return None

    sa_token = await eventually(token, what="a token for the service account")
    creds = Credentials(server=cluster.server, ca_data=(cluster.pki / "ca.crt").read_bytes(), token=sa_token)
    async with KubeClient(creds) as as_nobody:
        with pytest.raises(ApiError) as denied:
            await as_nobody.list(NODES)
        assert denied.value.status == 403
        assert "system:serviceaccount:sdo-test:nobody" in denied.value.message
        with pytest.raises(ApiError) as denied_write:
            await as_nobody.create(
                CONFIGMAPS,
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
                namespace=test_namespace,
            )
        assert denied_write.value.status == 403


def test_loop_attach_produces_a_kernel_uevent(loop_devices: Callable[..., LoopDevice]) -> None:
    context = pyudev.Context()
    monitor = pyudev.Monitor.from_netlink(context, source="kernel")
    monitor.filter_by("block")
    monitor.start()
    device = loop_devices(size_bytes=4 * 1024 * 1024)
    deadline = time.monotonic() + 10
    seen: list[tuple[str, str]] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([monitor], [], [], 0.5)
        if not ready:
            continue
        event = monitor.poll(timeout=0)
        if event is None:
            continue
        seen.append((str(event.action), str(event.sys_name)))
        if event.sys_name == device.name and event.action in ("add", "change"):
            return
    raise AssertionError(f"no uevent for {device.name} within 10s; saw {seen}")


STOPPED_RUN = """
import pathlib, time
import pytest

@pytest.fixture
def something_started():
    yield
    pathlib.Path("cleaned-up").write_text("yes")

def test_runs_until_stopped(something_started):
    pathlib.Path("started").write_text("yes")
    time.sleep(60)
"""


def test_a_test_run_stopped_with_sigterm_still_runs_its_fixtures_clean_up(tmp_path: Path) -> None:
    """The plugin every test run loads (tests/conftest.py): a CI timeout or a `kill` leaves no
    stopped control plane, loop device or driver host behind."""
    (tmp_path / "test_stopped.py").write_text(STOPPED_RUN)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.harness.unwind", "test_stopped.py"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as run:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert run.poll() is None and time.monotonic() < deadline, run.stdout and run.stdout.read()
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=30)
    assert (tmp_path / "cleaned-up").exists(), output.decode()
