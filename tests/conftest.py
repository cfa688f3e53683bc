"""Shared fixtures: the real local control plane, a clean slate per test, simulated Nodes,
real loop devices, and the rule that nothing skips in CI."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from storage_driver_api.constants import NODE_DEVICES, NODE_DRIVER_CONFIGS, STORAGE_DRIVERS
from storage_driver_api.kube import NAMESPACES, NODES, KubeClient, load_kubeconfig

from tests.harness import localcluster
from tests.harness.loopdev import LoopDevice, attach, detach, loop_devices_available

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SIMULATED_LABEL = "test.storage.datawarehouse.io/simulated"
TEST_NAMESPACE_LABEL = "test.storage.datawarehouse.io/namespace"
LAYER_BY_DIR = {"unit": "unit", "integration": "integration", "e2e": "e2e", "pods": "pods"}
pytest_plugins = ["tests.harness.unwind"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the layer folder it lives in, so `-m unit` etc. select layers."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO_ROOT).parts
        if len(parts) > 1 and parts[1] in LAYER_BY_DIR:
            item.add_marker(getattr(pytest.mark, LAYER_BY_DIR[parts[1]]))


def pytest_collect_file(file_path: Path) -> None:
    """Property tests run without hypothesis's timing checks (a deadline per example, a health
    check for slow input generation): on a busy shared machine those fail for the machine, not
    the code. Set before the first module that uses hypothesis is imported (its decorators read
    the settings then), and only then, so that runs without property tests do not import it."""
    if file_path.suffix == ".py" and "hypothesis" in file_path.read_text():
        _load_hypothesis_profile()


@functools.cache
def _load_hypothesis_profile() -> None:
    from hypothesis import HealthCheck, settings

    settings.register_profile("shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("shared-machine")


# The report of a test's call, for fixtures that add what a failure needs (tests/pods).
CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI every prerequisite exists, so a skip is a broken environment: report it as a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may skip: {reason}"


def require(missing: str | None) -> None:
    """Skip (outside CI) or fail (in CI) when a prerequisite is missing; `missing` says what."""
    if missing:
        if IN_CI:
            pytest.fail(f"prerequisite missing in CI: {missing}")
        pytest.skip(missing)


# --- control plane ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster() -> Iterator[localcluster.ClusterConfig]:
    """The local control plane: reused when running, else started for the session and stopped after."""
    cfg = localcluster.ClusterConfig.from_env()
    started = False
    if not localcluster.is_up(cfg):
        require(
            None
            if (cfg.bin_dir / "kube-apiserver").exists()
            else f"Kubernetes binaries not built in {cfg.bin_dir}: run 'make kube-binaries'"
        )
        localcluster.up(cfg)
        started = True
    apply_crds(cfg)
    yield cfg
    if started and os.environ.get("SDO_KEEP_CLUSTER") != "1":
        localcluster.down(cfg)


def kubectl(cfg: localcluster.ClusterConfig, *args: str, check: bool = True, input: str | None = None) -> str:
    result = subprocess.run(
        [str(cfg.kubectl), f"--kubeconfig={cfg.kubeconfig}", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout + result.stderr


def wait_established(cfg: localcluster.ClusterConfig, crd: str, timeout: float = 60.0) -> None:
    """Until the CRD is Established. (Not `kubectl wait`: kubectl 1.20 fails at once, "accessor
    error", on a CRD the API server has not yet given any status condition.)"""
    query = '{.status.conditions[?(@.type=="Established")].status}'
    deadline = time.monotonic() + timeout
    while kubectl(cfg, "get", f"crd/{crd}", "-o", f"jsonpath={query}", check=False).strip() != "True":
        if time.monotonic() > deadline:
            raise AssertionError(f"crd/{crd} not Established within {timeout}s")
        time.sleep(0.2)


def apply_crds(cfg: localcluster.ClusterConfig) -> None:
    kubectl(cfg, "apply", "-f", str(REPO_ROOT / "crds"))
    for crd in ("storagedrivers", "nodedevices", "nodedriverconfigs"):
        wait_established(cfg, f"{crd}.storage.datawarehouse.io")


@pytest.fixture
async def kube(cluster: localcluster.ClusterConfig) -> AsyncIterator[KubeClient]:
    async with KubeClient(load_kubeconfig(cluster.kubeconfig)) as client:
        yield client


async def _remove_all(client: KubeClient) -> None:
    for res in (STORAGE_DRIVERS, NODE_DRIVER_CONFIGS, NODE_DEVICES):
        items, _ = await client.list(res)
        for item in items:
            name = item["metadata"]["name"]
            if item["metadata"].get("finalizers"):
                await client.patch(res, name, {"metadata": {"finalizers": None}})
            await client.delete(res, name)
    nodes, _ = await client.list(NODES, label_selector=SIMULATED_LABEL)
    for node in nodes:
        await client.delete(NODES, node["metadata"]["name"])
    namespaces, _ = await client.list(NAMESPACES, label_selector=TEST_NAMESPACE_LABEL)
    for ns in namespaces:
        await client.delete(NAMESPACES, ns["metadata"]["name"])


@pytest.fixture
async def clean_cluster(kube: KubeClient, cluster: localcluster.ClusterConfig) -> AsyncIterator[KubeClient]:
    """A control plane with none of the project's objects and no simulated Nodes, before and after."""
    await _remove_all(kube)
    await localcluster.ensure_local_node(kube)
    yield kube
    await _remove_all(kube)


NodeFactory = Callable[..., Any]


@pytest.fixture
async def make_node(clean_cluster: KubeClient) -> NodeFactory:
    """Creates simulated Nodes: make_node(name, kernel='6.1.0-18-amd64', arch='amd64', labels={})."""

    async def factory(
        name: str,
        *,
        kernel: str = "6.1.0-18-amd64",
        arch: str = "amd64",
        os_name: str = "linux",
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        info = {
            "kernelVersion": kernel,
            "osImage": "Simulated Linux",
            "operatingSystem": os_name,
            "architecture": arch,
            "kubeletVersion": "v1.20.2",
            "kubeProxyVersion": "v1.20.2",
            "containerRuntimeVersion": "",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        }
        return await localcluster.ensure_node(
            clean_cluster, name, info, {SIMULATED_LABEL: "true", **(labels or {})}
        )

    return factory


@pytest.fixture
async def test_namespace(clean_cluster: KubeClient) -> str:
    name = "sdo-test"
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {TEST_NAMESPACE_LABEL: "true"}},
    }
    for _ in range(100):  # a previous test's namespace may still be terminating
        existing = await clean_cluster.get_or_none(NAMESPACES, name)
        if existing is None:
            await clean_cluster.create(NAMESPACES, body)
            return name
        if not existing["metadata"].get("deletionTimestamp"):
            return name
        await asyncio.sleep(0.2)
    raise AssertionError(f"namespace {name} stayed terminating")


# --- images ----------------------------------------------------------------------------------

IMAGE_NAMES = ("storage-operator", "storage-agent")


def image_build_missing() -> str | None:
    if os.geteuid() != 0:
        return "building images with buildah (chroot isolation) and debootstrap needs root"
    for tool in ("buildah", "debootstrap", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: run 'make deps'"
    return None


@pytest.fixture(scope="session")
def project_images() -> dict[str, Path]:
    """The project's images of the current tree (`make images`), built once per session."""
    require(image_build_missing())
    result = subprocess.run(
        [str(REPO_ROOT / "hack" / "build-images.sh")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, f"make images failed:\n{result.stdout}\n{result.stderr}"
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    archives = {name: REPO_ROOT / ".images" / f"{name}-{version}.oci.tar" for name in IMAGE_NAMES}
    for archive in archives.values():
        assert archive.is_file(), f"{archive} was not written"
    return archives


def node_missing(cfg: localcluster.ClusterConfig) -> str | None:
    """Why this cluster cannot run pods, if it cannot."""
    if cfg.with_node:
        return None
    return "the local cluster runs without a node (SDO_NODE=off): no kubelet runs the chart's pods"


@pytest.fixture(scope="session")
def node_images(cluster: localcluster.ClusterConfig, project_images: dict[str, Path]) -> dict[str, Path]:
    """The project's images and the pause image, in the local node's containerd."""
    require(node_missing(cluster))
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO_ROOT / "hack" / "node-images.sh"), "import"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SDO_CLUSTER_DIR": str(cluster.root)},
    )
    assert result.returncode == 0, f"hack/node-images.sh import failed:\n{result.stdout}{result.stderr}"
    print(f"images imported in {time.monotonic() - started:.1f}s:\n{result.stderr}")
    return project_images


# --- devices ---------------------------------------------------------------------------------


@pytest.fixture
def loop_devices(tmp_path: Path) -> Iterator[Callable[..., LoopDevice]]:
    """attach(size_bytes=...) -> a real, attached loop device; every one is detached afterwards."""
    require(loop_devices_available())
    attached: list[LoopDevice] = []

    def factory(size_bytes: int = 8 * 1024 * 1024, name: str | None = None) -> LoopDevice:
        backing = tmp_path / (name or f"backing-{len(attached)}.img")
        device = attach(backing, size_bytes)
        attached.append(device)
        return device

    yield factory
    for device in attached:
        detach(device)
