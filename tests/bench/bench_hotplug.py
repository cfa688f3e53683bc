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
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from storage_driver_api.kube import KubeClient, Resource, load_kubeconfig

from tests.bench.table import Table, ms, percentile
from tests.harness import localcluster
from tests.harness.loopdev import attach, detach, loop_devices_available
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
    devices: Stream, config: Stream, node: str, backing: Path, size: int
) -> tuple[list[float], list[float]]:
    """One attach and detach: the cumulative time to each stage in, then out."""
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
    env = {"KUBECONFIG": str(cfg.kubeconfig)}
    ins: dict[str, list[float]] = {s: [] for s in STAGES_IN}
    outs: dict[str, list[float]] = {s: [] for s in STAGES_OUT}
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as kube:
        await localcluster.ensure_local_node(kube)
        await kube.delete(STORAGE_DRIVERS, DRIVER)
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
        operator = ComponentProcess(
            "storage-operator",
            [console_script("storage-operator"), "--liveness", "", "--metrics", ""],
            work / "operator.log",
            env=env,
        ).start()
        agent = ComponentProcess(
            "storage-agent",
            [
                console_script("storage-agent"),
                f"--node-name={node}",
                f"--driver-dir={driver_dir}",
                f"--state-dir={work / 'state'}",
            ],
            work / "agent.log",
            env=env,
        ).start()
        try:
            await asyncio.to_thread(operator.wait_for_log, '"msg": "ready"', 60)
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
                timings_in, timings_out = await cycle(
                    devices, config, node, work / f"hotplug-{index}.img", size
                )
                for stage, value in zip(STAGES_IN, timings_in, strict=True):
                    ins[stage].append(value)
                for stage, value in zip(STAGES_OUT, timings_out, strict=True):
                    outs[stage].append(value)
                await asyncio.sleep(0.3)
        finally:
            await kube.delete(STORAGE_DRIVERS, DRIVER)
            await asyncio.sleep(2.0)  # let the operator release its finalizer
            agent.stop()
            operator.stop()
            for task in watchers:
                task.cancel()
    table = Table(
        "Hot-plug through every component (operator + agent, local control plane)",
        ["stage (cumulative, from losetup)", "p50", "p95", "max", "samples"],
        command="python -m tests.bench hotplug --write",
        notes=(
            "A real loop device attached / detached with losetup; each row is the time from losetup's "
            "start until a watch showed that stage: the agent's NodeDevice, the operator's "
            "NodeDriverConfig spec, the agent's status with the driver host Loaded and the device "
            "attached (unloadDelaySeconds 0 for the way out). Driver hosts started directly by the "
            "agent; a driver host is a new Python process, most of the Loaded stage."
        ),
    )
    add_stages(table, ins, outs)
    return [table]


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
    missing = loop_devices_available()
    if missing:
        raise SystemExit(f"bench hotplug: {missing}")
    cfg = localcluster.ClusterConfig.from_env()
    started = not localcluster.is_up(cfg)
    if started:
        localcluster.up(cfg)
    work = Path(tempfile.mkdtemp(prefix="sdo-bench-hotplug-"))
    try:
        return asyncio.run(measure(cfg, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if started:
            localcluster.down(cfg)
