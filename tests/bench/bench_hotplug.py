"""The headline: from a device plugged in to its driver running, and from unplugged to unloaded,
through every component for real.

    python -m tests.bench hotplug [--write]

A real `storage-operator` and a real `storage-agent` (driver hosts started directly) run for
this machine's Node against the local control plane; the example loop StorageDriver is
applied with `unloadDelaySeconds: 0` and a deviceSelector for this benchmark's device size.
For each of the attaches a real loop device is attached with `losetup`, and the benchmark
follows watches of the node's NodeDevices and its NodeDriverConfig to time each stage:
NodeDevice published (agent), spec names the device (operator), driver host Loaded with the
device attached (agent); and after `losetup --detach`: Present=False, spec drops the driver,
driver gone from the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from storage_driver_api.constants import (
    LEASE_NAMESPACE_DEFAULT,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import NAMESPACES, KubeClient, Resource, load_kubeconfig

from tests.bench import apimetrics, trail
from tests.bench.floor import FLOOR_STAGES_IN, FLOOR_STAGES_OUT, Floor
from tests.bench.oncluster import clear_node_devices, run_on_local_cluster
from tests.bench.procstat import cpu_seconds, rss_peak_kib
from tests.bench.table import Table, ms, percentile
from tests.harness import localcluster
from tests.harness.loopdev import attach, detach
from tests.harness.processes import ComponentProcess, console_script

REPO_ROOT = Path(__file__).resolve().parents[2]
ATTACHES = 20
TIMEOUT = 60.0
DRIVER = "loop-info"


@dataclass
class Stream:
    """The latest objects of one watch, and an event to wake whoever waits on them."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


async def follow(
    kube: KubeClient, res: Resource, stream: Stream, ready: asyncio.Event, **selectors: str
) -> None:
    items, version = await kube.list(res, **selectors)  # type: ignore[arg-type]
    stream.objects = {i["metadata"]["name"]: i for i in items}
    ready.set()
    while True:
        async for event in kube.watch(res, resource_version=version, **selectors):  # type: ignore[arg-type]
            version = event.object["metadata"].get("resourceVersion", version)
            if event.type == "BOOKMARK":
                continue
            name = event.object["metadata"]["name"]
            if event.type == "DELETED":
                stream.objects.pop(name, None)
            else:
                stream.objects[name] = event.object
            stream.changed.set()


async def until(stream: Stream, probe: Callable[[], Any], what: str) -> Any:
    """Wait for probe() to return something truthy; the time it first did (time.monotonic)."""
    deadline = time.monotonic() + TIMEOUT
    while not (found := probe()):
        stream.changed.clear()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out waiting for {what}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stream.changed.wait(), remaining)
    return found


def present(devices: Stream, name: str) -> bool:
    conditions = ((devices.objects.get(name) or {}).get("status") or {}).get("conditions") or []
    return name in devices.objects and not any(
        c["type"] == "Present" and c["status"] == "False" for c in conditions
    )


def device_named(devices: Stream, kernel_name: str) -> str | None:
    """The present NodeDevice of a kernel name (earlier devices of that name are absent)."""
    return next(
        (
            n
            for n, obj in devices.objects.items()
            if obj["spec"].get("kernelName") == kernel_name and present(devices, n)
        ),
        None,
    )


def spec_devices(config: Stream, node: str) -> list[str] | None:
    for entry in ((config.objects.get(node) or {}).get("spec") or {}).get("drivers") or []:
        if entry["name"] == DRIVER:
            return list(entry.get("devices") or [])
    return None


def status_entry(config: Stream, node: str) -> dict[str, Any] | None:
    for entry in ((config.objects.get(node) or {}).get("status") or {}).get("drivers") or []:
        if entry["name"] == DRIVER:
            return dict(entry)
    return None


STAGES_IN = ("NodeDevice published", "spec names the device", "driver Loaded, device attached")
STAGES_OUT = ("NodeDevice Present=False", "spec drops the driver", "driver unloaded")


async def cycle(
    devices: Stream,
    config: Stream,
    node: str,
    backing: Path,
    size: int,
    *,
    between: Callable[[], Awaitable[None]] | None = None,
) -> tuple[list[float], list[float]]:
    """One attach and detach: the cumulative time to each stage in, then out; `between` runs
    after the last stage in, before the detach (outside the times)."""
    timings_in: list[float] = []
    timings_out: list[float] = []
    started = time.monotonic()
    device = await asyncio.to_thread(attach, backing, size)
    try:
        name = await until(devices, lambda: device_named(devices, device.name), "NodeDevice")
        timings_in.append(time.monotonic() - started)
        await until(config, lambda: name in (spec_devices(config, node) or []), "spec")
        timings_in.append(time.monotonic() - started)

        def loaded() -> bool:
            entry = status_entry(config, node)
            return (
                entry is not None and entry["phase"] == "Loaded" and name in (entry.get("boundDevices") or [])
            )

        await until(config, loaded, "Loaded")
        timings_in.append(time.monotonic() - started)
        if between is not None:
            await between()
    finally:
        started = time.monotonic()
        await asyncio.to_thread(detach, device)
    await until(devices, lambda: not present(devices, name), "Present=False")
    timings_out.append(time.monotonic() - started)
    await until(config, lambda: spec_devices(config, node) is None, "spec without the driver")
    timings_out.append(time.monotonic() - started)
    await until(config, lambda: status_entry(config, node) is None, "unloaded")
    timings_out.append(time.monotonic() - started)
    return timings_in, timings_out


LAUNCHERS = ("direct", "supervisor")
FLOOR_NODE = "bench-floor"
REST_SECONDS = 30.0
SETTLE_SECONDS = 1.0  # after Loaded and after unloaded: the StorageDriver status follows within 1 s
# The kinds the project's components write; Leases apart (liveness, and the control plane's own).
PROJECT_RESOURCES = ("nodedevices", "nodedriverconfigs", "storagedrivers", "events")


@dataclass
class Samples:
    ins: dict[str, list[float]]
    outs: dict[str, list[float]]

    @classmethod
    def of(cls, stages_in: tuple[str, ...], stages_out: tuple[str, ...]) -> Samples:
        return cls({s: [] for s in stages_in}, {s: [] for s in stages_out})

    def add(self, timings_in: list[float], timings_out: list[float]) -> None:
        for stage, value in zip(self.ins, timings_in, strict=True):
            self.ins[stage].append(value)
        for stage, value in zip(self.outs, timings_out, strict=True):
            self.outs[stage].append(value)

    def total_in(self) -> list[float]:
        return list(self.ins.values())[-1]

    def total_out(self) -> list[float]:
        return list(self.outs.values())[-1]


@dataclass
class Phase:
    """One launcher's run: its stage samples and what it asked of the API server."""

    launcher: str
    samples: Samples
    writes: apimetrics.Counts
    leases: int
    trail: dict[str, list[float]] = field(default_factory=dict)
    split: dict[str, apimetrics.Counts] = field(default_factory=dict)  # "plug" / "unplug" -> writes


async def run_floor(kube: KubeClient, samples: Samples, count: int, first: int) -> None:
    floor = Floor(kube, FLOOR_NODE)
    await floor.setup()
    try:
        for index in range(first, first + count):
            samples.add(*await floor.cycle(index))
            await asyncio.sleep(0.3)
    finally:
        await floor.cleanup()


def start_components(
    cfg: localcluster.ClusterConfig, work: Path, node: str, driver_dir: Path, launcher: str
) -> list[ComponentProcess]:
    """The supervisor (as the chart runs it: no credentials), the agent, the operator; started."""
    env = {"KUBECONFIG": str(cfg.kubeconfig)}
    state = work / f"state-{launcher}"
    started: list[ComponentProcess] = []
    if launcher == "supervisor":
        supervisor = ComponentProcess(
            "supervisor",
            [console_script("storage-agent"), "supervise", "--state-dir", str(state)],
            work / "supervisor.log",
            env={"KUBECONFIG": str(work / "no-credentials")},
        ).start()
        started.append(supervisor)
        supervisor.wait_for_log("supervisor listening", timeout=60)
    started.append(
        ComponentProcess(
            "storage-agent",
            [
                console_script("storage-agent"),
                f"--node-name={node}",
                f"--driver-dir={driver_dir}",
                f"--state-dir={state}",
                f"--launcher={launcher}",
            ],
            work / f"agent-{launcher}.log",
            env=env,
        ).start()
    )
    operator = ComponentProcess(
        "storage-operator",
        [console_script("storage-operator"), "--liveness", "", "--metrics", ""],
        work / f"operator-{launcher}.log",
        env=env,
    ).start()
    started.append(operator)
    operator.wait_for_log('"msg": "ready"', 60)
    return started


async def measure(cfg: localcluster.ClusterConfig, work: Path) -> list[Table]:
    node = localcluster.local_node_name()
    size = 7 * 2**20 + random.randrange(1, 256) * 4096  # a size no other loop device here has
    driver_dir = work / "drivers"
    driver_dir.mkdir()
    shutil.copy(REPO_ROOT / "examples" / "drivers" / "loop_info.py", driver_dir)
    manifest: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "examples" / "storagedriver-loop.yaml").read_text()
    )
    manifest["spec"]["unloadDelaySeconds"] = 0
    manifest["spec"]["deviceSelector"] = [{"key": "sizeBytes", "operator": "In", "values": [str(size)]}]
    floor = Samples.of(FLOOR_STAGES_IN, FLOOR_STAGES_OUT)
    phases: list[Phase] = []
    loads = [os.getloadavg()[0]]
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as kube:
        await localcluster.ensure_local_node(kube)
        if await kube.get_or_none(NAMESPACES, LEASE_NAMESPACE_DEFAULT) is None:  # the agents' Leases
            await kube.create(
                NAMESPACES,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEASE_NAMESPACE_DEFAULT}},
            )
        await kube.delete(STORAGE_DRIVERS, DRIVER)
        await clear_node_devices(kube, node)
        # The control plane's own writes with nothing of ours running, to tell ours from them.
        before = await apimetrics.snapshot(kube)
        await asyncio.sleep(REST_SECONDS)
        baseline = apimetrics.writes(await apimetrics.snapshot(kube) - before)
        await run_floor(kube, floor, ATTACHES // 2, 0)
        devices, config = Stream(), Stream()
        ready = [asyncio.Event(), asyncio.Event()]
        watchers = [
            asyncio.create_task(
                follow(
                    kube,
                    NODE_DEVICES,
                    devices,
                    ready[0],
                    label_selector=f"{NODE_LABEL}={node_label_value(node)}",
                )
            ),
            asyncio.create_task(
                follow(kube, NODE_DRIVER_CONFIGS, config, ready[1], field_selector=f"metadata.name={node}")
            ),
        ]
        for event in ready:
            await event.wait()
        at_rest = Counter[tuple[str, str]]()
        footprint: list[tuple[str, float, float, float]] = []
        device_changes = 0
        try:
            for launcher in LAUNCHERS:
                components = await asyncio.to_thread(start_components, cfg, work, node, driver_dir, launcher)
                try:
                    await kube.create(STORAGE_DRIVERS, manifest)
                    await until(
                        config,
                        lambda: any(
                            a.get("file") == "loop_info.py"
                            for a in ((config.objects.get(node) or {}).get("status") or {}).get("available")
                            or []
                        ),
                        "loop_info.py to be available",
                    )
                    await asyncio.sleep(1.0)  # let the start's writes finish before counting
                    samples = Samples.of(STAGES_IN, STAGES_OUT)
                    loads.append(os.getloadavg()[0])
                    tally = apimetrics.Tally(PROJECT_RESOURCES)
                    await tally.mark(kube)
                    counted = await apimetrics.snapshot(kube)

                    async def plugged(tally: apimetrics.Tally = tally) -> None:
                        await asyncio.sleep(SETTLE_SECONDS)  # the plug's Events and statuses
                        await tally.mark(kube, "plug")

                    for index in range(ATTACHES):
                        samples.add(
                            *await cycle(
                                devices,
                                config,
                                node,
                                work / f"hotplug-{launcher}-{index}.img",
                                size,
                                between=plugged,
                            )
                        )
                        await asyncio.sleep(SETTLE_SECONDS)
                        await tally.mark(kube, "unplug")
                    delta = await apimetrics.snapshot(kube) - counted
                    logs = trail.read([work / f"agent-{launcher}.log", work / f"operator-{launcher}.log"])
                    plug, unplug = trail.steps(DRIVER)
                    phases.append(
                        Phase(
                            launcher,
                            samples,
                            apimetrics.writes(delta, PROJECT_RESOURCES),
                            apimetrics.writes(delta, ["leases"]).total(),
                            {**trail.gaps(logs, plug, "plug"), **trail.gaps(logs, unplug, "unplug")},
                            tally.counts,
                        )
                    )
                    loads.append(os.getloadavg()[0])
                    if launcher == LAUNCHERS[-1]:
                        before = await apimetrics.snapshot(kube)
                        rest_from = time.time()
                        cpu_before = {c.name: cpu_seconds(c.pid) for c in components}
                        await asyncio.sleep(REST_SECONDS)
                        for c in components:
                            rss, peak = rss_peak_kib(c.pid)
                            cpu = (cpu_seconds(c.pid) - cpu_before[c.name]) / REST_SECONDS
                            footprint.append((c.name, rss / 1024, peak / 1024, cpu))
                        at_rest = apimetrics.writes(await apimetrics.snapshot(kube) - before)
                        device_changes = sum(
                            1
                            for at, line in trail.read([work / f"agent-{launcher}.log"])
                            if rest_from <= at <= rest_from + REST_SECONDS
                            and line["msg"]
                            in ("device arrived", "device changed", "device present", "device gone")
                        )
                finally:
                    await kube.delete(STORAGE_DRIVERS, DRIVER)
                    await asyncio.sleep(2.0)  # let the operator release its finalizer
                    for component in reversed(components):
                        component.stop()
        finally:
            for task in watchers:
                task.cancel()
        await run_floor(kube, floor, ATTACHES - ATTACHES // 2, ATTACHES // 2)
    loads.append(os.getloadavg()[0])
    load_note = (
        f"1-minute load average during the run: {min(loads):.1f} to {max(loads):.1f} (2 cores, shared)."
    )
    tables = []
    for phase in phases:
        how = {
            "direct": "Driver hosts started directly by the agent (--launcher direct).",
            "supervisor": "Driver hosts started by `storage-agent supervise`, as the chart runs it "
            "(--launcher supervisor; the supervisor has no credentials).",
        }[phase.launcher]
        table = Table(
            f"Hot-plug through every component (operator + agent, {phase.launcher} launcher)",
            ["stage (cumulative, from losetup)", "p50", "p95", "max", "samples"],
            command="python -m tests.bench hotplug --write",
            notes=(
                "A real loop device attached / detached with losetup; each row is the time from losetup's "
                "start until a watch showed that stage: the agent's NodeDevice, the operator's "
                "NodeDriverConfig spec, the agent's status with the driver host Loaded and the device "
                f"attached (unloadDelaySeconds 0 for the way out). {how} {load_note}"
            ),
        )
        add_stages(table, phase.samples.ins, phase.samples.outs)
        tables.append(table)
    tables.append(trail_table(phases, load_note))
    tables.append(floor_table(floor, phases, load_note))
    tables.append(economy_table(phases, at_rest, baseline, device_changes))
    tables.append(footprint_table(footprint, load_note))
    return tables


def trail_table(phases: list[Phase], load_note: str) -> Table:
    table = Table(
        "Where the hot-plug's time goes: step to step, from the components' log lines",
        ["step", *[f"{p.launcher} p50" for p in phases], *[f"{p.launcher} p95" for p in phases], "samples"],
        command="python -m tests.bench hotplug --write",
        notes=(
            "The same hot-plugs, timed from the agent's and the operator's own JSON log lines "
            "(millisecond timestamps, one clock; tests/bench/trail.py): device arrived / gone = the "
            "agent wrote the NodeDevice; spec received = the agent's watch delivered the operator's "
            "spec (so that step holds the operator's plan, its write and both watch deliveries); host "
            "started = the launcher returned a pid; driver loaded = the host's start() and attach() "
            f"returned; driver unloaded = stop() returned and the host exited. {load_note}"
        ),
    )
    for key in phases[0].trail if phases else []:
        table.add(
            key,
            *[ms(percentile(p.trail[key], 50)) if p.trail.get(key) else "-" for p in phases],
            *[ms(percentile(p.trail[key], 95)) if p.trail.get(key) else "-" for p in phases],
            min(len(p.trail.get(key) or []) for p in phases),
        )
    return table


def floor_table(floor: Samples, phases: list[Phase], load_note: str) -> Table:
    table = Table(
        "The floor: the same chain from a raw client, and the product's ratio to it",
        ["stage (cumulative)", "p50", "p95", "max", "samples"],
        command="python -m tests.bench hotplug --write",
        notes=(
            "The raw chain (tests/bench/floor.py) on a node name nothing else watches, half before and "
            "half after the product's runs: create a NodeDevice, its watch sees it, patch the "
            "NodeDriverConfig spec, its watch sees it, fork and exec a process, patch the status, its "
            "watch sees it; out: patch Present=False, spec, SIGTERM the process and reap it, status. "
            "Ratios compare p50s; the product's times start at losetup, so they also hold the kernel's "
            f"uevent and the agent's probe of the device. {load_note}"
        ),
    )
    for direction, stages in (("plug", floor.ins), ("unplug", floor.outs)):
        for stage, values in stages.items():
            table.add(
                f"{direction}: {stage}",
                ms(percentile(values, 50)),
                ms(percentile(values, 95)),
                ms(max(values)),
                len(values),
            )
    floor_in, floor_out = percentile(floor.total_in(), 50), percentile(floor.total_out(), 50)
    for phase in phases:
        product_in = percentile(phase.samples.total_in(), 50)
        product_out = percentile(phase.samples.total_out(), 50)
        table.add(
            f"ratio product / floor, attach -> Loaded ({phase.launcher})",
            f"{product_in / floor_in:.1f}x",
            "",
            "",
            "",
        )
        table.add(
            f"ratio product / floor, detach -> unloaded ({phase.launcher})",
            f"{product_out / floor_out:.1f}x",
            "",
            "",
            "",
        )
    return table


def footprint_table(footprint: list[tuple[str, float, float, float]], load_note: str) -> Table:
    table = Table(
        "Footprint at rest (supervisor launcher, no driver loaded)",
        ["process", "RSS", "peak RSS", "CPU"],
        command="python -m tests.bench hotplug --write",
        notes=(
            f"Over the {REST_SECONDS:.0f} s at rest after the supervisor phase's hot-plugs (the API "
            "economy table's window): VmRSS at its end, VmHWM, and user+system CPU time divided by the "
            f"window (1.0 = one core busy). {load_note}"
        ),
    )
    for name, rss, peak, cpu in footprint:
        table.add(name, f"{rss:.0f} MB", f"{peak:.0f} MB", f"{cpu * 100:.1f}% of a core")
    return table


def economy_table(
    phases: list[Phase], at_rest: apimetrics.Counts, baseline: apimetrics.Counts, device_changes: int
) -> Table:
    table = Table(
        "API economy: writes the API server counted (apiserver_request_total)",
        ["measured", "value", "by verb and resource"],
        command="python -m tests.bench hotplug --write",
        notes=(
            "From the API server's /metrics, read before and after each phase. A hot-plug is one attach "
            "and its detach. Project kinds: NodeDevices, NodeDriverConfigs, StorageDrivers and Events. "
            "Leases are counted apart: the agent renews its liveness Lease and the operator its leader "
            "Lease by design, and the control plane's own components renew theirs too (the baseline: "
            f"{REST_SECONDS:.0f} s with nothing of ours running)."
        ),
    )
    for phase in phases:
        count = len(phase.samples.total_in())
        total = phase.writes.total()
        table.add(
            f"writes per hot-plug (attach and detach), {phase.launcher} launcher",
            f"{total / count:.1f}",
            apimetrics.describe(phase.writes) + f" (over {count})",
        )
        for label, counts in phase.split.items():
            table.add(
                f"writes per {label}, {phase.launcher} launcher",
                f"{counts.total() / count:.1f}",
                apimetrics.describe(counts) + f" (over {count})",
            )
    per_minute = 60.0 / REST_SECONDS
    ours = apimetrics.writes(at_rest, PROJECT_RESOURCES)
    table.add(
        "project writes per minute at rest",
        f"{ours.total() * per_minute:.1f}",
        apimetrics.describe(ours)
        + f"; the agent logged {device_changes} device change(s) of other work on this machine meanwhile",
    )
    leases = at_rest[("PATCH", "leases")] + at_rest[("PUT", "leases")]
    base_leases = baseline[("PATCH", "leases")] + baseline[("PUT", "leases")]
    table.add(
        "Lease writes per minute at rest, minus the control plane's",
        f"{(leases - base_leases) * per_minute:.1f}",
        f"{leases * per_minute:.0f} with ours running, {base_leases * per_minute:.0f} without",
    )
    return table


def add_stages(table: Table, ins: dict[str, list[float]], outs: dict[str, list[float]]) -> None:
    """One row per stage, in and out: p50, p95, max of the cumulative times and the count."""
    for stages, samples in ((STAGES_IN, ins), (STAGES_OUT, outs)):
        for stage in stages:
            values = samples[stage]
            table.add(
                ("attach -> " if stages is STAGES_IN else "detach -> ") + stage,
                ms(percentile(values, 50)),
                ms(percentile(values, 95)),
                ms(max(values)),
                len(values),
            )


def run() -> list[Table]:
    return run_on_local_cluster("hotplug", measure, loop_devices=True)
