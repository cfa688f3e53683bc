"""Prometheus metrics of the operator, served on `--metrics` (the chart's ServiceMonitor scrapes it).

`render` is pure (a snapshot in, the text exposition format out); `serve` is the small HTTP
shell around it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

PREFIX = "storage_driver_operator"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(name: str, kind: str, help_: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {PREFIX}_{name} {help_}", f"# TYPE {PREFIX}_{name} {kind}"]
    lines += [f"{PREFIX}_{name}{labels} {value:g}" for labels, value in samples]
    return lines


def render(snapshot: Snapshot) -> str:
    lines = _family(
        "ready", "gauge", "1 once the caches are synced and the first plan ran.", [("", snapshot.ready)]
    )
    if snapshot.ready_seconds is not None:
        lines += _family(
            "ready_seconds", "gauge", "Seconds from start to ready.", [("", snapshot.ready_seconds)]
        )
    for key, help_ in COUNTER_HELP.items():
        lines += _family(f"{key}_total", "counter", help_, [("", snapshot.counters.get(key, 0))])
    per_kind: list[tuple[str, str, Callable[[InformerStats], float]]] = [
        ("cached_objects", "Objects in the operator's cache, by kind.", lambda i: i.objects),
        ("cache_synced", "1 when the kind's first list completed.", lambda i: i.synced),
    ]
    for name, help_, value in per_kind:
        lines += _family(
            name, "gauge", help_, [(f'{{kind="{i.kind}"}}', value(i)) for i in snapshot.informers]
        )
    per_kind_counters: list[tuple[str, str, Callable[[InformerStats], float]]] = [
        ("cache_lists_total", "Full lists, by kind (more than one: watches expired).", lambda i: i.lists),
        ("cache_watches_total", "Watches started, by kind.", lambda i: i.watches),
        ("cache_watch_events_total", "Watch events received, by kind.", lambda i: i.events),
    ]
    for name, help_, value in per_kind_counters:
        lines += _family(
            name, "counter", help_, [(f'{{kind="{i.kind}"}}', value(i)) for i in snapshot.informers]
        )
    states: list[tuple[str, Callable[[DriverStats], float]]] = [
        ("matching", lambda d: d.matching),
        ("desired", lambda d: d.desired),
        ("loaded", lambda d: d.loaded),
        ("failed", lambda d: d.failed),
    ]
    lines += _family(
        "storagedriver_nodes",
        "gauge",
        "Nodes per StorageDriver and state (matching, desired, loaded, failed), as in its status.",
        [
            (f'{{storagedriver="{_escape(d.name)}",state="{state}"}}', value(d))
            for d in snapshot.drivers
            for state, value in states
        ],
    )
    lines += _family(
        "storagedriver_ready",
        "gauge",
        "1 when the StorageDriver's Ready condition is True.",
        [(f'{{storagedriver="{_escape(d.name)}"}}', d.ready) for d in snapshot.drivers],
    )
    return "\n".join(lines) + "\n"


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

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=render(snapshot()).encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get(path, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield
    finally:
        await runner.cleanup()
