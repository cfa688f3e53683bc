"""Hot-plug latency of the device part of storage-agent, on real loop devices and the local
control plane: loop attach -> NodeDevice visible, loop detach -> Present=False; the agent's
memory; the writes an event storm costs.

    python -m tests.bench devices [--write]

A real `storage-agent` process runs for this machine's Node; the benchmark watches the node's
NodeDevices (a watch, not polling, so the time is when the API server announced the object)
and its own netlink socket for the kernel uevent. Each latency is measured from just before
`losetup` is started and, separately, from the kernel's uevent as the benchmark received it.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyudev
from storage_driver_api.constants import NODE_DEVICES, NODE_LABEL, node_label_value
from storage_driver_api.kube import KubeClient, load_kubeconfig

from tests.bench.oncluster import clear_node_devices, run_on_local_cluster
from tests.bench.procstat import rss_peak_kib
from tests.bench.table import Table, ms, percentile
from tests.harness import localcluster
from tests.harness.loopdev import LoopDevice, attach, detach
from tests.harness.processes import ComponentProcess, console_script

ATTACHES = 25
STORM_EVENTS = 1000
MiB = 1024 * 1024
TIMEOUT = 30.0


@dataclass
class Results:
    attach_total: list[float] = field(default_factory=list)
    attach_kernel: list[float] = field(default_factory=list)
    detach_total: list[float] = field(default_factory=list)
    detach_kernel: list[float] = field(default_factory=list)
    idle_rss_kib: int = 0
    rss_kib: int = 0
    peak_rss_kib: int = 0
    storm_writes: int = 0
    storm_seconds: float = 0.0


@dataclass
class Observed:
    """Arrival times (time.monotonic) of watch events and uevents, by backing file / loop name."""

    visible: dict[str, float] = field(default_factory=dict)
    absent: dict[str, float] = field(default_factory=dict)
    versions: dict[str, list[str]] = field(default_factory=dict)  # NodeDevice name -> resourceVersions
    uevents: dict[str, list[float]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class UeventRecorder(threading.Thread):
    """The benchmark's own kernel uevent socket: when the kernel announced each loop change."""

    def __init__(self, observed: Observed):
        super().__init__(daemon=True)
        self.observed = observed
        self.monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        self.monitor.filter_by("block")
        self.monitor.start()
        self.running = True

    def run(self) -> None:
        while self.running:
            ready, _, _ = select.select([self.monitor], [], [], 0.2)
            while ready:
                device = self.monitor.poll(timeout=0)
                if device is None:
                    break
                self.observed.uevents.setdefault(str(device.sys_name), []).append(time.monotonic())


async def watch(kube: KubeClient, node: str, observed: Observed, ready: asyncio.Event) -> None:
    selector = f"{NODE_LABEL}={node_label_value(node)}"
    _, version = await kube.list(NODE_DEVICES, label_selector=selector)
    ready.set()
    while True:
        async for event in kube.watch(NODE_DEVICES, resource_version=version, label_selector=selector):
            now = time.monotonic()
            obj = event.object
            version = obj["metadata"].get("resourceVersion", version)
            if event.type == "BOOKMARK":
                continue
            name = obj["metadata"]["name"]
            observed.versions.setdefault(name, []).append(version)
            backing = (obj.get("spec") or {}).get("backingFile")
            if not backing:
                continue
            if event.type == "ADDED":
                observed.visible.setdefault(backing, now)
            conditions = (obj.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Present" and c.get("status") == "False" for c in conditions):
                observed.absent.setdefault(backing, now)
            observed.changed.set()


async def wait_for(observed: Observed, table: dict[str, float], key: str) -> float:
    deadline = time.monotonic() + TIMEOUT
    while key not in table:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no watch event for {key} within {TIMEOUT}s")
        observed.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(observed.changed.wait(), remaining)
    return table[key]


def first_uevent_after(observed: Observed, name: str, since: float) -> float | None:
    return next((t for t in observed.uevents.get(name, []) if t >= since), None)


async def measure(cfg: localcluster.ClusterConfig, work: Path) -> list[Table]:
    node = localcluster.local_node_name()
    observed = Observed()
    recorder = UeventRecorder(observed)
    recorder.start()
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as kube:
        await localcluster.ensure_local_node(kube)
        await clear_node_devices(kube, node)
        ready = asyncio.Event()
        watcher = asyncio.create_task(watch(kube, node, observed, ready))
        await ready.wait()
        agent = ComponentProcess(
            "storage-agent",
            [
                console_script("storage-agent"),
                f"--kubeconfig={cfg.kubeconfig}",
                f"--state-dir={work / 'state'}",
            ],
            work / "storage-agent.log",
            env={"NODE_NAME": node},
        ).start()
        attached: list[LoopDevice] = []
        try:
            await asyncio.to_thread(agent.wait_for_log, "device discovery started", 60)
            await asyncio.sleep(1.0)  # the first pass publishes the machine's disks
            results = Results()
            results.idle_rss_kib, _ = rss_peak_kib(agent.pid)
            for index in range(ATTACHES):
                backing = work / f"bench-{index}.img"
                started = time.monotonic()
                device = await asyncio.to_thread(attach, backing, 4 * MiB)
                attached.append(device)
                key = str(device.backing_file)
                seen = await wait_for(observed, observed.visible, key)
                results.attach_total.append(seen - started)
                if (uevent := first_uevent_after(observed, device.name, started)) is not None:
                    results.attach_kernel.append(seen - uevent)
                await asyncio.sleep(0.2)
                started = time.monotonic()
                await asyncio.to_thread(detach, device)
                gone = await wait_for(observed, observed.absent, key)
                results.detach_total.append(gone - started)
                if (uevent := first_uevent_after(observed, device.name, started)) is not None:
                    results.detach_kernel.append(gone - uevent)
                await asyncio.sleep(0.2)
            # An event storm without a real change: count the NodeDevice writes it causes.
            storm = await asyncio.to_thread(attach, work / "storm.img", 4 * MiB)
            attached.append(storm)
            await wait_for(observed, observed.visible, str(storm.backing_file))
            await asyncio.sleep(1.0)
            versions_before = sum(len(v) for v in observed.versions.values())
            uevent_path = Path(f"/sys/block/{storm.name}/uevent")
            storm_started = time.monotonic()
            await asyncio.to_thread(lambda: [uevent_path.write_text("change") for _ in range(STORM_EVENTS)])
            results.storm_seconds = time.monotonic() - storm_started
            await asyncio.sleep(3.0)
            results.storm_writes = sum(len(v) for v in observed.versions.values()) - versions_before
            results.rss_kib, results.peak_rss_kib = rss_peak_kib(agent.pid)
        finally:
            agent.stop()
            for device in attached:
                detach(device)
            watcher.cancel()
            recorder.running = False
    return tables(results)


def tables(results: Results) -> list[Table]:
    command = "python -m tests.bench devices"
    latency = Table(
        "Loop hot-plug -> NodeDevice (storage-agent process, local control plane)",
        ["measured", "p50", "p95", "max", "samples"],
        command=command,
        notes=(
            "From `losetup` start / from the kernel uevent (as a second netlink socket received it) to the "
            "watch event that shows the NodeDevice (attach: ADDED; detach: Present=False). Coalescing window "
            "at most 20 ms, closing after a 5 ms pause (the defaults); 4 MiB loop devices, attached and detached one "
            "at a time."
        ),
    )
    for label, samples in (
        ("attach -> NodeDevice visible, from losetup", results.attach_total),
        ("attach -> NodeDevice visible, from the uevent", results.attach_kernel),
        ("detach -> Present=False, from losetup", results.detach_total),
        ("detach -> Present=False, from the uevent", results.detach_kernel),
    ):
        if samples:
            latency.add(
                label,
                ms(percentile(samples, 50)),
                ms(percentile(samples, 95)),
                ms(max(samples)),
                len(samples),
            )
    resources = Table("storage-agent resources", ["measured", "value"], command=command)
    resources.add("RSS after start (machine's disks published)", f"{results.idle_rss_kib / 1024:.1f} MiB")
    resources.add(
        f"RSS after {len(results.attach_total)} attach/detach cycles and the storm",
        f"{results.rss_kib / 1024:.1f} MiB",
    )
    resources.add("peak RSS (VmHWM)", f"{results.peak_rss_kib / 1024:.1f} MiB")
    resources.add(
        f"NodeDevice writes caused by {STORM_EVENTS} `change` uevents on an unchanged loop device "
        f"(sent in {results.storm_seconds * 1000:.0f} ms)",
        str(results.storm_writes),
    )
    return [latency, resources]


def run() -> list[Table]:
    return run_on_local_cluster("devices", measure, loop_devices=True)
