"""Driver runtime: load and unload latency, reaction time, and memory with 0, 10 and 50 drivers.

A real storage-agent runs against the local control plane for a simulated Node. The benchmark
writes NodeDriverConfig.spec as the operator would and follows the status with a watch:

- load latency: from the spec patch to the status showing the driver Loaded (the agent sees the
  change, verifies the file, starts a driver host, the driver starts, the status is written
  and the watch delivers it); drivers are added one at a time, from 0 up to 50 loaded.
- unload latency: from the spec patch to the driver leaving the status (stop() returned, the
  host exited, the status written); removed one at a time, from 50 down to 0.
- reaction: from the agent receiving the spec change to the driver host process being spawned,
  taken from the agent's own log timestamps.
- memory: the agent's RSS and each driver host's unique (USS) and proportional (PSS) memory,
  from /proc/PID/smaps_rollup, and its RSS, with 0, 10 and 50 drivers loaded.

Each is measured for three ways to start a host: the direct launcher (the agent starts a fresh
interpreter), the supervisor starting a fresh interpreter (`--host-start exec`), and the
supervisor forking it from its warm host template (`--host-start template`, the default and the
chart's path).

    python -m tests.bench runtime [--write]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
import statistics
import time
from typing import Any

from storage_driver_api.constants import NODE_DRIVER_CONFIGS
from storage_driver_api.kube import NAMESPACES, NODES, ApiError, KubeClient, load_kubeconfig

from tests.bench.procstat import mib, rss_kib, smaps_kib
from tests.bench.table import Table, ms, percentile
from tests.harness import localcluster
from tests.harness.drivers import (
    Agent,
    desired_driver,
    kill_hosts,
    short_tmpdir,
    start_supervisor,
    write_probe,
)
from tests.harness.processes import ComponentProcess

NODE = "bench-runtime-node"
NAMESPACE = "sdo-bench"
COUNTS = (0, 10, 50)
MAX = max(COUNTS)
COMMAND = "python -m tests.bench runtime --write"
# (label, agent --launcher, supervisor --host-start or None)
STARTS = (
    ("direct (fresh interpreter)", "direct", None),
    ("supervisor, --host-start exec", "supervisor", "exec"),
    ("supervisor, --host-start template", "supervisor", "template"),
)


class StatusFollower:
    """Watches the node's NodeDriverConfig and records when each driver reaches a phase or leaves."""

    def __init__(self, kube: KubeClient, node: str = NODE):
        self.kube = kube
        self.node = node
        self.phases: dict[str, str] = {}
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        obj = await self.kube.get(NODE_DRIVER_CONFIGS, self.node)
        self._record(obj)
        self.task = asyncio.create_task(self._follow(str(obj["metadata"]["resourceVersion"])))

    def _record(self, obj: dict[str, Any]) -> None:
        drivers = (obj.get("status") or {}).get("drivers") or []
        self.phases = {d["name"]: d["phase"] for d in drivers}
        self.changed.set()

    async def _follow(self, version: str) -> None:
        while True:
            try:
                async for event in self.kube.watch(
                    NODE_DRIVER_CONFIGS, resource_version=version, field_selector=f"metadata.name={self.node}"
                ):
                    version = str(event.object["metadata"]["resourceVersion"])
                    if event.type != "BOOKMARK":
                        self._record(event.object)
            except ApiError:
                obj = await self.kube.get(NODE_DRIVER_CONFIGS, self.node)
                version = str(obj["metadata"]["resourceVersion"])
                self._record(obj)

    async def until(self, check: Any, timeout: float = 120) -> float:
        """Wait until check(phases) holds; returns the monotonic time it was seen."""
        deadline = time.monotonic() + timeout
        while not check(self.phases):
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"status did not reach the expected state; phases: {self.phases}")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                continue
        return time.monotonic()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


def driver_names(count: int) -> list[str]:
    return [f"bench-{i:02d}" for i in range(count)]


async def set_drivers(kube: KubeClient, names: list[str], node: str = NODE) -> None:
    await kube.patch(
        NODE_DRIVER_CONFIGS, node, {"spec": {"drivers": [desired_driver(n, grace=5) for n in names]}}
    )


Memory = tuple[int, list[tuple[int, int, int]]]  # agent RSS; per host (USS, PSS, RSS), KiB


def memory(agent: Agent) -> Memory:
    assert agent.process is not None
    return rss_kib(agent.process.pid), [(*smaps_kib(pid), rss_kib(pid)) for pid in agent.hosts()]


_LOG_TIME = re.compile(r"^(\d\d:\d\d:\d\d\.\d\d\d) ")


def agent_times(log: str) -> tuple[list[float], list[float], list[float]]:
    """From the agent's log timestamps: spec received -> host spawned (reaction), spec received ->
    driver loaded (the agent's part of a load), spec received -> driver unloaded."""
    reactions: list[float] = []
    loads: list[float] = []
    unloads: list[float] = []
    received: dt.datetime | None = None
    for line in log.splitlines():
        match = _LOG_TIME.match(line)
        if not match:
            continue
        at = dt.datetime.strptime(match.group(1), "%H:%M:%S.%f")
        if "spec received" in line:
            received = at
        elif received is not None:
            took = (at - received).total_seconds()
            if "driver host started" in line:
                reactions.append(took)
            elif "driver loaded" in line:
                loads.append(took)
            elif "driver unloaded" in line:
                unloads.append(took)
                received = None
            if "driver loaded" in line:
                received = None
    return reactions, loads, unloads


class Run:
    """What one way of starting hosts measured."""

    def __init__(self) -> None:
        self.loads: list[float] = []
        self.unloads: list[float] = []
        self.reactions: list[float] = []
        self.agent_loads: list[float] = []
        self.agent_unloads: list[float] = []
        self.burst_load = 0.0
        self.burst_unload = 0.0
        self.hosts_left = 0
        self.rss: dict[int, Memory] = {}


async def measure_start(
    kube: KubeClient, cfg: localcluster.ClusterConfig, launcher: str, start: str | None
) -> Run:
    run = Run()
    root = short_tmpdir("sdo-rt-bench-")
    await kube.delete(NODE_DRIVER_CONFIGS, NODE)
    agent = Agent(NODE, cfg.kubeconfig, NAMESPACE, root)
    write_probe(agent.driver_dir)
    follower = StatusFollower(kube)
    supervisor: ComponentProcess | None = None
    try:
        if start is not None:
            supervisor = start_supervisor(agent.state_dir, root / "supervisor.log", "--host-start", start)
        agent.start("--max-loaded-drivers", str(MAX), "--launcher", launcher)
        await asyncio.sleep(1.0)
        await follower.start()
        await asyncio.sleep(2.0)
        run.rss[0] = memory(agent)

        for count in range(1, MAX + 1):
            names = driver_names(count)
            began = time.monotonic()
            await set_drivers(kube, names)
            seen = await follower.until(lambda p, n=names[-1]: p.get(n) == "Loaded")
            run.loads.append(seen - began)
            if count in COUNTS:
                await asyncio.sleep(2.0)  # let the agent settle before reading its memory
                run.rss[count] = memory(agent)

        for count in range(MAX - 1, -1, -1):
            names = driver_names(count)
            gone = driver_names(count + 1)[-1]
            began = time.monotonic()
            await set_drivers(kube, names)
            seen = await follower.until(lambda p, g=gone: g not in p)
            run.unloads.append(seen - began)
        run.reactions, run.agent_loads, run.agent_unloads = agent_times(agent.log_path.read_text())

        began = time.monotonic()
        await set_drivers(kube, driver_names(MAX))
        run.burst_load = (
            await follower.until(lambda p: len(p) == MAX and all(v == "Loaded" for v in p.values())) - began
        )
        began = time.monotonic()
        await set_drivers(kube, [])
        run.burst_unload = await follower.until(lambda p: not p) - began
        run.hosts_left = len(agent.hosts())
    finally:
        await follower.stop()
        agent.cleanup()
        if supervisor is not None:
            supervisor.stop()
        kill_hosts(agent.state_dir)
        await kube.delete(NODE_DRIVER_CONFIGS, NODE)
    shutil.rmtree(root, ignore_errors=True)
    return run


async def measure(cfg: localcluster.ClusterConfig) -> list[Table]:
    load_before = os.getloadavg()[0]
    runs: dict[str, Run] = {}
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as kube:
        await localcluster.ensure_node(kube, NODE, localcluster.local_node_info())
        if await kube.get_or_none(NAMESPACES, NAMESPACE) is None:
            await kube.create(
                NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
            )
        try:
            for label, launcher, start in STARTS:
                runs[label] = await measure_start(kube, cfg, launcher, start)
        finally:
            await kube.delete(NODES, NODE)

    latency = Table(
        "Driver load and unload latency (one driver at a time, 0 to 50 loaded)",
        ["host start", "operation", "samples", "p50", "p95", "max"],
        command=COMMAND,
        notes=(
            "Load: spec patch until the watched status shows the driver Loaded (file verified, driver host "
            "process started, driver started, status written). Unload: spec patch until the driver leaves the "
            "status (stop() returned, host exited). The 'agent:' rows start when the agent receives the spec "
            "change from its watch and end at its log line (host spawned; driver loaded, i.e. the host is "
            "ready and its driver started; host exited), so they leave out the API server's write and watch "
            "round trips, which grow with the NodeDriverConfig's size on a busy control plane. "
            f"The machine's 1-minute load average was {load_before:.1f} before and {os.getloadavg()[0]:.1f} "
            f"after the run ({os.cpu_count()} cores; other work shares the machine)."
        ),
    )
    burst = Table(
        f"{MAX} drivers at once",
        ["host start", f"load {MAX}: all Loaded after", f"unload {MAX}: all gone after", "hosts left"],
        command=COMMAND,
        notes=f"One spec patch adding (then removing) {MAX} drivers.",
    )
    mem = Table(
        "Memory with loaded drivers",
        ["host start", "loaded drivers", "agent (RSS)", "per host: USS", "per host: PSS", "per host: RSS"],
        command=COMMAND,
        notes="Each driver runs in its own process; a host running the small probe driver is mostly the "
        "Python interpreter. USS (memory only that host holds) and PSS (its share of what it shares) are "
        "means over the hosts, from /proc/PID/smaps_rollup. A host forked from the template shares the "
        "interpreter and the imported runtime with it and its siblings, so its RSS counts pages that "
        "cost it nothing. The agent's own memory barely depends on the number of drivers.",
    )
    for label, run in runs.items():
        rows = (
            ("load (patch -> status Loaded)", run.loads),
            ("unload (patch -> gone from status)", run.unloads),
            ("agent: spec event -> host spawned", run.reactions),
            ("agent: spec event -> driver loaded", run.agent_loads),
            ("agent: spec event -> driver unloaded", run.agent_unloads),
        )
        for name, samples in rows:
            latency.add(
                label,
                name,
                len(samples),
                ms(percentile(samples, 50)),
                ms(percentile(samples, 95)),
                ms(max(samples)),
            )
        burst.add(label, ms(run.burst_load), ms(run.burst_unload), run.hosts_left)
        for count in COUNTS:
            agent_kib, hosts = run.rss[count]
            if hosts:
                uss, pss, rss = (statistics.mean(h[i] for h in hosts) for i in range(3))
                mem.add(label, count, mib(agent_kib), mib(uss), mib(pss), mib(rss))
            else:
                mem.add(label, count, mib(agent_kib), "-", "-", "-")
    return [latency, burst, mem]


def run() -> list[Table]:
    cfg = localcluster.ClusterConfig.from_env()
    started = False
    if not localcluster.is_up(cfg):
        localcluster.up(cfg)
        started = True
    try:
        from tests.conftest import apply_crds

        apply_crds(cfg)
        return asyncio.run(measure(cfg))
    finally:
        if started and os.environ.get("SDO_KEEP_CLUSTER") != "1":
            localcluster.down(cfg)
