"""Hot-plug through the chart's own pods on the local node: the path `helm install` runs.

    python -m tests.bench pods [--write]

The project's images (`make images`) are imported into the node's containerd and the chart is
installed with them; the operator, agent and supervisor run as pods, the driver hosts in the
supervisor's container. The example loop StorageDriver is applied with `unloadDelaySeconds: 0`
and a deviceSelector for this benchmark's device size, and each of the attaches is timed
stage by stage exactly as `bench_hotplug` does for local processes, from watches of the node's
NodeDevices and NodeDriverConfig. SDO_BENCH_LOGS=DIR keeps the pods' logs there (they go with
the release).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from storage_driver_api.constants import (
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import KubeClient, load_kubeconfig

from tests.bench import procstat
from tests.bench.bench_hotplug import (
    ATTACHES,
    DRIVER,
    STAGES_IN,
    STAGES_OUT,
    Stream,
    add_stages,
    cycle,
    follow,
    until,
)
from tests.bench.oncluster import run_on_local_cluster
from tests.bench.table import Table
from tests.conftest import kubectl
from tests.harness import localcluster, podprocesses
from tests.harness.drivers import host_templates
from tests.integration.chart.release import Release, delete_namespace

REPO_ROOT = Path(__file__).resolve().parents[2]
RELEASE = "sdo-bench"
COMPONENTS = ("operator", "agent", "supervisor")
REST_SECONDS = 60.0  # at rest after the hot-plugs, before the footprint is read


def images(cfg: localcluster.ClusterConfig) -> None:
    env = {**os.environ, "SDO_CLUSTER_DIR": str(cfg.root)}
    for argv in (["hack/build-images.sh"], ["hack/node-images.sh", "import"]):
        subprocess.run(argv, cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=1800)


def pods_ready(release: Release) -> bool:
    pods = [p for c in ("operator", "agent", "supervisor") for p in release.pods(c)]
    return len(pods) == 3 and all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
        for p in pods
    )


async def measure(cfg: localcluster.ClusterConfig, work: Path) -> list[Table]:
    node = localcluster.local_node_name()
    size = 6 * 2**20 + random.randrange(1, 256) * 4096  # a size no other loop device here has
    driver_dir = work / "drivers"
    driver_dir.mkdir()
    shutil.copy(REPO_ROOT / "examples" / "drivers" / "loop_info.py", driver_dir)
    manifest: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "examples" / "storagedriver-loop.yaml").read_text()
    )
    manifest["spec"]["unloadDelaySeconds"] = 0
    manifest["spec"]["deviceSelector"] = [{"key": "sizeBytes", "operator": "In", "values": [str(size)]}]
    others = [n for n in kubectl(cfg, "get", "nodes", "-o", "name").split() if n != f"node/{node}"]
    if others:  # the agent DaemonSet would schedule a pod on each, and the release never be Ready
        raise RuntimeError(
            f"{len(others)} Nodes besides {node} (e.g. {others[0]}), left by another benchmark "
            "(SDO_BENCH_KEEP=1): run it again without SDO_BENCH_KEEP to remove them"
        )
    release = Release(cfg, RELEASE, RELEASE, run_pods=True)
    release.uninstall(check=False)
    delete_namespace(cfg, RELEASE)
    installed_at = time.monotonic()
    release.install(
        "--set-string", f"hostPaths.driverDir={driver_dir}",
        "--set-string", f"hostPaths.stateDir={work / 'state'}",
        "--take-ownership",
    )  # fmt: skip
    while not await asyncio.to_thread(pods_ready, release):
        if time.monotonic() - installed_at > 180:
            release.uninstall(check=False)
            raise TimeoutError("the release's pods did not become Ready in 180 s")
        await asyncio.sleep(0.2)
    ready_after = time.monotonic() - installed_at
    ins: dict[str, list[float]] = {s: [] for s in STAGES_IN}
    outs: dict[str, list[float]] = {s: [] for s in STAGES_OUT}
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as kube:
        devices, config = Stream(), Stream()
        ready = [asyncio.Event(), asyncio.Event()]
        selector = f"{NODE_LABEL}={node_label_value(node)}"
        watchers = [
            asyncio.create_task(follow(kube, NODE_DEVICES, devices, ready[0], label_selector=selector)),
            asyncio.create_task(
                follow(kube, NODE_DRIVER_CONFIGS, config, ready[1], field_selector=f"metadata.name={node}")
            ),
        ]
        try:
            for event in ready:
                await event.wait()
            await kube.delete(STORAGE_DRIVERS, DRIVER)
            await kube.create(STORAGE_DRIVERS, manifest)
            await until(
                config,
                lambda: any(
                    a.get("file") == "loop_info.py"
                    for a in ((config.objects.get(node) or {}).get("status") or {}).get("available") or []
                ),
                "loop_info.py to be available",
            )
            for index in range(ATTACHES):
                timings_in, timings_out = await cycle(devices, config, node, work / f"pods-{index}.img", size)
                for stage, value in zip(STAGES_IN, timings_in, strict=True):
                    ins[stage].append(value)
                for stage, value in zip(STAGES_OUT, timings_out, strict=True):
                    outs[stage].append(value)
                await asyncio.sleep(0.3)
            footprint = await at_rest(cfg, release)
        finally:
            await kube.delete(STORAGE_DRIVERS, DRIVER)
            await asyncio.sleep(2.0)  # the operator pod releases its finalizer
            for task in watchers:
                task.cancel()
            if logs := os.environ.get("SDO_BENCH_LOGS"):
                await asyncio.to_thread(keep_logs, cfg, release, Path(logs))
            release.uninstall(check=False)
            delete_namespace(cfg, RELEASE, wait=False)
    table = Table(
        "Hot-plug through the chart's pods (local node: kubelet, containerd, supervisor launcher)",
        ["stage (cumulative, from losetup)", "p50", "p95", "max", "samples"],
        command="python -m tests.bench pods --write",
        notes=(
            "The chart installed with the project's images on the local node; the agent pod follows "
            "kernel uevents in its own network namespace and has the supervisor pod start each driver "
            "host. Stages as in the local-process table above. helm install -> every pod Ready took "
            f"{ready_after:.1f} s in this run."
        ),
    )
    add_stages(table, ins, outs)
    return [table, footprint]


def keep_logs(cfg: localcluster.ClusterConfig, release: Release, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for component in COMPONENTS:
        for pod in release.pods(component):
            log = kubectl(cfg, "-n", RELEASE, "logs", pod["metadata"]["name"], check=False)
            (directory / f"pods-{component}.log").write_text(log)


def container_processes(cfg: localcluster.ClusterConfig, release: Release) -> dict[str, int]:
    """Each component's container process (its pid 1 as containerd knows it), and the
    supervisor's host template."""
    found = {}
    for component in COMPONENTS:
        (pod,) = release.pods(component)
        found[f"{component} pod"] = podprocesses.container_main_process(cfg, pod, component).pid
    for template in host_templates(found["supervisor pod"]):
        found["host template (supervisor pod)"] = template
    return found


async def at_rest(cfg: localcluster.ClusterConfig, release: Release) -> Table:
    """Memory and CPU of the chart's containers over REST_SECONDS at rest, read from the node's
    /proc as for local processes (bench_footprint), with the chart's in-cluster credentials and
    the images' interpreter."""
    pids = await asyncio.to_thread(container_processes, cfg, release)
    cpu = {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}
    load = os.getloadavg()[0]
    await asyncio.sleep(REST_SECONDS)
    table = Table(
        "The chart's pods at rest after the hot-plugs (target: agent <= 60 MB, CPU near zero)",
        ["process", "RSS", "USS / PSS", "CPU"],
        command="python -m tests.bench pods --write",
        notes=(
            f"The same release {REST_SECONDS:.0f} s after the last detach, no driver loaded: each "
            "container's process from the node's /proc (RSS = VmRSS, USS and PSS from "
            "smaps_rollup, CPU = user+system time over the window, 100% = one core; MiB = KiB / "
            "1024). The agent here runs with the pod's service account, as the chart runs it; "
            "bench_footprint measures local processes with a kubeconfig. 1-minute load average "
            f"{load:.1f} to {os.getloadavg()[0]:.1f} (2 cores, shared)."
        ),
    )
    for name, pid in pids.items():
        uss, pss = procstat.smaps_kib(pid)
        used = (procstat.cpu_seconds(pid) - cpu[name]) / REST_SECONDS
        table.add(
            name,
            procstat.mib(procstat.rss_kib(pid)),
            f"{uss / 1024:.1f} / {procstat.mib(pss)}",
            f"{used:.2%}",
        )
    return table


def run() -> list[Table]:
    return run_on_local_cluster("pods", measure, loop_devices=True, prepare=images)
