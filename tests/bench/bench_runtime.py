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
- memory: the agent's RSS and the driver hosts' RSS with 0, 10 and 50 drivers loaded.

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
from pathlib import Path
from typing import Any

from storage_driver_api.constants import NODE_DRIVER_CONFIGS
from storage_driver_api.kube import NAMESPACES, NODES, ApiError, KubeClient, load_kubeconfig

from tests.bench.table import Table, ms, percentile
from tests.harness import localcluster
from tests.harness.drivers import Agent, desired_driver, kill_hosts, short_tmpdir, write_probe

NODE = "bench-runtime-node"
NAMESPACE = "sdo-bench"
COUNTS = (0, 10, 50)
MAX = max(COUNTS)
COMMAND = "python -m tests.bench runtime --write"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


class StatusFollower:
    """Watches the node's NodeDriverConfig and records when each driver reaches a phase or leaves."""

    def __init__(self, kube: KubeClient):
        self.kube = kube
        self.phases: dict[str, str] = {}
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        obj = await self.kube.get(NODE_DRIVER_CONFIGS, NODE)
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
                    NODE_DRIVER_CONFIGS, resource_version=version, field_selector=f"metadata.name={NODE}"
                ):
                    version = str(event.object["metadata"]["resourceVersion"])
                    if event.type != "BOOKMARK":
                        self._record(event.object)
            except ApiError:
                obj = await self.kube.get(NODE_DRIVER_CONFIGS, NODE)
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


async def set_drivers(kube: KubeClient, names: list[str]) -> None:
    await kube.patch(
        NODE_DRIVER_CONFIGS, NODE, {"spec": {"drivers": [desired_driver(n, grace=5) for n in names]}}
    )


def memory(agent: Agent) -> tuple[int, list[int]]:
    assert agent.process is not None
    return rss_kib(agent.process.pid), [rss_kib(pid) for pid in agent.hosts()]


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


async def measure(cfg: localcluster.ClusterConfig) -> list[Table]:
    load_before = os.getloadavg()[0]
    root = short_tmpdir("sdo-rt-bench-")
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as kube:
        await localcluster.ensure_node(kube, NODE, localcluster.local_node_info())
        if await kube.get_or_none(NAMESPACES, NAMESPACE) is None:
            await kube.create(
                NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
            )
        await kube.delete(NODE_DRIVER_CONFIGS, NODE)
        agent = Agent(NODE, cfg.kubeconfig, NAMESPACE, root)
        write_probe(agent.driver_dir)
        follower = StatusFollower(kube)
        try:
            agent.start("--max-loaded-drivers", str(MAX))
            await asyncio.sleep(1.0)
            await follower.start()
            await asyncio.sleep(2.0)
            rss: dict[int, tuple[int, list[int]]] = {0: memory(agent)}

            loads: list[float] = []
            for count in range(1, MAX + 1):
                names = driver_names(count)
                began = time.monotonic()
                await set_drivers(kube, names)
                seen = await follower.until(lambda p, n=names[-1]: p.get(n) == "Loaded")
                loads.append(seen - began)
                if count in COUNTS:
                    await asyncio.sleep(2.0)  # let the agent settle before reading its memory
                    rss[count] = memory(agent)

            unloads: list[float] = []
            for count in range(MAX - 1, -1, -1):
                names = driver_names(count)
                gone = driver_names(count + 1)[-1]
                began = time.monotonic()
                await set_drivers(kube, names)
                seen = await follower.until(lambda p, g=gone: g not in p)
                unloads.append(seen - began)
            reactions, agent_loads, agent_unloads = agent_times(agent.log_path.read_text())

            began = time.monotonic()
            await set_drivers(kube, driver_names(MAX))
            burst_load = (
                await follower.until(lambda p: len(p) == MAX and all(v == "Loaded" for v in p.values()))
                - began
            )
            began = time.monotonic()
            await set_drivers(kube, [])
            burst_unload = await follower.until(lambda p: not p) - began
            hosts_left = len(agent.hosts())
        finally:
            await follower.stop()
            agent.cleanup()
            kill_hosts(agent.state_dir)
            await kube.delete(NODE_DRIVER_CONFIGS, NODE)
            await kube.delete(NODES, NODE)
        shutil.rmtree(root, ignore_errors=True)

    latency = Table(
        "Driver load and unload latency (one driver at a time, 0 to 50 loaded)",
        ["operation", "samples", "p50", "p95", "max"],
        command=COMMAND,
        notes=(
            "Load: spec patch until the watched status shows the driver Loaded (file verified, driver host "
            "process started, driver started, status written). Unload: spec patch until the driver leaves the "
            "status (stop() returned, host exited). The 'agent:' rows start when the agent receives the spec "
            "change from its watch and end at its log line (host spawned; driver loaded; host exited), so they "
            "leave out the API server's write and watch round trips, which grow with the NodeDriverConfig's "
            "size on a busy control plane. "
            f"The machine's 1-minute load average was {load_before:.1f} before and {os.getloadavg()[0]:.1f} "
            f"after the run ({os.cpu_count()} cores; other work shares the machine)."
        ),
    )
    rows = (
        ("load (patch -> status Loaded)", loads),
        ("unload (patch -> gone from status)", unloads),
        ("agent: spec event -> host spawned", reactions),
        ("agent: spec event -> driver loaded", agent_loads),
        ("agent: spec event -> driver unloaded", agent_unloads),
    )
    for name, samples in rows:
        latency.add(
            name, len(samples), ms(percentile(samples, 50)), ms(percentile(samples, 95)), ms(max(samples))
        )
    burst = Table(
        f"{MAX} drivers at once",
        ["operation", "all done after"],
        command=COMMAND,
        notes=f"One spec patch adding (then removing) {MAX} drivers; {hosts_left} driver hosts were left afterwards.",
    )
    burst.add(f"load {MAX}", ms(burst_load))
    burst.add(f"unload {MAX}", ms(burst_unload))
    mem = Table(
        "Memory (RSS) with loaded drivers",
        ["loaded drivers", "agent", "driver hosts (total)", "per driver host (mean)"],
        command=COMMAND,
        notes="Each driver runs in its own process; a host running the small probe driver is mostly the "
        "Python interpreter. The agent's own memory barely depends on the number of drivers.",
    )
    for count in COUNTS:
        agent_kib, hosts = rss[count]
        mean = statistics.mean(hosts) if hosts else 0
        mem.add(count, mib(agent_kib), mib(sum(hosts)), mib(mean) if hosts else "-")
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
