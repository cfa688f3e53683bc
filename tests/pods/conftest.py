"""The chart's own pods on the local node: the images `make images` builds, imported into the
node's containerd, installed with the real helm, and run by the real kubelet.

Only this suite runs the chart's pods (elsewhere the release pins images the node does not have,
tests/integration/chart/release.py), and no test here starts agent processes: so an agent pod
and an agent process never serve this machine's Node at the same time.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from storage_driver_api.kube import KubeClient, load_kubeconfig

from tests.conftest import CALL_REPORT, REPO_ROOT, _remove_all, apply_crds, kubectl, require
from tests.harness import helm, localcluster, podprocesses
from tests.harness.localcluster import ClusterConfig
from tests.harness.waiting import eventually
from tests.integration.chart.release import Release, delete_namespace

RELEASE = "sdo-pods"
NAMESPACE = "sdo-pods"
COMPONENTS = ("operator", "agent", "supervisor")
DRIVER_FILE = REPO_ROOT / "examples" / "drivers" / "loop_info.py"


@dataclass
class Installed:
    """A release whose pods run on this machine, with host directories of its own."""

    release: Release
    cluster: ClusterConfig
    driver_dir: Path
    state_dir: Path
    ready_seconds: float

    def pods(self, component: str) -> list[dict[str, Any]]:
        return [p for p in self.release.pods(component) if not p["metadata"].get("deletionTimestamp")]

    def pod(self, component: str) -> dict[str, Any]:
        pods = self.pods(component)
        assert len(pods) == 1, f"{component}: {[p['metadata']['name'] for p in pods]}"
        return pods[0]

    def main_process(self, component: str) -> podprocesses.HostProcess:
        return podprocesses.container_main_process(self.cluster, self.pod(component), component)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return kubectl(self.cluster, *args, input=input)


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def all_ready(installed: Installed) -> bool:
    pods = {c: installed.pods(c) for c in COMPONENTS}
    return all(len(p) == 1 and pod_ready(p[0]) for p in pods.values())


async def wait_all_ready(installed: Installed, timeout: float = 180) -> None:
    async def ready() -> bool:
        return await asyncio.to_thread(all_ready, installed)

    try:
        await eventually(
            ready, timeout=timeout, interval=0.5, what="every pod of the release Running and Ready"
        )
    except AssertionError:
        print(installed.kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide"))
        print(installed.kubectl("-n", NAMESPACE, "describe", "pods"))
        raise


def describe(installed: Installed) -> str:
    """What a failed test's reader needs and the pods take with them when they go: every pod with
    its restarts, the driver hosts on the node, and the last lines of each container's log (and of
    its previous run, when it restarted)."""
    parts = [installed.kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide")]
    parts.append("driver hosts on the node: " + repr(podprocesses.image_driver_hosts()))
    for component in COMPONENTS:
        for pod in installed.release.pods(component):
            name = pod["metadata"]["name"]
            restarted = any(s["restartCount"] for s in pod["status"].get("containerStatuses") or [])
            for previous in [[], ["--previous"]] if restarted else [[]]:
                logs = kubectl(
                    installed.cluster, "-n", NAMESPACE, "logs", name, "--tail=60", *previous, check=False
                )
                parts.append(f"--- {name} {' '.join(previous)}".rstrip() + f" ---\n{logs}")
    return "\n".join(parts)


@pytest.fixture(autouse=True)
def describe_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test prints describe() of the release it ran against."""
    yield
    report = request.node.stash.get(CALL_REPORT, None)
    if report is not None and report.failed and "installed" in request.fixturenames:
        print(describe(request.getfixturevalue("installed")))


async def _clean_slate(cluster: ClusterConfig) -> None:
    async with KubeClient(load_kubeconfig(cluster.kubeconfig)) as kube:
        await _remove_all(kube)  # no simulated Nodes: DaemonSet pods only for this machine
        await localcluster.ensure_local_node(kube)


@pytest.fixture(scope="module")
def installed(
    cluster: ClusterConfig, node_images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    require(helm.missing())
    asyncio.run(_clean_slate(cluster))
    root = tmp_path_factory.mktemp("node-paths")
    driver_dir, state_dir = root / "drivers", root / "state"
    driver_dir.mkdir()
    # A hostPath driver file, as an administrator puts it on the node: not the chart's to remove.
    shutil.copy(DRIVER_FILE, driver_dir / DRIVER_FILE.name)
    release = Release(cluster, RELEASE, NAMESPACE, run_pods=True)
    release.uninstall(check=False)
    delete_namespace(cluster, NAMESPACE)
    started = time.monotonic()
    release.install(
        "--set-string",
        f"hostPaths.driverDir={driver_dir}",
        "--set-string",
        f"hostPaths.stateDir={state_dir}",
        # Tests read the text logs of the components.
        "--set-string",
        "logging.format=text",
        "--take-ownership",
    )
    result = Installed(release, cluster, driver_dir, state_dir, 0.0)
    asyncio.run(wait_all_ready(result))
    result.ready_seconds = time.monotonic() - started
    print(f"helm install -> every pod Ready in {result.ready_seconds:.1f}s")
    yield result
    release.uninstall(check=False)
    delete_namespace(cluster, NAMESPACE, wait=False)
    apply_crds(cluster)  # the release took them over; the other suites expect them
