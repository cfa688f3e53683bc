"""`make cluster-up` / `make cluster-down` for real, on ports of their own: up is a no-op when
up, down stops every process up started and leaves nothing listening."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import require
from tests.harness import localcluster

PORTS = {
    "SDO_ETCD_PORT": "31790",
    "SDO_ETCD_PEER_PORT": "31800",
    "SDO_APISERVER_PORT": "31443",
    "SDO_CONTROLLER_MANAGER_PORT": "31257",
}


def run(command: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tests.harness.localcluster", command],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan waits for whichever process reaps it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_cluster_up_twice_then_down_leaves_nothing(tmp_path: Path) -> None:
    cfg = localcluster.ClusterConfig.from_env()
    require(
        None
        if (cfg.bin_dir / "kube-apiserver").exists()
        else "Kubernetes binaries not built: make kube-binaries"
    )
    env = {**os.environ, **PORTS, "SDO_CLUSTER_DIR": str(tmp_path / "cluster")}
    try:
        first = run("up", env)
        assert "registered Node" in first
        pids = [int((tmp_path / "cluster" / "run" / f"{c}.pid").read_text()) for c in localcluster.COMPONENTS]
        assert all(running(pid) for pid in pids)
        assert (tmp_path / "cluster" / "kubeconfig").exists()

        second = run("up", env)
        assert "already up" in second
        assert pids == [
            int((tmp_path / "cluster" / "run" / f"{c}.pid").read_text()) for c in localcluster.COMPONENTS
        ]
    finally:
        down = run("down", env)
    assert "nothing of ours is running or listening" in down
    assert not any(running(pid) for pid in pids)
    assert not any(listening(int(port)) for port in PORTS.values())
