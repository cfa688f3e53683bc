"""`kubectl sd ...`: the real kubectl finds the `kubectl-sd` console script on PATH and runs sdctl
through it, against the real control plane, with kubectl's environment (KUBECONFIG)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from storage_driver_api.constants import STORAGE_DRIVERS
from storage_driver_api.kube import KubeClient

from tests.conftest import REPO_ROOT
from tests.harness import localcluster
from tests.harness.processes import VENV_BIN, console_script
from tests.integration.operator import simulated as sim


def kubectl(
    cluster: localcluster.ClusterConfig, *args: str, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    console_script("kubectl-sd")  # installed with the project
    env = {
        "PATH": os.pathsep.join([str(VENV_BIN), str(cluster.bin_dir), "/usr/bin", "/bin"]),
        "KUBECONFIG": str(cluster.kubeconfig),
        "HOME": os.environ.get("HOME", "/root"),
    }
    return subprocess.run(
        [str(cluster.kubectl), *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


def sdctl(cluster: localcluster.ClusterConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("sdctl"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        cwd=REPO_ROOT,
    )


def test_kubectl_lists_the_plugin(cluster: localcluster.ClusterConfig) -> None:
    listed = kubectl(cluster, "plugin", "list")
    assert str(VENV_BIN / "kubectl-sd") in listed.stdout, listed.stdout + listed.stderr
    usage = kubectl(cluster, "sd", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: kubectl sd"), usage


async def test_kubectl_sd_plan_and_drivers_print_what_sdctl_prints(
    clean_cluster: KubeClient, cluster: localcluster.ClusterConfig
) -> None:
    await clean_cluster.create(STORAGE_DRIVERS, sim.storage_driver("plugin-check"))
    for args in (
        ["plan", "-f", "examples/storagedriver-loop.yaml"],
        ["drivers"],
        ["driver", "plugin-check"],
        ["drivers", "-o", "json"],
    ):
        through_kubectl = kubectl(cluster, "sd", *args)
        direct = sdctl(cluster, *args)
        assert through_kubectl.returncode == direct.returncode == 0, through_kubectl.stderr
        assert through_kubectl.stdout == direct.stdout, args
    shown = kubectl(cluster, "sd", "driver", "plugin-check").stdout
    assert "Name:         plugin-check" in shown
    # Errors name the plugin as the user typed it.
    wrong = kubectl(cluster, "sd", "plan")
    assert wrong.returncode == 2 and "usage: kubectl sd plan" in wrong.stderr
