"""`make cluster-up` / `make cluster-down` for real, on the session's own cluster (a machine has
one node: two kubelets would manage the same cgroups): up is a no-op when up; down stops every
process up started and leaves no listener, mount, network namespace, bridge, cgroup or iptables
rule behind; up again brings the node back Ready."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import kubectl, node_missing, require
from tests.harness import localcluster, localnode
from tests.harness.localcluster import ClusterConfig


def run(command: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tests.harness.localcluster", command],
        capture_output=True,
        text=True,
        timeout=300,
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


def test_cluster_up_is_a_no_op_down_leaves_nothing_and_up_brings_the_node_back(
    cluster: ClusterConfig,
) -> None:
    require(node_missing(cluster))
    pids = {c: localcluster.running_pid(cluster, c) for c in localcluster.COMPONENTS}
    assert all(pids.values()), pids
    assert "already up" in run("up")
    assert pids == {c: localcluster.running_pid(cluster, c) for c in localcluster.COMPONENTS}
    status = run("status")
    for component in localcluster.COMPONENTS:
        assert f"{component}" in status and f"running pid {pids[component]}" in status

    down = run("down")
    assert "nothing of ours is running, listening, mounted or routed" in down
    assert not any(running(pid) for pid in pids.values() if pid)
    assert not any(listening(port) for port in cluster.ports)
    assert localnode.leftovers(cluster) == []

    up = run("up")
    assert "is Ready" in up
    nodes = json.loads(kubectl(cluster, "get", "nodes", "-o", "json"))["items"]
    [node] = [n for n in nodes if n["metadata"]["name"] == localcluster.local_node_name()]
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == f"v{localcluster.KUBE_VERSION}"
    assert info["containerRuntimeVersion"].startswith("containerd://")
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", ready
    wide = kubectl(cluster, "get", "nodes", "-o", "wide")
    assert "Ready" in wide and "containerd://" in wide and cluster.gateway_ip in wide
