"""The operator at the design point: 1,000 simulated nodes x 16 devices = 16,000 NodeDevices.

    python -m tests.bench operator [--write]

Measures, with a real storage-operator process against the local control plane: time to ready
on a first start (every NodeDriverConfig to create) and on a restart (nothing to write), its
memory (RSS) after each, and the latency from a NodeDevice create to the NodeDriverConfig spec
that binds it (p50/p95), as seen by a separate watcher.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

from storage_driver_api.constants import (
    LEASE_NAMESPACE_DEFAULT,
    LEASE_PREFIX,
    MANAGED_BY_LABEL,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    STORAGE_DRIVERS,
)
from storage_driver_api.kube import LEASES, NODES, KubeClient, Resource, load_kubeconfig

from tests.bench.table import Table, ms, percentile
from tests.conftest import apply_crds
from tests.harness import localcluster
from tests.harness.processes import ComponentProcess, console_script
from tests.integration.operator import simulated as sim
from tests.integration.operator.conftest import free_port

NODE_COUNT = int(os.environ.get("SDO_BENCH_NODES", "1000"))
DEVICES_PER_NODE = 16
LATENCY_SAMPLES = int(os.environ.get("SDO_BENCH_SAMPLES", "100"))
IN_FLIGHT = 32
BENCH_LABEL = "bench.storage.datawarehouse.io/operator"
COMMAND = "python -m tests.bench operator --write"
KEEP = os.environ.get("SDO_BENCH_KEEP") == "1"  # keep (and reuse) the 16,000 NodeDevices between runs


def log(message: str) -> None:
    print(f"[bench operator] {message}", flush=True)


async def bounded(jobs: Iterable[Awaitable[Any]], limit: int = IN_FLIGHT) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[Any]) -> None:
        async with gate:
            await job

    await asyncio.gather(*(one(job) for job in jobs))


def node_name(i: int) -> str:
    return f"bench-{i:04d}"


def device_spec(j: int) -> tuple[str, dict[str, Any]]:
    """16 devices a node might have: loop devices, NVMe namespaces of two sizes, SCSI disks."""
    if j < 8:
        return "loop", {"sizeBytes": 8 * 2**20 * (j + 1)}
    if j < 14:
        return "nvme-namespace", {
            "sizeBytes": 2**40 if j % 2 else 2**38,
            "model": "Bench NVMe",
            "transport": "nvme",
        }
    return "scsi-disk", {"sizeBytes": 4 * 2**40, "rotational": True, "vendor": "ATA"}


async def create_node(kube: KubeClient, name: str) -> str:
    info = {
        "kernelVersion": "6.1.0-18-amd64",
        "osImage": "Simulated Linux",
        "operatingSystem": "linux",
        "architecture": "amd64",
        "kubeletVersion": "v1.20.2",
        "kubeProxyVersion": "v1.20.2",
        "containerRuntimeVersion": "",
        "machineID": "",
        "systemUUID": "",
        "bootID": "",
    }
    obj: dict[str, Any] = await localcluster.ensure_node(kube, name, info, {BENCH_LABEL: "true"})
    await sim.renew_lease(kube, name, duration=3600)
    return str(obj["metadata"]["uid"])


async def create_device(kube: KubeClient, node: str, uid: str, j: int) -> None:
    type_, attributes = device_spec(j)
    body = sim.device_body(node, f"{node}-d{j:02d}", type_, **attributes)
    body["metadata"]["labels"][BENCH_LABEL] = "true"
    body["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]
    await kube.create(NODE_DEVICES, body)


def storage_drivers() -> list[dict[str, Any]]:
    big_nvme = [{"key": "sizeBytes", "operator": "Gt", "values": [str(2**39)]}]
    return [
        sim.storage_driver("bench-loop"),
        sim.storage_driver(
            "bench-nvme", supportedDevices=["nvme-namespace"], deviceSelector=big_nvme, priority=5
        ),
        sim.storage_driver(
            "bench-disk",
            supportedDevices=["scsi-disk"],
            deviceSelector=[{"key": "rotational", "operator": "In", "values": ["true"]}],
        ),
        sim.storage_driver("bench-none", supportedDevices=["mmc"]),
    ]


async def delete_collection(
    kube: KubeClient, res: Resource, selector: str, namespace: str | None = None
) -> None:
    """Delete every object the selector matches: a page of names at a time, IN_FLIGHT deletes at
    once. Not one collection DELETE: kube-apiserver 1.20 lists the whole collection before it
    deletes one object at a time, until the request's deadline ends it; at 80,000
    NodeDevices 15 minutes of such calls deleted nothing."""
    stuck_since: float | None = None
    previous: list[str] = []
    while True:
        page = await kube.list_page(res, namespace=namespace, label_selector=selector, limit=500)
        names = [item["metadata"]["name"] for item in page.get("items") or []]
        if not names:
            return
        if names == previous:  # still there after their delete: finalizers, or a slow collector
            stuck_since = stuck_since or time.monotonic()
            if time.monotonic() - stuck_since > 60:
                raise RuntimeError(f"{len(names)}+ {res.plural} stay after their delete: {names[:3]}")
            await asyncio.sleep(1)
        else:
            stuck_since = None
        previous = names
        await bounded(kube.delete(res, name, namespace) for name in names)


async def clean(kube: KubeClient) -> None:
    drivers, _ = await kube.list(STORAGE_DRIVERS)
    for item in drivers:
        if item["metadata"]["name"].startswith("bench-"):
            await kube.patch(STORAGE_DRIVERS, item["metadata"]["name"], {"metadata": {"finalizers": None}})
            await kube.delete(STORAGE_DRIVERS, item["metadata"]["name"])
    await delete_collection(kube, NODE_DEVICES, BENCH_LABEL)
    await delete_collection(kube, NODE_DRIVER_CONFIGS, f"{MANAGED_BY_LABEL}=storage-operator")
    await delete_collection(kube, NODES, BENCH_LABEL)
    leases, _ = await kube.list(LEASES, namespace=LEASE_NAMESPACE_DEFAULT)
    await bounded(
        kube.delete(LEASES, lease["metadata"]["name"], LEASE_NAMESPACE_DEFAULT)
        for lease in leases
        if lease["metadata"]["name"].startswith("storage-agent-bench-")
    )


async def reusable_world(kube: KubeClient) -> dict[str, str]:
    """Node uids of a complete world kept by an earlier run (its StorageDrivers and
    NodeDriverConfigs removed), or {} when there is none."""
    nodes, _ = await kube.list(NODES, label_selector=BENCH_LABEL)
    devices, _ = await kube.list(NODE_DEVICES, label_selector=BENCH_LABEL, limit=2000)
    if len(nodes) != NODE_COUNT or len(devices) != NODE_COUNT * DEVICES_PER_NODE:
        return {}
    await keep_only_the_world(kube)
    for name in (node["metadata"]["name"] for node in nodes):
        await sim.renew_lease(kube, name, duration=3600)
    return {node["metadata"]["name"]: node["metadata"]["uid"] for node in nodes}


async def keep_only_the_world(kube: KubeClient) -> None:
    """Remove the StorageDrivers, NodeDriverConfigs and latency devices, keep nodes and devices."""
    drivers, _ = await kube.list(STORAGE_DRIVERS)
    for item in drivers:
        if item["metadata"]["name"].startswith("bench-"):
            await kube.patch(STORAGE_DRIVERS, item["metadata"]["name"], {"metadata": {"finalizers": None}})
            await kube.delete(STORAGE_DRIVERS, item["metadata"]["name"])
    await delete_collection(kube, NODE_DRIVER_CONFIGS, f"{MANAGED_BY_LABEL}=storage-operator")
    devices, _ = await kube.list(NODE_DEVICES, label_selector=BENCH_LABEL, limit=2000)
    await bounded(
        kube.delete(NODE_DEVICES, d["metadata"]["name"]) for d in devices if "-hot" in d["metadata"]["name"]
    )


async def bench_devices(kube: KubeClient) -> dict[str, list[str]]:
    """Every benchmark NodeDevice: name -> its status.boundDrivers (page by page, names only,
    so that 80,000 of them do not fill this process)."""
    found: dict[str, list[str]] = {}
    token: str | None = None
    while True:
        page = await kube.list_page(
            NODE_DEVICES, label_selector=BENCH_LABEL, limit=1000, continue_token=token
        )
        for item in page.get("items") or []:
            found[item["metadata"]["name"]] = list((item.get("status") or {}).get("boundDrivers") or [])
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return found


async def grow_world(kube: KubeClient, count: int) -> tuple[dict[str, str], dict[str, list[str]]]:
    """`count` benchmark nodes (with fresh Leases) x 16 NodeDevices, creating only what is missing
    and removing benchmark nodes beyond `count` and latency devices: (node -> uid, device ->
    boundDrivers)."""
    await sim.ensure_lease_namespace(kube)
    nodes, _ = await kube.list(NODES, label_selector=BENCH_LABEL)
    uids = {n["metadata"]["name"]: str(n["metadata"]["uid"]) for n in nodes}
    wanted = [node_name(i) for i in range(count)]
    extra = sorted(set(uids) - set(wanted))
    if extra:
        log(f"removing {len(extra)} nodes beyond {count} (their NodeDevices and Leases too)")
        gone = set(extra)
        owned = [d for d in await bench_devices(kube) if d.rsplit("-", 1)[0] in gone]
        await bounded(kube.delete(NODE_DEVICES, name) for name in owned)
        await bounded(kube.delete(LEASES, LEASE_PREFIX + name, LEASE_NAMESPACE_DEFAULT) for name in extra)
        await bounded(kube.delete(NODES, name) for name in extra)
        for name in extra:
            del uids[name]
    started = time.monotonic()

    async def node_job(name: str) -> None:
        if name in uids:
            await sim.renew_lease(kube, name, duration=3600)
        else:
            uids[name] = await create_node(kube, name)

    await bounded(node_job(n) for n in wanted)
    log(f"{count} nodes with fresh Leases in {time.monotonic() - started:.1f}s")
    devices = await bench_devices(kube)
    hot = [name for name in devices if "-hot" in name]
    await bounded(kube.delete(NODE_DEVICES, name) for name in hot)
    for name in hot:
        del devices[name]
    missing = [(n, j) for n in wanted for j in range(DEVICES_PER_NODE) if f"{n}-d{j:02d}" not in devices]
    if missing:
        started = time.monotonic()
        log(f"creating {len(missing)} NodeDevices ({len(devices)} kept from an earlier run)")
        await bounded(create_device(kube, n, uids[n], j) for n, j in missing)
        seconds = time.monotonic() - started
        log(f"{len(missing)} NodeDevices in {seconds:.1f}s ({len(missing) / seconds:.0f}/s)")
        devices.update({f"{n}-d{j:02d}": [] for n, j in missing})
    return uids, devices


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class OperatorRun:
    def __init__(self, cluster: localcluster.ClusterConfig, logs: Path) -> None:
        self.cluster = cluster
        self.logs = logs
        self.starts = 0
        self.process: ComponentProcess | None = None

    def start(self, *extra: str) -> float:
        """Start it and wait for its `ready` line; seconds from spawn to ready."""
        started = self.spawn(*extra)
        assert self.process is not None
        self.process.wait_for_log(" ready ", timeout=600)
        return time.monotonic() - started

    async def start_async(self, *extra: str, timeout: float = 600) -> float:
        """`start` for a caller whose event loop must go on meanwhile (simulated agents)."""
        started = self.spawn(*extra)
        assert self.process is not None
        while " ready " not in self.process.log(100_000):
            if not self.process.running or time.monotonic() - started > timeout:
                raise AssertionError(f"the operator did not become ready:\n{self.process.log()}")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    def spawn(self, *extra: str) -> float:
        """Start the process; its monotonic start time."""
        self.starts += 1
        started = time.monotonic()
        self.process = ComponentProcess(
            "storage-operator",
            [
                console_script("storage-operator"),
                "--log-format",
                "text",
                "--liveness",
                f"http://127.0.0.1:{free_port()}/healthz",
                "--metrics",
                "",
                *extra,
            ],
            self.logs / f"operator-{self.starts}.log",
            env={"KUBECONFIG": str(self.cluster.kubeconfig)},
        ).start()
        return started

    def timings(self) -> str:
        """The operator's own account of its start: each list's duration, and ready."""
        assert self.process is not None
        lines = self.process.log(100_000).splitlines()
        return "\n".join(line for line in lines if " listed " in line or " ready " in line)

    def list_seconds(self, kind: str) -> float:
        line = next(line for line in self.timings().splitlines() if f" listed  kind={kind} " in line)
        return float(line.split("seconds=", 1)[1].split(maxsplit=1)[0])

    def ready_line(self) -> str:
        assert self.process is not None
        return next(line for line in self.process.log(100_000).splitlines() if " ready " in line)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


async def wait_for_specs(kube: KubeClient, expected: int, timeout: float = 600) -> None:
    """A check that the first start really wrote every node's NodeDriverConfig."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        configs, _ = await kube.list(
            NODE_DRIVER_CONFIGS, label_selector=f"{MANAGED_BY_LABEL}=storage-operator"
        )
        if len(configs) >= expected:
            return
        await asyncio.sleep(1)
    raise AssertionError(f"fewer than {expected} NodeDriverConfigs after {timeout}s")


async def latency_samples(kube: KubeClient, uids: dict[str, str], samples: int) -> list[float]:
    """Create one loop device at a time on a random node; time until a spec binds it."""
    _, version = await kube.list(NODE_DRIVER_CONFIGS, label_selector=f"{MANAGED_BY_LABEL}=storage-operator")
    seen: dict[str, float] = {}
    wanted: set[str] = set()
    arrived = asyncio.Event()

    async def watch() -> None:
        async for event in kube.watch(NODE_DRIVER_CONFIGS, resource_version=version, timeout_seconds=900):
            for entry in (event.object.get("spec") or {}).get("drivers") or []:
                for device in entry.get("devices") or []:
                    if device in wanted and device not in seen:
                        seen[device] = time.monotonic()
                        arrived.set()

    watcher = asyncio.create_task(watch())
    latencies = []
    rng = random.Random(42)
    try:
        for k in range(samples):
            node = node_name(rng.randrange(NODE_COUNT))
            name = f"{node}-hot{k:03d}"
            wanted.add(name)
            body = sim.device_body(node, name, "loop", sizeBytes=2**20)
            body["metadata"]["labels"][BENCH_LABEL] = "true"
            body["metadata"]["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uids[node]}
            ]
            started = time.monotonic()
            await kube.create(NODE_DEVICES, body)
            while name not in seen:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 60)
            latencies.append(seen[name] - started)
            await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
    return latencies


async def measure(cluster: localcluster.ClusterConfig, logs: Path) -> list[Table]:
    # Long requests: deleting 16,000 objects in one collection call takes minutes on a busy machine.
    async with KubeClient(load_kubeconfig(cluster.kubeconfig), request_timeout=900) as kube:
        await sim.ensure_lease_namespace(kube)
        names = [node_name(i) for i in range(NODE_COUNT)]
        devices = NODE_COUNT * DEVICES_PER_NODE
        uids = await reusable_world(kube) if KEEP else {}
        create_seconds = 0.0
        if uids:
            log("reusing the nodes and devices an earlier run kept (SDO_BENCH_KEEP=1)")
        else:
            log("removing what an earlier run left")
            await clean(kube)
            started = time.monotonic()

            async def node_job(name: str) -> None:
                uids[name] = await create_node(kube, name)

            await bounded(node_job(n) for n in names)
            log(f"{NODE_COUNT} nodes (with Leases) in {time.monotonic() - started:.1f}s")
            started = time.monotonic()
            await bounded(create_device(kube, n, uids[n], j) for n in names for j in range(DEVICES_PER_NODE))
            create_seconds = time.monotonic() - started
            log(f"{devices} NodeDevices in {create_seconds:.1f}s ({devices / create_seconds:.0f}/s)")
        for body in storage_drivers():
            await kube.create(STORAGE_DRIVERS, body)

        operator = OperatorRun(cluster, logs)
        try:
            cold_load = os.getloadavg()[0]
            cold = operator.start()
            cold_line = operator.ready_line()
            await wait_for_specs(kube, NODE_COUNT)
            await asyncio.sleep(5)
            assert operator.process is not None
            cold_rss, cold_peak = rss_mb(operator.process.pid)
            cold_list = operator.list_seconds("nodedevices")
            log(f"first start: ready in {cold:.2f}s, RSS {cold_rss:.0f} MB\n{operator.timings()}")

            operator.stop()
            warm_load = os.getloadavg()[0]
            warm = operator.start()
            warm_line = operator.ready_line()
            await asyncio.sleep(5)
            assert operator.process is not None
            warm_rss, warm_peak = rss_mb(operator.process.pid)
            warm_list = operator.list_seconds("nodedevices")
            log(f"restart: ready in {warm:.2f}s, RSS {warm_rss:.0f} MB\n{operator.timings()}")

            operator.stop()
            pages_load = os.getloadavg()[0]
            pages = operator.start("--list-pages")
            pages_line = operator.ready_line()
            assert operator.process is not None
            pages_rss, pages_peak = rss_mb(operator.process.pid)
            pages_list = operator.list_seconds("nodedevices")
            log(f"restart with --list-pages: ready in {pages:.2f}s\n{operator.timings()}")

            latency_load = os.getloadavg()[0]
            latencies = await latency_samples(kube, uids, LATENCY_SAMPLES)
            assert operator.process is not None
            after_rss, after_peak = rss_mb(operator.process.pid)
            log(f"latency p50 {ms(percentile(latencies, 50))}, p95 {ms(percentile(latencies, 95))}")
        finally:
            operator.stop()
            if KEEP:
                await keep_only_the_world(kube)
            else:
                log("cleaning up")
                await clean(kube)

    def writes(line: str) -> str:
        return line.split("spec_writes=", 1)[1].split(maxsplit=1)[0]

    created = (
        f"the NodeDevices were created in {create_seconds:.1f}s ({IN_FLIGHT} requests in flight)"
        if create_seconds
        else "the NodeDevices were kept from an earlier run"
    )
    scale = f"{NODE_COUNT:,} nodes x {DEVICES_PER_NODE} devices = {devices:,} NodeDevices, 4 StorageDrivers"
    ready = Table(
        "Operator time to ready and memory",
        [
            "start",
            "process start to ready",
            "of which listing NodeDevices",
            "spec writes at start",
            "RSS after ready",
            "peak RSS",
            "load avg",
        ],
        command=COMMAND,
        notes=(
            f"{scale}; {created}. Ready = every kind listed (whole lists from the API server's watch "
            "cache, read item by item, then 1 s for the watches to catch up; see docs/operator.md) and "
            "every node planned; on the first start that includes creating every NodeDriverConfig. "
            "Load avg = the machine's 1-minute load when the start began: other developers' clusters "
            "and tests share its 2 cores."
        ),
    )
    ready.add(
        "first (no NodeDriverConfigs yet)",
        f"{cold:.2f} s",
        f"{cold_list:.2f} s",
        writes(cold_line),
        f"{cold_rss:.0f} MB",
        f"{cold_peak:.0f} MB",
        f"{cold_load:.1f}",
    )
    ready.add(
        "restart (all written)",
        f"{warm:.2f} s",
        f"{warm_list:.2f} s",
        writes(warm_line),
        f"{warm_rss:.0f} MB",
        f"{warm_peak:.0f} MB",
        f"{warm_load:.1f}",
    )
    ready.add(
        "restart with --list-pages",
        f"{pages:.2f} s",
        f"{pages_list:.2f} s",
        writes(pages_line),
        f"{pages_rss:.0f} MB",
        f"{pages_peak:.0f} MB",
        f"{pages_load:.1f}",
    )
    latency = Table(
        "NodeDevice create to NodeDriverConfig spec write",
        ["samples", "p50", "p95", "max", "RSS after", "load avg"],
        command=COMMAND,
        notes=(
            f"{scale}; one new loop device at a time on a random node, timed from the create request "
            "until a separate watch on NodeDriverConfigs sees the device bound (includes the operator's "
            "coalescing window and both watch deliveries)."
        ),
    )
    latency.add(
        len(latencies),
        ms(percentile(latencies, 50)),
        ms(percentile(latencies, 95)),
        ms(max(latencies)),
        f"{after_rss:.0f} MB (peak {after_peak:.0f} MB)",
        f"{latency_load:.1f}",
    )
    return [ready, latency]


def run() -> list[Table]:
    cluster = localcluster.ClusterConfig.from_env()
    started_cluster = False
    if not localcluster.is_up(cluster):
        localcluster.up(cluster)
        started_cluster = True
    try:
        apply_crds(cluster)
        with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
            return asyncio.run(measure(cluster, Path(tmp)))
    finally:
        if started_cluster and os.environ.get("SDO_KEEP_CLUSTER") != "1":
            localcluster.down(cluster)
