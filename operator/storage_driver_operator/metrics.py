"""Prometheus metrics of the operator, served on `--metrics` (the chart's ServiceMonitor scrapes it).

`families` is pure (a snapshot in, prometheus-client metric families out); `serve` is the small
HTTP shell that exposes them, with the process's own metrics, as the agent does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "storage_driver_operator"


@dataclass(frozen=True)
class InformerStats:
    kind: str
    objects: int
    lists: int
    watches: int
    events: int
    synced: bool


@dataclass(frozen=True)
class DriverStats:
    name: str
    matching: int
    desired: int
    loaded: int
    failed: int
    ready: bool


@dataclass(frozen=True)
class Snapshot:
    ready: bool
    ready_seconds: float | None
    counters: Mapping[str, int]
    informers: list[InformerStats] = field(default_factory=list)
    drivers: list[DriverStats] = field(default_factory=list)


COUNTER_HELP = {
    "plans": "Node plans computed.",
    "spec_writes": "NodeDriverConfig spec patches written.",
    "spec_creates": "NodeDriverConfigs created.",
    "status_writes": "StorageDriver status updates written.",
    "events": "Kubernetes Events posted.",
}

_PER_KIND_GAUGES: list[tuple[str, str, Callable[[InformerStats], float]]] = [
    ("cached_objects", "Objects in the operator's cache, by kind.", lambda i: i.objects),
    ("cache_synced", "1 when the kind's first list completed.", lambda i: i.synced),
]
_PER_KIND_COUNTERS: list[tuple[str, str, Callable[[InformerStats], float]]] = [
    ("cache_lists", "Full lists, by kind (more than one: watches expired).", lambda i: i.lists),
    ("cache_watches", "Watches started, by kind.", lambda i: i.watches),
    ("cache_watch_events", "Watch events received, by kind.", lambda i: i.events),
]
_DRIVER_STATES: list[tuple[str, Callable[[DriverStats], float]]] = [
    ("matching", lambda d: d.matching),
    ("desired", lambda d: d.desired),
    ("loaded", lambda d: d.loaded),
    ("failed", lambda d: d.failed),
]


def families(snapshot: Snapshot) -> list[Metric]:
    """The operator's metric families from one snapshot (pure: snapshot in, families out)."""
    ready = GaugeMetricFamily(f"{PREFIX}_ready", "1 once the caches are synced and the first plan ran.")
    ready.add_metric([], float(snapshot.ready))
    found: list[Metric] = [ready]
    if snapshot.ready_seconds is not None:
        found.append(
            GaugeMetricFamily(
                f"{PREFIX}_ready_seconds", "Seconds from start to ready.", snapshot.ready_seconds
            )
        )
    for key, help_ in COUNTER_HELP.items():
        found.append(CounterMetricFamily(f"{PREFIX}_{key}", help_, snapshot.counters.get(key, 0)))
    for kinds, family in ((_PER_KIND_GAUGES, GaugeMetricFamily), (_PER_KIND_COUNTERS, CounterMetricFamily)):
        for name, help_, value in kinds:
            per_kind = family(f"{PREFIX}_{name}", help_, labels=["kind"])
            for informer in snapshot.informers:
                per_kind.add_metric([informer.kind], float(value(informer)))
            found.append(per_kind)
    nodes = GaugeMetricFamily(
        f"{PREFIX}_storagedriver_nodes",
        "Nodes per StorageDriver and state (matching, desired, loaded, failed), as in its status.",
        labels=["storagedriver", "state"],
    )
    driver_ready = GaugeMetricFamily(
        f"{PREFIX}_storagedriver_ready",
        "1 when the StorageDriver's Ready condition is True.",
        labels=["storagedriver"],
    )
    for driver in snapshot.drivers:
        for state, count in _DRIVER_STATES:
            nodes.add_metric([driver.name, state], count(driver))
        driver_ready.add_metric([driver.name], float(driver.ready))
    return [*found, nodes, driver_ready]


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())


def registry(snapshot: Callable[[], Snapshot], *, process: bool = True) -> CollectorRegistry:
    """The operator's families, read from `snapshot()` at each scrape, and (with `process`) the
    process's own (memory, CPU, open files), as the agent serves them."""
    found = CollectorRegistry()
    found.register(_SnapshotCollector(snapshot))
    if process:
        prometheus_client.ProcessCollector(registry=found)
    return found


def render(snapshot: Snapshot) -> str:
    """The text exposition of one snapshot's families (what a scrape returns, without the process's)."""
    return prometheus_client.generate_latest(registry(lambda: snapshot, process=False)).decode()


def listen_address(url: str) -> tuple[str, int, str]:
    """'http://0.0.0.0:8081/metrics' -> ('0.0.0.0', 8081, '/metrics')."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise ValueError(
            f"--metrics {url!r}: expected http://HOST:PORT/PATH, e.g. http://0.0.0.0:8081/metrics"
        )
    return parts.hostname, parts.port, parts.path or "/metrics"


@contextlib.asynccontextmanager
async def serve(url: str, snapshot: Callable[[], Snapshot]) -> AsyncIterator[None]:
    host, port, path = listen_address(url)
    served = registry(snapshot)

    async def handle(_: web.Request) -> web.Response:
        return web.Response(
            body=prometheus_client.generate_latest(served),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    app = web.Application()
    app.router.add_get(path, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield
    finally:
        await runner.cleanup()
