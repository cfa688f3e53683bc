"""Every command in the user docs runs against the local control plane, so the docs stay true
(the markers are explained in tests/harness/doccommands.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_driver_api.kube import KubeClient

from tests.conftest import REPO_ROOT, apply_crds, require
from tests.harness import demo, doccommands, helm
from tests.harness.localcluster import ClusterConfig
from tests.harness.loopdev import loop_devices_available
from tests.integration.chart.release import Release, delete_namespace, delete_project_crds

# Each document and the state its commands start from: "fresh" is a cluster without the
# project (no release, no CRDs); "installed" has the chart installed as the docs install it.
DOCS = {
    "demo.md": "fresh",
    "installing.md": "fresh",
    "security.md": "installed",
    "troubleshooting.md": "installed",
    "architecture.md": "installed",
}
# Documents whose commands are make targets of the checkout, so they run in it (what they write
# goes to git-ignored .local-cluster/).
IN_CHECKOUT = {"demo.md"}
RELEASE = "storage-driver-operator"
NAMESPACE = "storage-driver-operator"


@pytest.mark.parametrize("name", sorted(DOCS))
def test_every_command_block_is_marked(name: str) -> None:
    document = REPO_ROOT / "docs" / name
    assert not doccommands.problems(document)
    assert any(b.mode for b in doccommands.blocks(document)), f"{name} has no command to run"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A checkout as the docs assume one (charts/, crds/, examples/), where files the commands
    write stay out of the repository."""
    for entry in ("charts", "crds", "examples", "docs"):
        (tmp_path / entry).symlink_to(REPO_ROOT / entry)
    return tmp_path


@pytest.fixture
def state(request: pytest.FixtureRequest, clean_cluster: KubeClient, cluster: ClusterConfig) -> Iterator[str]:
    require(helm.missing())
    name = request.param
    if name in IN_CHECKOUT:
        require(loop_devices_available())  # `make demo` attaches a loop device
    release = Release(cluster, RELEASE, NAMESPACE)
    release.uninstall(check=False)
    delete_namespace(cluster, NAMESPACE)
    if DOCS[name] == "fresh":
        delete_project_crds(cluster)
    else:
        # The session's CRDs came from `kubectl apply`: let the release adopt them.
        release.install("--take-ownership")
    yield name
    if name in IN_CHECKOUT:
        demo.stop(demo.Layout.of(cluster), quiet=True)  # if its `make demo-down` was not reached
    release.uninstall(check=False)
    delete_namespace(cluster, NAMESPACE, wait=False)
    apply_crds(cluster)


@pytest.mark.parametrize("state", sorted(DOCS), indirect=True)
def test_doc_commands_run(state: str, workdir: Path, cluster: ClusterConfig) -> None:
    script = doccommands.script(REPO_ROOT / "docs" / state)
    env = {
        **helm.environment(cluster.kubeconfig),
        "PATH": f"{helm.helm_binary().parent}:{cluster.bin_dir}:{os.environ['PATH']}",
    }
    cwd = REPO_ROOT if state in IN_CHECKOUT else workdir
    result = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"docs/{state}:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
