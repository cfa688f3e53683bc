"""`make demo` for real, as a new user runs it: through the Makefile, against this session's local
cluster, with the chart's own pods; run again at once (it must start over cleanly) and
interrupted with Ctrl-C once the driver is loaded (it must clean up); run a third time (it must
recover from that); then `make demo-down`, after which nothing the demo started may be left
running or attached."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from storage_driver_api.constants import NODE_DRIVER_CONFIGS, STORAGE_DRIVERS
from storage_driver_api.kube import EVENTS, KubeClient

from tests.conftest import REPO_ROOT, apply_crds, node_missing, require
from tests.e2e.test_operator_with_agent import agent_missing
from tests.harness import demo, helm, localcluster, podprocesses
from tests.harness.loopdev import loop_devices_available
from tests.integration.chart.release import Release, delete_namespace

pytestmark = [pytest.mark.helm, pytest.mark.timeout(900)]

SD_ROW = r"storagedriver\.storage\.datawarehouse\.io/loop-info\s+1\.0\.0\s+{matching}\s+{loaded}\s+0\s+True"
LOADED_ROW = re.compile(SD_ROW.format(matching=1, loaded=1))
UNLOADED_ROW = re.compile(SD_ROW.format(matching=0, loaded=0))


def cluster_env(cluster: localcluster.ClusterConfig) -> dict[str, str]:
    """The environment that points every make target at this session's control plane."""
    return {
        **os.environ,
        "SDO_ETCD_PORT": str(cluster.etcd_port),
        "SDO_ETCD_PEER_PORT": str(cluster.etcd_peer_port),
        "SDO_APISERVER_PORT": str(cluster.apiserver_port),
        "SDO_CONTROLLER_MANAGER_PORT": str(cluster.controller_manager_port),
        "SDO_SCHEDULER_PORT": str(cluster.scheduler_port),
        "SDO_KUBELET_PORT": str(cluster.kubelet_port),
        "SDO_KUBELET_HEALTHZ_PORT": str(cluster.kubelet_healthz_port),
        "SDO_PROXY_METRICS_PORT": str(cluster.proxy_metrics_port),
        "SDO_PROXY_HEALTHZ_PORT": str(cluster.proxy_healthz_port),
        "SDO_BRIDGE": cluster.bridge,
        "SDO_POD_CIDR": str(cluster.pod_cidr),
        "SDO_CLUSTER_DIR": str(cluster.root),
        "SDO_NODE": "on" if cluster.with_node else "off",
    }


def make(cluster: localcluster.ClusterConfig, *targets: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", *targets],
        cwd=REPO_ROOT,
        env=cluster_env(cluster),
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"--- make {' '.join(targets)} (exit {result.returncode}) ---\n{result.stdout}\n{result.stderr}")
    return result


def interrupted_demo(cluster: localcluster.ClusterConfig, after: str) -> tuple[int, str]:
    """The demo interrupted as Ctrl-C does once its output shows `after`: exit code, output."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.demo", "up"],
        cwd=REPO_ROOT,
        env=cluster_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    shown = ""
    while after not in shown and process.poll() is None:
        shown += process.stdout.readline()
    process.send_signal(signal.SIGINT)
    shown += process.communicate(timeout=120)[0]
    print(f"--- demo interrupted after {after!r} (exit {process.returncode}) ---\n{shown}")
    return process.returncode, shown


def release_pods(cluster: localcluster.ClusterConfig) -> dict[str, dict[str, Any]]:
    return demo.release_pods(cluster)


async def events_of(kube: KubeClient, uid: str, since: dt.datetime) -> set[tuple[str, str]]:
    events, _ = await kube.list(EVENTS, namespace="default")
    out = set()
    for event in events:
        when = event.get("lastTimestamp") or event["metadata"]["creationTimestamp"]
        stamp = dt.datetime.fromisoformat(str(when).replace("Z", "+00:00"))
        if (event.get("involvedObject") or {}).get("uid") == uid and stamp >= since:
            out.add((str((event.get("source") or {}).get("component")), str(event.get("reason"))))
    return out


@pytest.fixture
async def demo_cluster(
    clean_cluster: KubeClient, cluster: localcluster.ClusterConfig
) -> AsyncIterator[KubeClient]:
    """The session's control plane for the demo; afterwards the demo stopped, its release gone and
    the session's CRDs back as the other tests expect them."""
    require(loop_devices_available())
    require(helm.missing())
    require(agent_missing())
    release = Release(cluster, demo.RELEASE, demo.NAMESPACE)
    try:
        yield clean_cluster
    finally:
        make(cluster, "demo-down")
        release.uninstall(check=False)
        # Gone before the next test, which may put agent Leases into a namespace of this name.
        delete_namespace(cluster, demo.NAMESPACE, wait=True)
        apply_crds(cluster)


async def test_make_demo_loads_and_unloads_then_demo_down_stops_everything(
    demo_cluster: KubeClient, cluster: localcluster.ClusterConfig
) -> None:
    require(node_missing(cluster))
    kube = demo_cluster
    layout = demo.Layout.of(cluster)
    node = localcluster.local_node_name()
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)

    first = make(cluster, "demo")
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    # The node and the pods (step 3), the load (step 5), then the unload (step 6), and how to go on.
    assert re.search(rf"{re.escape(node)}\s+Ready\s+<none>\s+\S+\s+v1\.20\.2", out), "kubectl get nodes"
    pods_step, load_step, unload_step = out.index("==> [3/6]"), out.index("==> [5/6]"), out.index("==> [6/6]")
    for component in demo.COMPONENTS:
        assert re.search(rf"{demo.RELEASE}-{component}\S*\s+1/1\s+Running", out[pods_step:load_step]), (
            component
        )
    assert LOADED_ROW.search(out, load_step, unload_step), "no 'kubectl get sd' row with loop-info loaded"
    assert re.search(
        rf"{re.escape(node)}\s+loop-info\s+1\.0\.0\s+Loaded\s+\d+", out[load_step:unload_step]
    ), "sdctl drivers does not show loop-info Loaded"
    assert UNLOADED_ROW.search(out, unload_step), "no 'kubectl get sd' row with loop-info unloaded"
    assert re.search(r"storage-agent\s+NodeDriverConfig/\S+\s+Unloaded", out[unload_step:])
    assert "make demo-down" in out and "KUBECONFIG=" in out and "sdctl drivers" in out

    # ... and that is what happened in the cluster, done by the chart's pods.
    config = await kube.get(NODE_DRIVER_CONFIGS, node)
    driver = await kube.get(STORAGE_DRIVERS, "loop-info")
    assert {("storage-agent", "Loaded"), ("storage-agent", "Unloaded")} <= await events_of(
        kube, config["metadata"]["uid"], started
    )
    assert {("storage-operator", "Loaded"), ("storage-operator", "Unloaded")} <= await events_of(
        kube, driver["metadata"]["uid"], started
    )
    assert not [d for d in (config.get("status") or {}).get("drivers") or [] if d.get("pid")]
    pods = release_pods(cluster)
    assert set(pods) == set(demo.COMPONENTS) and all(demo.pod_ready(p) for p in pods.values())
    for component, pod in pods.items():
        assert pod["spec"]["serviceAccountName"] == f"{demo.RELEASE}-{component}", component
    logs = "".join(demo.pod_logs(cluster, c, lines=1000) for c in demo.COMPONENTS)
    assert not re.search("forbidden|unauthorized", logs, re.IGNORECASE)

    # Again, right after: it uninstalls the first run's release and starts over; here it is
    # interrupted (Ctrl-C) once the driver is loaded, and cleans up after itself.
    code, shown = interrupted_demo(cluster, after="$ sdctl drivers")  # step 5: loaded
    assert code == 130, shown[-3000:]
    assert "A previous demo is still running: stopping it first" in shown
    assert LOADED_ROW.search(shown) and "The demo stopped: interrupted" in shown
    assert not release_pods(cluster), "the interrupted demo left its pods running"
    assert not podprocesses.image_driver_hosts(), "the interrupted demo left a driver host running"
    assert not demo.demo_loop_devices(layout), "the interrupted demo left its loop device attached"

    # A run after the interrupted one (which left the driver in the node's spec) still works.
    third = make(cluster, "demo")
    assert third.returncode == 0, third.stderr[-3000:]
    assert LOADED_ROW.search(third.stdout) and UNLOADED_ROW.search(third.stdout)
    assert len(release_pods(cluster)) == len(demo.COMPONENTS)

    # make demo-down uninstalls the release and detaches the demo's loop devices.
    down = make(cluster, "demo-down")
    assert down.returncode == 0, down.stderr
    assert not release_pods(cluster)
    assert not podprocesses.image_driver_hosts()
    assert not demo.demo_loop_devices(layout)
    assert localcluster.is_up(cluster), "demo-down without CLUSTER=1 keeps the local cluster"
