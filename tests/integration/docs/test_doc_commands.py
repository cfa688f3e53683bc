"""Every command in the README and the user docs runs, so the docs stay true (the markers are
explained in tests/harness/doccommands.py). Documents whose commands need a running operator
and agent are run by tests/e2e/docs; this module runs the others: against no cluster, against
the session's local control plane (with the chart fresh or installed), and the README, which
starts a control plane of its own with `make cluster-up` and is stopped with `make cluster-down`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_driver_api.kube import KubeClient

from tests.conftest import REPO_ROOT, apply_crds, require
from tests.harness import demo, doccommands, helm
from tests.harness.localcluster import ClusterConfig
from tests.harness.loopdev import loop_devices_available
from tests.harness.processes import VENV_BIN
from tests.integration.chart.release import Release, delete_namespace, delete_project_crds

RELEASE = "storage-driver-operator"
NAMESPACE = "storage-driver-operator"
WITH_CLUSTER = sorted(
    name
    for name, setting in doccommands.DOCUMENTS.items()
    if setting.cluster == "session" and not setting.components
)
WITHOUT_CLUSTER = sorted(name for name, s in doccommands.DOCUMENTS.items() if s.cluster == "none")


def workdir(tmp_path: Path) -> Path:
    """A checkout as the docs assume one (charts/, crds/, examples/, docs/, tests/), where files
    the commands write stay out of the repository."""
    root = tmp_path / "checkout"
    root.mkdir()
    for entry in ("charts", "crds", "examples", "docs", "tests"):
        (root / entry).symlink_to(REPO_ROOT / entry)
    return root


def search_path(*directories: Path) -> str:
    return ":".join([*(str(d) for d in directories), os.environ["PATH"]])


def check(problems: list[str]) -> None:
    assert not problems, "\n\n".join(problems)


@pytest.mark.parametrize("name", WITHOUT_CLUSTER)
def test_commands_that_need_no_cluster(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": search_path(VENV_BIN)}
    env.pop("KUBECONFIG", None)
    check(doccommands.run(REPO_ROOT / name, workdir(tmp_path), env, tmp_path / "outputs"))


# The chart's default hostPaths: a document that installs the chart as a user does makes them.
CHART_HOST_DIRS = (Path("/var/lib/storage-drivers"), Path("/var/lib/storage-agent"))


@pytest.fixture
def prepared(
    request: pytest.FixtureRequest, clean_cluster: KubeClient, cluster: ClusterConfig
) -> Iterator[str]:
    """The chart as the document expects it: fresh (no release, no CRDs) or installed."""
    name: str = request.param
    setting = doccommands.DOCUMENTS[name]
    chart = setting.chart
    if setting.checkout:
        require(loop_devices_available())  # `make demo` attaches a loop device
    release = Release(cluster, RELEASE, NAMESPACE)
    new_host_dirs = [d for d in CHART_HOST_DIRS if not d.exists()]
    if chart != "none":
        require(helm.missing())
        release.uninstall(check=False)
        delete_namespace(cluster, NAMESPACE)
        if chart == "fresh":
            # The document installs the chart itself, as a user does: its pods run for real.
            request.getfixturevalue("node_images")
            delete_project_crds(cluster)
        else:
            # The session's CRDs came from `kubectl apply`: let the release adopt them.
            release.install("--take-ownership")
    yield name
    if setting.checkout:
        demo.stop(cluster, quiet=True)  # if its `make demo-down` was not reached
    if chart != "none":
        release.uninstall(check=False)
        delete_namespace(cluster, NAMESPACE, wait=False)
        apply_crds(cluster)
    for directory in new_host_dirs:  # made on this machine by the chart's pods (default hostPaths)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("prepared", WITH_CLUSTER, indirect=True)
def test_commands_on_the_local_control_plane(prepared: str, tmp_path: Path, cluster: ClusterConfig) -> None:
    env = {
        **helm.environment(cluster.kubeconfig),
        "PATH": search_path(helm.helm_binary().parent, cluster.bin_dir, VENV_BIN),
    }
    cwd = REPO_ROOT if doccommands.DOCUMENTS[prepared].checkout else workdir(tmp_path)
    check(doccommands.run(REPO_ROOT / prepared, cwd, env, tmp_path / "outputs"))


def test_readme_commands_from_a_checkout(
    tmp_path: Path, cluster: ClusterConfig, clean_cluster: KubeClient, node_images: dict[str, Path]
) -> None:
    """The README as a new user follows it in the checkout, on this machine's one node: `make
    cluster-up` (up already: it says so), kubectl, helm (the chart's pods run) and sdctl; a fresh
    cluster for the chart (no release, no CRDs), and the session's CRDs back afterwards."""
    require(helm.missing())
    require(None if os.geteuid() == 0 else "make cluster-up runs make deps, which needs root")
    release = Release(cluster, RELEASE, NAMESPACE)
    release.uninstall(check=False)
    delete_namespace(cluster, NAMESPACE)
    delete_project_crds(cluster)
    env = {
        **helm.environment(),
        # helm 4 on PATH, as the README asks; kubectl and sdctl come from the README's own steps.
        "PATH": search_path(helm.helm_binary().parent),
    }
    env.pop("KUBECONFIG", None)
    env.pop("VIRTUAL_ENV", None)
    try:
        check(doccommands.run(REPO_ROOT / "README.md", REPO_ROOT, env, tmp_path / "outputs"))
    finally:
        release.uninstall(check=False)
        delete_namespace(cluster, NAMESPACE, wait=False)
        apply_crds(cluster)
