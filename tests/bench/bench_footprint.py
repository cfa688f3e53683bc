"""Footprint at rest (issue 14, target 6): the agent's, the supervisor's and the host template's
memory and CPU over a window with no driver loaded, then over one with 10 drivers loaded, and what
the agent asked of the API server meanwhile. Target: agent <= 60 MB, CPU near zero.

A real storage-agent runs for a simulated Node against the local control plane as the chart runs
it: `--launcher supervisor` beside a real `storage-agent supervise --host-start template`, the
chart's settings (Lease renewed every 10 s, health() every 30 s, kernel uevents), its health and
metrics endpoints served and probed as the kubelet probes them (/readyz every 5 s, /healthz every
10 s, the supervisor's socket every 5 s). Per process, over each window: RSS at its start and end,
the peak (VmHWM, restarted at the window's start), USS and PSS (smaps_rollup) at its end, RSS
sampled every 10 s and its slope, CPU time as a fraction of a core, and wake-ups (voluntary
context switches of its threads). The agent's API requests come from its own /metrics (every
request it made, by verb) and the API server's (which kinds were written).

    python -m tests.bench footprint [--write]

SDO_BENCH_REST_SECONDS sets each window's length (default 300).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from storage_driver_api.constants import NODE_DRIVER_CONFIGS
from storage_driver_api.kube import NAMESPACES, NODES, KubeClient, load_kubeconfig

from tests.bench import apimetrics
from tests.bench.bench_runtime import StatusFollower, driver_names, set_drivers
from tests.bench.oncluster import run_on_local_cluster
from tests.bench.procstat import cpu_seconds, reset_peak, rss_peak_kib, smaps_kib, wakeups
from tests.bench.table import Table
from tests.harness import localcluster
from tests.harness.drivers import (
    Agent,
    host_templates,
    kill_hosts,
    short_tmpdir,
    start_supervisor,
    write_probe,
)
from tests.harness.processes import ComponentProcess
from tests.harness.promql import parse_scrape
from tests.harness.replicas import free_port

NODE = "bench-footprint-node"
NAMESPACE = "sdo-bench"
DRIVERS = 10
REST_SECONDS = float(os.environ.get("SDO_BENCH_REST_SECONDS", "300"))
SAMPLE_SECONDS = 10.0
SETTLE_SECONDS = 10.0  # after the start, and after the loads: their writes are not at rest
AGENT_TARGET_MB = 60.0
COMMAND = "python -m tests.bench footprint --write"
# The chart's agent settings (charts/storage-driver-operator/values.yaml) where the harness's
# Agent uses quicker ones for tests.
CHART_AGENT_ARGS = (
    "--launcher=supervisor",
    "--uevent-source=kernel",
    "--lease-renew=10",
    "--lease-duration=40",
    "--restart-backoff=1",
    "--health-interval=30",
    "--driver-dir-debounce=0.5",
)
PROJECT_RESOURCES = ("nodedevices", "nodedriverconfigs", "storagedrivers", "events", "leases")


@dataclass
class Usage:
    """One process (or a group: the sum) over one window; memory in KiB."""

    rss_start: int = 0
    rss_end: int = 0
    peak: int = 0
    uss: int = 0
    pss: int = 0
    cpu: float = 0.0  # seconds
    wakeups: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, RSS)

    def slope_mib_per_hour(self) -> float | None:
        if len(self.samples) < 3:
            return None
        hours = [(t - self.samples[0][0]) / 3600 for t, _ in self.samples]
        return statistics.linear_regression(hours, [kib / 1024 for _, kib in self.samples]).slope


@dataclass
class Window:
    drivers: int
    seconds: float
    usage: dict[str, Usage]
    agent_requests: Counter[str]  # by verb, from the agent's /metrics
    api_writes: apimetrics.Counts  # from the API server's /metrics
    uevents: int
    peak_reset: bool


Pids = Callable[[], dict[str, list[int]]]


def template_pid(supervisor: int) -> int | None:
    """The supervisor's host template."""
    templates = host_templates(supervisor)
    return templates[0] if templates else None


async def agent_counters(session: aiohttp.ClientSession, metrics_url: str) -> Counter[str]:
    """The agent's own request count by verb, and its uevents ("uevents"), from its /metrics."""
    async with session.get(metrics_url) as response:
        text = await response.text()
    counts: Counter[str] = Counter()
    for labels, value in parse_scrape(text):
        sample = dict(labels)
        if sample["__name__"] == "storage_driver_agent_api_requests_total":
            counts[sample["verb"]] += int(value)
        elif sample["__name__"] == "storage_driver_agent_uevents_total":
            counts["uevents"] += int(value)
    return counts


async def kubelet_probes(session: aiohttp.ClientSession, health_url: str, supervisor_socket: Path) -> None:
    """What the chart's probes ask: the agent's /readyz every 5 s and /healthz every 10 s, a
    connection to the supervisor's socket every 5 s."""
    for tick in itertools.count():
        with contextlib.suppress(aiohttp.ClientError, OSError):
            for path in ("/readyz", "/healthz") if tick % 2 == 0 else ("/readyz",):
                async with session.get(health_url + path) as response:
                    await response.read()
            _, writer = await asyncio.open_unix_connection(str(supervisor_socket))
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(5.0)


async def measure_window(
    kube: KubeClient, session: aiohttp.ClientSession, metrics_url: str, pids: Pids, drivers: int
) -> Window:
    followed = pids()
    every = [pid for group in followed.values() for pid in group]
    peak_reset = all([reset_peak(pid) for pid in every])
    cpu_before = {pid: cpu_seconds(pid) for pid in every}
    wake_before = {pid: wakeups(pid) for pid in every}
    usage = {name: Usage() for name in followed}
    server_before = await apimetrics.snapshot(kube)
    agent_before = await agent_counters(session, metrics_url)
    started = time.monotonic()
    while True:
        now = time.monotonic()
        for name, group in followed.items():
            usage[name].samples.append((now, sum(rss_peak_kib(pid)[0] for pid in group)))
        if now - started >= REST_SECONDS:
            break
        await asyncio.sleep(min(SAMPLE_SECONDS, started + REST_SECONDS - now))
    seconds = time.monotonic() - started
    server_writes = apimetrics.writes(await apimetrics.snapshot(kube) - server_before, PROJECT_RESOURCES)
    agent_delta = await agent_counters(session, metrics_url)
    agent_delta.subtract(agent_before)
    for name, group in followed.items():
        use = usage[name]
        use.rss_start, use.rss_end = use.samples[0][1], use.samples[-1][1]
        for pid in group:
            use.peak += rss_peak_kib(pid)[1]
            uss, pss = smaps_kib(pid)
            use.uss += uss
            use.pss += pss
            use.cpu += cpu_seconds(pid) - cpu_before[pid]
            use.wakeups += wakeups(pid) - wake_before[pid]
    uevents = agent_delta.pop("uevents", 0)
    return Window(drivers, seconds, usage, +agent_delta, server_writes, uevents, peak_reset)


async def measure(cfg: localcluster.ClusterConfig, _work: Path) -> list[Table]:
    loads = [os.getloadavg()[0]]
    windows: list[Window] = []
    health_port, metrics_port, supervisor_metrics_port = free_port(), free_port(), free_port()
    agent = Agent(NODE, cfg.kubeconfig, NAMESPACE, short_tmpdir("sdo-fp-"))  # short socket paths
    write_probe(agent.driver_dir)
    supervisor: ComponentProcess | None = None
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as kube, aiohttp.ClientSession() as session:
        await localcluster.ensure_node(kube, NODE, localcluster.local_node_info())
        if await kube.get_or_none(NAMESPACES, NAMESPACE) is None:
            await kube.create(
                NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
            )
        await kube.delete(NODE_DRIVER_CONFIGS, NODE)
        follower = StatusFollower(kube, NODE)
        probes: asyncio.Task[None] | None = None
        try:
            supervisor = await asyncio.to_thread(
                start_supervisor,
                agent.state_dir,
                agent.root / "supervisor.log",
                "--host-start=template",
                f"--metrics=127.0.0.1:{supervisor_metrics_port}",
            )
            await asyncio.to_thread(
                agent.start,
                *CHART_AGENT_ARGS,
                f"--health=127.0.0.1:{health_port}",
                f"--metrics=127.0.0.1:{metrics_port}",
            )
            assert agent.process is not None
            agent_pid, supervisor_pid = agent.process.pid, supervisor.pid
            template = template_pid(supervisor_pid)

            def pids() -> dict[str, list[int]]:
                found = {"storage-agent": [agent_pid], "supervisor": [supervisor_pid]}
                if template is not None:
                    found["host template"] = [template]
                if hosts := sorted(agent.hosts()):
                    found[f"{len(hosts)} driver hosts (sum)"] = hosts
                return found

            probes = asyncio.create_task(
                kubelet_probes(
                    session, f"http://127.0.0.1:{health_port}", agent.state_dir / "supervisor.sock"
                )
            )
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            await follower.start()
            await asyncio.sleep(SETTLE_SECONDS)
            loads.append(os.getloadavg()[0])
            windows.append(await measure_window(kube, session, metrics_url, pids, 0))
            names = driver_names(DRIVERS)
            await set_drivers(kube, names, NODE)
            await follower.until(lambda p: len(p) == DRIVERS and all(v == "Loaded" for v in p.values()))
            await asyncio.sleep(SETTLE_SECONDS)
            loads.append(os.getloadavg()[0])
            windows.append(await measure_window(kube, session, metrics_url, pids, DRIVERS))
            loads.append(os.getloadavg()[0])
            await set_drivers(kube, [], NODE)
            await follower.until(lambda p: not p)
        finally:
            if probes is not None:
                probes.cancel()
            await follower.stop()
            agent.cleanup()
            if supervisor is not None:
                supervisor.stop()
            kill_hosts(agent.state_dir)
            shutil.rmtree(agent.root, ignore_errors=True)
            await kube.delete(NODE_DRIVER_CONFIGS, NODE)
            await kube.delete(NODES, NODE)
    costs = await asyncio.to_thread(import_costs, cfg.kubeconfig)
    return [footprint_table(windows, loads), imports_table(costs, windows)]


# The agent's imports in groups, in the order the agent meets them, each measured as the memory
# it adds to a fresh interpreter (a module two groups share counts in the first), then the
# agent's first step: its credentials, with the kubernetes package's config loaders.
IMPORT_GROUPS = (
    (
        "asyncio, ssl, subprocess, json, argparse (standard library)",
        ("asyncio", "ssl", "subprocess", "json", "argparse"),
    ),
    ("aiohttp, the API client (with the two SSL contexts it makes at import)", ("aiohttp",)),
    ("aiohttp.web, the health and metrics endpoints", ("aiohttp.web",)),
    ("prometheus_client", ("prometheus_client",)),
    ("pydantic", ("pydantic",)),
    (
        "the API models (storage_driver_api.meta, nodedevice, nodedriverconfig, storagedriver; pydantic imports its schema builder at the first model)",
        (
            "storage_driver_api.meta",
            "storage_driver_api.nodedevice",
            "storage_driver_api.nodedriverconfig",
            "storage_driver_api.storagedriver",
        ),
    ),
    ("pyudev, watchdog", ("pyudev", "watchdog.observers")),
    (
        "the agent's own modules (storage_driver_agent.main and what it imports)",
        ("storage_driver_agent.main",),
    ),
)
IMPORTS_PROBE = """
import importlib, json, sys
def status():
    values = {}
    for line in open("/proc/self/status"):
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0])
    return values
groups, kubeconfig = json.loads(sys.argv[1]), sys.argv[2]
rows = [["the Python interpreter", status(), len(sys.modules)]]
for label, modules in groups:
    for module in modules:
        importlib.import_module(module)
    rows.append([label, status(), len(sys.modules)])
from storage_driver_api.credentials import load_kubeconfig
load_kubeconfig(kubeconfig)
rows.append(["credentials: the kubernetes package's config loaders (kept, issue 15)", status(), len(sys.modules)])
print(json.dumps(rows))
"""


def import_costs(kubeconfig: Path) -> list[tuple[str, dict[str, int], int]]:
    """Cumulative (label, VmRSS/RssAnon/RssFile in KiB, modules) after each group, in a fresh
    interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS_PROBE, json.dumps(IMPORT_GROUPS), str(kubeconfig)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return [(label, values, modules) for label, values, modules in json.loads(out)]


def imports_table(costs: list[tuple[str, dict[str, int], int]], windows: list[Window]) -> Table:
    table = Table(
        "Where the agent's memory goes: what each group of its imports adds",
        ["step", "adds RSS", "anonymous", "file-backed", "modules", "RSS after"],
        command=COMMAND,
        notes=(
            "Each group imported in a fresh interpreter after the ones above it, as the agent imports "
            "them (a module two groups share counts in the first); anonymous memory is mostly code "
            "objects, module dictionaries and classes (and pydantic's validators), file-backed memory is "
            "the shared libraries' pages (libcrypto, pydantic_core). The last rows are what the running "
            "agent holds beyond its imports: its connections (one per watch), caches and tasks."
        ),
    )
    previous: dict[str, int] = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    previous_modules = 0
    for label, values, modules in costs:
        table.add(
            label,
            f"{(values['VmRSS'] - previous['VmRSS']) / 1024:+.1f} MiB",
            f"{(values['RssAnon'] - previous['RssAnon']) / 1024:+.1f} MiB",
            f"{(values['RssFile'] - previous['RssFile']) / 1024:+.1f} MiB",
            modules - previous_modules,
            f"{values['VmRSS'] / 1024:.1f} MiB",
        )
        previous, previous_modules = values, modules
    for window in windows:
        running = window.usage["storage-agent"].rss_end
        table.add(
            f"running, {window.drivers} drivers loaded (end of its window)",
            f"{(running - previous['VmRSS']) / 1024:+.1f} MiB",
            "",
            "",
            "",
            f"{running / 1024:.1f} MiB",
        )
    return table


def mb(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def footprint_table(windows: list[Window], loads: list[float]) -> Table:
    agent_end = max((w.usage["storage-agent"].rss_end for w in windows), default=0) / 1024
    agent_cpu = max((w.usage["storage-agent"].cpu / w.seconds for w in windows), default=0.0)
    verdict = (
        f"Target agent <= {AGENT_TARGET_MB:.0f} MB: "
        + (
            "met"
            if agent_end <= AGENT_TARGET_MB
            else f"missed by {agent_end - AGENT_TARGET_MB:.1f} MiB ({agent_end:.1f} MiB at most)"
        )
        + f"; its CPU at most {agent_cpu * 100:.2f}% of a core."
    )
    table = Table(
        f"Footprint at rest: {REST_SECONDS:.0f} s with 0 drivers, then with {DRIVERS} "
        f"(target: agent <= {AGENT_TARGET_MB:.0f} MB, CPU near zero)",
        [
            "drivers",
            "process",
            "RSS start -> end (MiB)",
            "peak RSS",
            "USS / PSS",
            "RSS slope",
            "CPU",
            "wake-ups",
            "API requests (agent)",
        ],
        command=COMMAND,
        notes=(
            f"{verdict} The agent (--launcher supervisor, the chart's settings, probed as the kubelet "
            "probes it) and `storage-agent supervise --host-start template` for a simulated Node on the "
            "local control plane; the probe driver in each host. RSS is sampled every "
            f"{SAMPLE_SECONDS:.0f} s; the slope is a least-squares fit over the window; peak is VmHWM "
            + (
                "restarted at the window's start (/proc/PID/clear_refs)"
                if all(w.peak_reset for w in windows)
                else "since the process started (the kernel refused to restart it)"
            )
            + "; USS and PSS from /proc/PID/smaps_rollup at the window's end; CPU is user+system time "
            "over the window (100% = one core); wake-ups are voluntary context switches of the "
            "process's threads per second. MB here are MiB (KiB / 1024), as in the other tables. API "
            "requests: every request the agent made in the window, by verb (its own "
            "storage_driver_agent_api_requests_total); 'written' lists what the API server counted "
            f"written of {', '.join(PROJECT_RESOURCES)} (apiserver_request_total; only the agent writes "
            "them in this run, apart from the control plane's Leases and the local node's kubelet, which "
            "renews its node Lease with a PUT every 10 s; the agent renews its own with a PATCH). Uevents the agent received from "
            "other work on this machine during the windows: "
            + ", ".join(f"{w.uevents} ({w.drivers} drivers)" for w in windows)
            + f". 1-minute load average {min(loads):.1f} to {max(loads):.1f} ({os.cpu_count()} cores, shared)."
        ),
    )
    for window in windows:
        for name, use in window.usage.items():
            slope = use.slope_mib_per_hour()
            requests = ""
            if name == "storage-agent":
                requests = (
                    f"{sum(window.agent_requests.values())} ("
                    + ", ".join(f"{verb} {n}" for verb, n in window.agent_requests.most_common())
                    + f"); written: {apimetrics.describe(window.api_writes)}"
                )
            table.add(
                window.drivers,
                name,
                f"{mb(use.rss_start)} -> {mb(use.rss_end)}",
                f"{mb(use.peak)} MiB",
                f"{mb(use.uss)} / {mb(use.pss)} MiB",
                "-" if slope is None else f"{slope:+.2f} MiB/h",
                f"{use.cpu / window.seconds * 100:.2f}%",
                f"{use.wakeups / window.seconds:.1f}/s",
                requests,
            )
    return table


def run() -> list[Table]:
    return run_on_local_cluster("footprint", measure)
