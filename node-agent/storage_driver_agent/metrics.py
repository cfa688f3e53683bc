"""Prometheus metrics of the agent, served on `--metrics HOST:PORT` at /metrics
(metricsserver.py); the chart's PodMonitor scrapes them (docs/metrics.md).

Events (loads, unloads, crashes, health checks, watch lists) are counted where they happen, in
the metric objects below. State (devices, drivers by phase, API answers) is read when scraped,
from the objects that hold it (`AgentState`), so nothing is kept twice.

Labels stay bounded: `driver` is the name of a driver the node's NodeDriverConfig asked for
since the agent started (the StorageDrivers' names: as many as the cluster has, chosen by its
administrators, never device serials or paths). Its series stay after the driver left the node,
so that the unload that removed it is still counted. Device `type` and driver `phase` are enums;
`verb`, `code`, `kind`, `result` and `reason` are small fixed sets.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as CounterMetric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from storage_driver_api.nodedevice import is_present
from storage_driver_api.nodedriverconfig import DriverPhase
from storage_driver_sdk.devices import ALL_DEVICE_TYPES

log = logging.getLogger("storage_driver_agent.metrics")

PREFIX: Final = "storage_driver_agent"
PHASES: Final = tuple(phase.value for phase in DriverPhase)
# From a fraction of a second (a small driver, no device) to the default --load-timeout (60 s).
DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REGISTRY = CollectorRegistry()
prometheus_client.ProcessCollector(registry=REGISTRY)

LOADS = CounterMetric(
    f"{PREFIX}_driver_loads",
    "Driver host starts, by driver and result (loaded, failed).",
    ["driver", "result"],
    registry=REGISTRY,
)
LOAD_SECONDS = prometheus_client.Histogram(
    f"{PREFIX}_driver_load_duration_seconds",
    "Seconds from starting a driver host to its driver loaded with its devices attached (or failed).",
    ["result"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
UNLOADS = CounterMetric(
    f"{PREFIX}_driver_unloads",
    "Driver unloads, by driver and result (unloaded; failed: errors, or not stopped within the grace period).",
    ["driver", "result"],
    registry=REGISTRY,
)
UNLOAD_SECONDS = prometheus_client.Histogram(
    f"{PREFIX}_driver_unload_duration_seconds",
    "Seconds from asking a driver to unload to its host gone.",
    ["result"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
CRASHES = CounterMetric(
    f"{PREFIX}_driver_crashes",
    "Driver hosts that ended unasked, by driver and reason (Crashed; Hung or Unhealthy: the agent killed it).",
    ["driver", "reason"],
    registry=REGISTRY,
)
RESTARTS = CounterMetric(
    f"{PREFIX}_driver_restarts",
    "Driver hosts started again after a crash, by driver.",
    ["driver"],
    registry=REGISTRY,
)
HEALTH_CHECKS = CounterMetric(
    f"{PREFIX}_driver_health_checks",
    "health() calls, by driver and result (healthy, unhealthy, hung).",
    ["driver", "result"],
    registry=REGISTRY,
)
WATCH_LISTS = CounterMetric(
    f"{PREFIX}_watch_lists",
    "Full lists of a watched kind (more than one: the watch expired or failed).",
    ["kind"],
    registry=REGISTRY,
)
WATCH_EVENTS = CounterMetric(
    f"{PREFIX}_watch_events",
    "Watch events received, by kind.",
    ["kind"],
    registry=REGISTRY,
)
WATCH_FAILURES = CounterMetric(
    f"{PREFIX}_watch_failures",
    "Lists or watches that failed and are retried with backoff, by kind.",
    ["kind"],
    registry=REGISTRY,
)
WATCH_SYNCED = prometheus_client.Gauge(
    f"{PREFIX}_watch_synced",
    "1 while the kind's list succeeded and its watch has not failed since.",
    ["kind"],
    registry=REGISTRY,
)


_PER_DRIVER: Final = (
    (LOADS, ("loaded", "failed")),
    (UNLOADS, ("unloaded", "failed")),
    (CRASHES, ("Crashed", "Hung", "Unhealthy")),
    (HEALTH_CHECKS, ("healthy", "unhealthy", "hung")),
)


def driver_added(driver: str) -> None:
    """Export a new driver's series at 0, so that its first load or crash is an increase that
    rate() and alerts see, not the appearance of a series."""
    for metric, values in _PER_DRIVER:
        for value in values:
            metric.labels(driver, value)
    RESTARTS.labels(driver)


def watch_started(kind: str) -> None:
    """A watched kind's series at 0 (not synced yet, nothing counted)."""
    for metric in (WATCH_LISTS, WATCH_EVENTS, WATCH_FAILURES):
        metric.labels(kind)
    WATCH_SYNCED.labels(kind).set(0)


@dataclass
class AgentState:
    """Where the scrape reads the agent's state; each part of the agent fills in its own."""

    # NodeDevices this agent published (devices/publisher.py: name -> object).
    devices: Callable[[], Iterable[Mapping[str, Any]]] = lambda: ()
    # Phase of each driver in the last status the agent wrote.
    phases: Callable[[], Iterable[str]] = lambda: ()
    uevents: Callable[[], int] = lambda: 0
    device_writes: Callable[[], int] = lambda: 0
    api_responses: Callable[[], Mapping[tuple[str, str], int]] = dict
    ready: Callable[[], bool] = lambda: False


STATE = AgentState()


def state_metrics(state: AgentState) -> list[Metric]:
    """The scrape-time families, from the agent's current state (pure: state in, families out)."""
    devices = GaugeMetricFamily(
        f"{PREFIX}_devices",
        "NodeDevices of this node, by device type and presence (present: 'true' or 'false').",
        labels=["type", "present"],
    )
    counts = Counter((str((d.get("spec") or {}).get("type")), is_present(d)) for d in state.devices())
    # Every type and presence, zeros included, so that a device going shows as 1 -> 0, not as a gap.
    for kind in sorted(set(ALL_DEVICE_TYPES) | {t for t, _ in counts}):
        for presence in (True, False):
            devices.add_metric([kind, str(presence).lower()], counts[kind, presence])
    drivers = GaugeMetricFamily(
        f"{PREFIX}_drivers",
        "Drivers of this node's NodeDriverConfig, by phase, as in its status.",
        labels=["phase"],
    )
    phases = Counter(state.phases())
    for phase in sorted(set(PHASES) | set(phases)):
        drivers.add_metric([phase], phases[phase])
    requests = CounterMetricFamily(
        f"{PREFIX}_api_requests",
        "Requests to the Kubernetes API, by verb and answer (the HTTP status; 'error': no answer).",
        labels=["verb", "code"],
    )
    for (verb, code), count in sorted(state.api_responses().items()):
        requests.add_metric([verb, code], count)
    uevents = CounterMetricFamily(f"{PREFIX}_uevents", "Kernel or udev block-device events received.")
    uevents.add_metric([], state.uevents())
    writes = CounterMetricFamily(
        f"{PREFIX}_device_writes", "NodeDevice writes (create, spec, status, delete)."
    )
    writes.add_metric([], state.device_writes())
    ready = GaugeMetricFamily(
        f"{PREFIX}_ready", "1 once the devices are published and the node's driver spec and devices are read."
    )
    ready.add_metric([], float(state.ready()))
    return [devices, drivers, requests, uevents, writes, ready]


class _StateCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from state_metrics(STATE)


REGISTRY.register(_StateCollector())
