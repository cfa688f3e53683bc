"""What the agent's /metrics costs: one scrape's rendering time and size on a node at the design
point (16 devices) with few and with many drivers, each driver having loaded, unloaded, crashed
and answered health checks; and what importing prometheus-client adds to the agent's start.

    python -m tests.bench metrics
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import prometheus_client
from storage_driver_agent import metrics
from storage_driver_sdk.devices import ALL_DEVICE_TYPES

from tests.bench.table import Table

RENDERS = 200
STARTS = 7
IMPORT_PROBE = """
import json, time
def rss_kib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
import storage_driver_api.kube, storage_driver_api.nodedriverconfig, pyudev, watchdog.observers  # the agent's other imports
rss, start = rss_kib(), time.process_time()
import prometheus_client
print(json.dumps({"cpu": time.process_time() - start, "rss": rss_kib() - rss}))
"""


def fill(drivers: int) -> None:
    """A node's worth of state and history in the agent's registry (this process's)."""
    devices = [
        {
            "spec": {"type": ALL_DEVICE_TYPES[i % 3]},
            "status": {"conditions": [{"type": "Present", "status": "True"}]},
        }
        for i in range(16)
    ]
    metrics.STATE.devices = lambda: devices
    metrics.STATE.phases = lambda: ["Loaded"] * drivers
    metrics.STATE.api_responses = lambda: {("GET", "200"): 10, ("PATCH", "200"): 50, ("WATCH", "200"): 4}
    for i in range(drivers):
        name = f"driver-{i}"
        metrics.driver_added(name)
        metrics.LOADS.labels(name, "loaded").inc()
        metrics.LOAD_SECONDS.labels("loaded").observe(0.8)
        metrics.UNLOADS.labels(name, "unloaded").inc()
        metrics.UNLOAD_SECONDS.labels("unloaded").observe(0.2)
        metrics.HEALTH_CHECKS.labels(name, "healthy").inc()
    for kind in ("NodeDevice", "NodeDriverConfig"):
        metrics.watch_started(kind)


def render() -> tuple[float, int, int]:
    """Median seconds of one render, its bytes and its sample lines."""
    times = []
    for _ in range(RENDERS):
        start = time.perf_counter()
        body = prometheus_client.generate_latest(metrics.REGISTRY)
        times.append(time.perf_counter() - start)
    lines = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    return statistics.median(times), len(body), len(lines)


def import_cost() -> tuple[float, float]:
    samples = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(STARTS)
    ]
    return statistics.median(s["cpu"] for s in samples), statistics.median(s["rss"] for s in samples)


def run() -> list[Table]:
    table = Table(
        "One scrape of the agent's /metrics",
        ["drivers on the node", "series (sample lines)", "body", "render time (median)"],
        command="python -m tests.bench metrics",
    )
    for drivers in (5, 100):
        fill(drivers)  # the same names again: the second row has 100 drivers in all
        seconds, size, lines = render()
        table.add(drivers, lines, f"{size / 1024:.1f} KiB", f"{seconds * 1000:.2f} ms")
    cpu, rss = import_cost()
    table.notes = (
        f"16 devices; each driver loaded, unloaded and checked once (its series at 0 for the rest). Median of "
        f"{RENDERS} renders in one process. Importing prometheus-client in a fresh interpreter that already imported the agent's API client, "
        f"models, pyudev and watchdog (what it adds to the agent's start): "
        f"{cpu * 1000:.0f} ms CPU, +{rss:.0f} KiB resident (median of {STARTS}). Load average "
        f"{os.getloadavg()[0]:.1f} on this shared machine."
    )
    return [table]
