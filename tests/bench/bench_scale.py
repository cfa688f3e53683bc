"""The operator at the Kubernetes scalability limit: 5,000 simulated nodes x 16 devices, beside 1,000.

    python -m tests.bench scale [--write]

A real storage-operator process against the local control plane, and simulated agents for every
node in this process (tests/bench/fleet.py: each answers its NodeDriverConfig's spec with the
real agent's status code). Measured for each node count (SDO_BENCH_SCALE_NODES, default
"1000,5000"): a StorageDriver that matches every device applied -> its status says Loaded on
every node; an operator restart -> ready, and the writes it made (the API server's /metrics); a
restart after a device arrived while the operator was down -> the spec binds it (its first
decision); the StorageDriver deleted -> the finalizer released and the object gone; the
operator's peak RSS (VmHWM). The nodes and NodeDevices are bench_operator's, grown (or shrunk)
from one count to the next; SDO_BENCH_KEEP=1 keeps them for the next run, as there.
SDO_BENCH_BOUND_DRIVERS=0 leaves out the agents' NodeDevice boundDrivers writes;
SDO_BENCH_LOGS=DIR keeps the operator's logs there; SDO_BENCH_PROFILE=DIR records each operator
process with py-spy (collapsed stacks, `py-spy` installed in the environment) for finding where
its time goes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage_driver_api.constants import MANAGED_BY_LABEL, NODE_DEVICES, NODE_DRIVER_CONFIGS, STORAGE_DRIVERS
from storage_driver_api.events import EVENT_NAMESPACE
from storage_driver_api.kube import EVENTS, TRANSPORT_ERRORS, ApiError, KubeClient, load_kubeconfig

from tests.bench import apimetrics
from tests.bench.bench_operator import (
    BENCH_LABEL,
    DEVICES_PER_NODE,
    KEEP,
    OperatorRun,
    clean,
    delete_collection,
    grow_world,
    node_name,
    rss_mb,
)
from tests.bench.fleet import Fleet
from tests.bench.oncluster import run_on_local_cluster
from tests.bench.table import Table
from tests.harness import localcluster
from tests.integration.operator import simulated as sim

COUNTS = tuple(int(n) for n in os.environ.get("SDO_BENCH_SCALE_NODES", "1000,5000").split(",") if n.strip())
BINDINGS = os.environ.get("SDO_BENCH_BOUND_DRIVERS", "1") != "0"
# The command as run, with the settings that change what is measured.
COMMAND = " ".join(
    [
        *(
            f"{k}={os.environ[k]}"
            for k in ("SDO_BENCH_SCALE_NODES", "SDO_BENCH_BOUND_DRIVERS")
            if k in os.environ
        ),
        "python -m tests.bench scale --write",
    ]
)
DRIVER = "scale-all"
ALL_TYPES = ["loop", "nvme-namespace", "scsi-disk"]  # every type bench_operator's devices have
PHASE_TIMEOUT = 900.0
QUIET_SECONDS = 5.0  # after ready: what a restart writes shows up by then
OPERATOR_RESOURCES = ("nodedriverconfigs", "storagedrivers", "events")
AGENT_WRITES = frozenset({"nodedriverconfigs/status", "nodedevices/status"})
TARGETS = {"apply": 15.0, "delete": 15.0, "restart": 10.0, "rss": 400.0}


PROFILE = os.environ.get("SDO_BENCH_PROFILE")


def log(message: str) -> None:
    """With the time of day, to hold beside the operator's log (SDO_BENCH_LOGS)."""
    print(
        f"[bench scale] {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {message}",
        flush=True,
    )


def profile(operator: OperatorRun, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy recording the operator until it exits (SDO_BENCH_PROFILE)."""
    if not PROFILE or operator.process is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    Path(PROFILE).mkdir(parents=True, exist_ok=True)
    output = Path(PROFILE) / f"{name}-{operator.starts}.txt"
    argv = [spy, "record", "--pid", str(operator.process.pid), "--format", "raw", "--rate", "50"]
    return subprocess.Popen(
        [*argv, "--nonblocking", "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@dataclass
class Phase:
    seconds: float | None = None  # None: not reached within PHASE_TIMEOUT
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds from the phase's start
    writes: apimetrics.Counts = field(default_factory=Counter)
    peak_mb: float = 0.0
    load: float = 0.0


@dataclass
class Result:
    nodes: int
    devices: int
    phases: dict[str, Phase] = field(default_factory=dict)
    failure: str | None = None  # why the count did not finish
    fleet: Fleet | None = None  # its agents, while they run


async def progress(result: Result, every: float = 20.0) -> None:
    """A line now and then while a long phase runs: what the agents have done so far."""
    last = None
    while True:
        await asyncio.sleep(every)
        if result.fleet is not None:
            marks = result.fleet.marks
            now = (marks.status_writes, marks.binding_writes, marks.errors)
            if now != last:
                log(
                    f"{result.nodes} nodes, {len(result.phases)} phases done; agents in this phase: "
                    f"{now[0]} status writes, {now[1]} boundDrivers writes, {now[2]} errors"
                )
            last = now


def operator_writes(delta: apimetrics.Counts) -> apimetrics.Counts:
    """The writes of the resources the operator writes, without the agents' status writes."""
    return Counter(
        {k: n for k, n in apimetrics.writes(delta, OPERATOR_RESOURCES).items() if k[1] not in AGENT_WRITES}
    )


async def driver_events(kube: KubeClient) -> int:
    """Events about StorageDrivers so far (the operator's and kopf's; the node controller's
    NodeNotReady Events about the simulated nodes are not)."""
    items, _ = await kube.list(
        EVENTS, namespace=EVENT_NAMESPACE, field_selector="involvedObject.kind=StorageDriver", limit=1000
    )
    return len(items)


@dataclass
class Before:
    counts: apimetrics.Counts
    events: int


async def mark(kube: KubeClient) -> Before:
    return Before(await apimetrics.snapshot(kube), await driver_events(kube))


async def writes_since(kube: KubeClient, before: Before) -> apimetrics.Counts:
    """Every write since `before` by verb and resource, with POST events only those about
    StorageDrivers (the counters do not say who wrote)."""
    delta = apimetrics.writes((await apimetrics.snapshot(kube)) - before.counts)
    delta.pop(("POST", "events"), None)
    if events := await driver_events(kube) - before.events:
        delta[("POST", "events")] = events
    return delta


def agent_writes(delta: apimetrics.Counts) -> apimetrics.Counts:
    return Counter({k: n for k, n in apimetrics.writes(delta).items() if k[1] in AGENT_WRITES})


async def watch_until(
    kube: KubeClient,
    res: Any,
    name: str,
    version: str,
    done: Callable[[Mapping[str, Any] | None], bool],
    *,
    timeout: float = PHASE_TIMEOUT,
) -> float | None:
    """Watch one object from `version` until `done(object)` (None: deleted); when (monotonic),
    or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async for event in kube.watch(
                res,
                resource_version=version,
                field_selector=f"metadata.name={name}",
                timeout_seconds=max(1, min(300, int(deadline - time.monotonic()))),
            ):
                version = event.object.get("metadata", {}).get("resourceVersion") or version
                if event.type == "BOOKMARK":
                    continue
                if done(None if event.type == "DELETED" else event.object):
                    return time.monotonic()
        except ApiError as exc:
            if not exc.gone:
                raise
            obj = await kube.get_or_none(res, name)
            if done(obj):
                return time.monotonic()
            version = str((obj or {}).get("metadata", {}).get("resourceVersion") or "")
            if not version:
                _, version = await kube.list(res, limit=1)
    return None


def loaded_everywhere(nodes: int) -> Callable[[Mapping[str, Any] | None], bool]:
    def done(obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        status = obj.get("status") or {}
        ready = sim.condition(status, "Ready")
        return (
            status.get("observedGeneration") == obj["metadata"].get("generation")
            and status.get("loadedNodes") == nodes
            and ready.get("status") == "True"
            and ready.get("reason") == "Loaded"
        )

    return done


async def remove_drivers(kube: KubeClient) -> None:
    """StorageDrivers an earlier run left, finalizers and all."""
    drivers, _ = await kube.list(STORAGE_DRIVERS)
    for item in drivers:
        name = item["metadata"]["name"]
        if name.startswith(("bench-", "scale-")):
            await kube.patch(STORAGE_DRIVERS, name, {"metadata": {"finalizers": None}})
            await kube.delete(STORAGE_DRIVERS, name)


async def settle(fleet: Fleet, quiet: float = 2.0, timeout: float = PHASE_TIMEOUT) -> None:
    """Until the agents have had nothing to do for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    calm_since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if not fleet.idle:
            calm_since = time.monotonic()
        last = max(fleet.marks.spec_seen, fleet.marks.status_written, fleet.marks.bindings_written)
        if fleet.idle and time.monotonic() - max(calm_since, last) >= quiet:
            return
    raise AssertionError(f"the simulated agents were still busy after {timeout:.0f}s")


STAGES = ("last spec change seen by an agent", "last agent status write", "last boundDrivers write")


def stages(fleet: Fleet, started: float) -> dict[str, float]:
    marks = fleet.marks
    found = zip(STAGES, (marks.spec_seen, marks.status_written, marks.bindings_written), strict=True)
    return {stage: at - started for stage, at in found if at >= started}


async def measure_count(
    kube: KubeClient, cluster: localcluster.ClusterConfig, logs: Path, result: Result
) -> None:
    """Fill `result` phase by phase (what a count that does not finish reached stays)."""
    count, devices = result.nodes, result.devices
    log(f"=== {count:,} nodes x {DEVICES_PER_NODE} devices = {devices:,} NodeDevices")
    await remove_drivers(kube)
    uids, bound = await grow_world(kube, count)
    fleet = result.fleet = Fleet(kube, uids, bound, label=BENCH_LABEL, bindings=BINDINGS)
    started = time.monotonic()
    await fleet.prepare()
    log(f"the agents' NodeDriverConfigs and reports in {time.monotonic() - started:.1f}s")
    fleet.start()
    operator = OperatorRun(cluster, Path(os.environ.get("SDO_BENCH_LOGS") or logs) / f"{count}")
    spies: list[subprocess.Popen[bytes] | None] = []
    try:
        load = os.getloadavg()[0]
        ready = await operator.start_async()
        assert operator.process is not None
        spies.append(profile(operator, f"{count}"))
        await settle(fleet)  # leftovers of an interrupted run, if any
        result.phases["start"] = Phase(ready, peak_mb=rss_mb(operator.process.pid)[1], load=load)
        log(f"operator ready in {ready:.2f}s; {operator.ready_line().split(' ready ', 1)[1]}")

        # Apply: a StorageDriver matching every device.
        fleet.reset_marks()
        body = sim.storage_driver(DRIVER, supportedDevices=ALL_TYPES)
        _, version = await kube.list(STORAGE_DRIVERS, limit=1)
        before = await mark(kube)
        load = os.getloadavg()[0]
        started = time.monotonic()
        log(f"applying {DRIVER}")
        await kube.create(STORAGE_DRIVERS, body)
        loaded_at = await watch_until(kube, STORAGE_DRIVERS, DRIVER, version, loaded_everywhere(count))
        phase = Phase(None if loaded_at is None else loaded_at - started, load=load)
        log(
            f"apply -> Loaded on every node: {phase.seconds if phase.seconds is None else round(phase.seconds, 2)}s"
        )
        await settle(fleet)
        phase.stages = stages(fleet, started)
        phase.writes = await writes_since(kube, before)
        phase.peak_mb = rss_mb(operator.process.pid)[1]
        result.phases["apply"] = phase
        log(f"apply: {phase.stages}; writes: {apimetrics.describe(phase.writes)}")

        # Restart, nothing changed: ready, and what it writes.
        operator.stop()
        before = await mark(kube)
        load = os.getloadavg()[0]
        ready = await operator.start_async()
        spies.append(profile(operator, f"{count}"))
        await asyncio.sleep(QUIET_SECONDS)
        phase = Phase(ready, load=load)
        phase.writes = operator_writes(await writes_since(kube, before))
        phase.peak_mb = rss_mb(operator.process.pid)[1]
        result.phases["restart"] = phase
        log(f"restart: ready in {ready:.2f}s; operator writes: {apimetrics.describe(phase.writes)}")

        # Restart after a device arrived while the operator was down: its first decision.
        operator.stop()
        node = node_name(count // 2)
        hot = f"{node}-hot000"
        fleet.add_device(node, hot)
        device = sim.device_body(node, hot, "loop", sizeBytes=2**20)
        device["metadata"]["labels"][BENCH_LABEL] = "true"
        device["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uids[node]}
        ]
        await kube.create(NODE_DEVICES, device)
        config = await kube.get(NODE_DRIVER_CONFIGS, node)

        def binds(obj: Mapping[str, Any] | None) -> bool:
            entries = ((obj or {}).get("spec") or {}).get("drivers") or []
            return any(hot in (entry.get("devices") or []) for entry in entries)

        watcher = asyncio.create_task(
            watch_until(kube, NODE_DRIVER_CONFIGS, node, config["metadata"]["resourceVersion"], binds)
        )
        await asyncio.sleep(0.5)  # the watch is open
        before = await mark(kube)
        load = os.getloadavg()[0]
        started = time.monotonic()
        ready = await operator.start_async()
        spies.append(profile(operator, f"{count}"))
        decided_at = await watcher
        await asyncio.sleep(QUIET_SECONDS)
        phase = Phase(None if decided_at is None else decided_at - started, load=load)
        phase.stages = {"ready": ready}
        phase.writes = operator_writes(await writes_since(kube, before))
        phase.peak_mb = rss_mb(operator.process.pid)[1]
        result.phases["decision"] = phase
        log(
            f"restart with a new device: ready {ready:.2f}s, decided {phase.seconds}s; writes {apimetrics.describe(phase.writes)}"
        )
        await kube.delete(NODE_DEVICES, hot)
        await watch_until(
            kube, NODE_DRIVER_CONFIGS, node, config["metadata"]["resourceVersion"], lambda o: not binds(o)
        )
        await settle(fleet)

        # Delete: the finalizer is released once every node reports the driver unloaded.
        fleet.reset_marks()
        obj = await kube.get(STORAGE_DRIVERS, DRIVER)
        before = await mark(kube)
        load = os.getloadavg()[0]
        started = time.monotonic()
        log(f"deleting {DRIVER}")
        await kube.delete(STORAGE_DRIVERS, DRIVER)
        gone_at = await watch_until(
            kube, STORAGE_DRIVERS, DRIVER, obj["metadata"]["resourceVersion"], lambda o: o is None
        )
        phase = Phase(None if gone_at is None else gone_at - started, load=load)
        log(f"delete -> gone: {phase.seconds}s")
        await settle(fleet)
        phase.stages = stages(fleet, started)
        phase.writes = await writes_since(kube, before)
        phase.peak_mb = rss_mb(operator.process.pid)[1]
        result.phases["delete"] = phase
        log(f"delete: {phase.stages}; writes: {apimetrics.describe(phase.writes)}")
    finally:
        operator.stop()
        await fleet.stop()
        for spy in spies:
            if spy is not None:
                spy.wait(60)


async def measure(cluster: localcluster.ClusterConfig, logs: Path) -> list[Table]:
    results = []
    # Long requests: deleting tens of thousands of objects in one collection call takes minutes.
    async with KubeClient(load_kubeconfig(cluster.kubeconfig), request_timeout=900) as kube:
        try:
            for count in sorted(COUNTS):
                result = Result(count, count * DEVICES_PER_NODE)
                results.append(result)
                reporter = asyncio.create_task(progress(result))
                try:
                    await measure_count(kube, cluster, logs, result)
                except (AssertionError, ApiError, *TRANSPORT_ERRORS) as exc:
                    result.failure = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                    log(f"{count} nodes did not finish: {result.failure}")
                finally:
                    reporter.cancel()
        finally:
            await remove_drivers(kube)
            await delete_collection(kube, NODE_DRIVER_CONFIGS, BENCH_LABEL)
            await delete_collection(kube, NODE_DRIVER_CONFIGS, f"{MANAGED_BY_LABEL}=storage-operator")
            if not KEEP:
                log("cleaning up")
                await clean(kube)
    return [table(results)]


def seconds(value: float | None) -> str:
    return "not within 900 s" if value is None else f"{value:.2f} s"


def table(results: list[Result]) -> Table:
    columns = ["measured", "target", *(f"{r.nodes:,} nodes ({r.devices:,} NodeDevices)" for r in results)]
    rows: list[list[str]] = []

    def row(what: str, target: str, phase: str, cell: Callable[[Phase], str]) -> None:
        rows.append([what, target, *(cell(r.phases[phase]) if phase in r.phases else "-" for r in results)])

    def took(p: Phase) -> str:
        return seconds(p.seconds)

    def stage(name: str) -> Callable[[Phase], str]:
        return lambda p: seconds(p.stages[name]) if name in p.stages else "-"

    def writes(pick: Callable[[apimetrics.Counts], apimetrics.Counts]) -> Callable[[Phase], str]:
        return lambda p: apimetrics.describe(pick(p.writes))

    def converge(phase: str, what: str) -> None:
        """The phase's time, when the agents last worked in it, and who wrote what."""
        row(what, f"<= {TARGETS[phase]:.0f} s", phase, took)
        for name in STAGES:
            row(f"  {phase} -> {name}", "", phase, stage(name))
        row("  writes: operator", "", phase, writes(operator_writes))
        row("  writes: agents", "", phase, writes(agent_writes))
        row("  machine load (1 min) at the start", "", phase, lambda p: f"{p.load:.1f}")

    row("operator start (agents' NodeDriverConfigs there) -> ready", "", "start", took)
    converge("apply", "apply a StorageDriver matching every device -> Loaded on every node")
    row("operator restart -> ready", "<= 10 s", "restart", took)
    row(f"  operator writes, start to {QUIET_SECONDS:.0f} s after ready", "0", "restart", writes(lambda c: c))
    row("restart after a device arrived while down -> spec binds it", "<= 10 s", "decision", took)
    row("  that start -> ready", "", "decision", stage("ready"))
    row("  operator writes (the decision: 1 spec patch)", "1", "decision", writes(lambda c: c))
    converge("delete", "delete it -> finalizer released, object gone")
    for phase, what in (
        ("start", "after the first start"),
        ("apply", "after apply"),
        ("restart", "after a restart"),
        ("delete", "after restart + delete"),
    ):
        row(f"operator peak RSS (VmHWM) {what}", "<= 400 MB", phase, lambda p: f"{p.peak_mb:.0f} MB")
    failures = "".join(f" {r.nodes:,} nodes did not finish: {r.failure}." for r in results if r.failure)
    counts = " and ".join(f"{r.nodes:,}" for r in results)
    result = Table(f"Scale: {counts} simulated nodes, agents answering", columns, command=COMMAND)
    result.rows = rows
    result.notes = (
        f"{DEVICES_PER_NODE} NodeDevices per node (loop, NVMe namespaces, SCSI disks), one StorageDriver "
        f"matching all of them; a real storage-operator process (default options) and simulated agents in "
        "the benchmark's process (tests/bench/fleet.py), answering each NodeDriverConfig spec change with "
        "the real agent's status code: one status patch per node (every driver Loaded, observedGeneration"
        + (", then a boundDrivers patch per NodeDevice" if BINDINGS else "; boundDrivers writes off")
        + "). Loaded on every node: the StorageDriver's status at its generation with loadedNodes = nodes "
        "and Ready=True (Loaded), seen by a watch. Writes from the API server's /metrics "
        "(apiserver_request_total), by verb and resource; operator = nodedriverconfigs (spec), "
        "storagedrivers, events. The control plane, the operator and the simulated agents share the "
        "machine's 2 cores." + failures
    )
    return result


def run() -> list[Table]:
    return run_on_local_cluster("scale", measure)
