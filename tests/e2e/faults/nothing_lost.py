"""Issue 13's "nothing lost", checked on the real cluster and the real agent's driver hosts after
the faults stop: every StorageDriver that should run on the node runs there in exactly one host,
loaded from the pinned sha256, and no other does; every observedGeneration caught up; what was
deleted is gone; the probe driver's journals show no second copy at any time."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from storage_driver_api.constants import (
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import KubeClient

from tests.harness.drivers import Agent, journal
from tests.harness.waiting import eventually


@dataclass
class Expected:
    """What the node must look like once it converged."""

    running: dict[str, str] = field(default_factory=dict)  # StorageDriver -> the sha256 pinned
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # StorageDriver -> its config
    deleted: set[str] = field(default_factory=set)  # StorageDrivers deleted during the run
    # Backing files of loop devices attached and detached (a kernel name like loop2 is reused by
    # the next device attached).
    present: set[str] = field(default_factory=set)
    absent: set[str] = field(default_factory=set)


async def problems(kube: KubeClient, agent: Agent, expected: Expected) -> list[str]:
    """What still differs from `expected` (empty once the node converged)."""
    found: list[str] = []
    config = await kube.get_or_none(NODE_DRIVER_CONFIGS, agent.node)
    if config is None:
        return [f"no NodeDriverConfig {agent.node}"]
    status = config.get("status") or {}
    if status.get("observedGeneration") != config["metadata"]["generation"]:
        found.append(
            f"NodeDriverConfig observedGeneration {status.get('observedGeneration')} "
            f"!= generation {config['metadata']['generation']}"
        )
    entries = {d["name"]: d for d in status.get("drivers") or []}
    spec = {d["name"]: d for d in config["spec"].get("drivers") or []}
    hosts = sorted(agent.hosts().values())
    for name, sha in expected.running.items():
        entry = entries.get(name) or {}
        if entry.get("phase") != "Loaded" or entry.get("sha256") != sha:
            found.append(f"{name}: {entry.get('phase')} sha256 {entry.get('sha256')}, want Loaded {sha}")
        want_config = expected.configs.get(name)
        if want_config is not None and (spec.get(name) or {}).get("config") != want_config:
            found.append(f"{name}: spec config {(spec.get(name) or {}).get('config')}, want {want_config}")
        if hosts.count(name) != 1:
            found.append(f"{name}: {hosts.count(name)} driver hosts, want 1")
    for name in set(entries) - set(expected.running):
        found.append(f"{name}: reported {entries[name].get('phase')} but must not run")
    for name in set(spec) - set(expected.running):
        found.append(f"{name}: in the node's spec but must not run")
    for name in set(hosts) - set(expected.running):
        found.append(f"{name}: a driver host runs it but must not")
    drivers, _ = await kube.list(STORAGE_DRIVERS)
    for sd in drivers:
        name = sd["metadata"]["name"]
        if name in expected.deleted:
            found.append(f"{name}: deleted but still there (finalizers {sd['metadata'].get('finalizers')})")
        observed = (sd.get("status") or {}).get("observedGeneration")
        if observed != sd["metadata"]["generation"]:
            found.append(
                f"{name}: observedGeneration {observed} != generation {sd['metadata']['generation']}"
            )
    devices, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={node_label_value(agent.node)}")
    present = {
        d["spec"].get("backingFile")
        for d in devices
        if any(
            c["type"] == "Present" and c["status"] == "True"
            for c in (d.get("status") or {}).get("conditions") or []
        )
    }
    found += [f"loop device of {n} attached but not published Present" for n in expected.present - present]
    found += [f"loop device of {n} detached but still Present" for n in expected.absent & present]
    return found


async def converged(kube: KubeClient, agent: Agent, expected: Expected, *, timeout: float = 90) -> None:
    """Wait until nothing differs from `expected`; fail naming what still does."""

    async def probe() -> bool:
        try:
            left = await problems(kube, agent, expected)
        except (aiohttp.ClientError, OSError) as exc:  # a connection from before an API server restart
            left = [repr(exc)]
        assert not left, "; ".join(left)
        return True

    await eventually(probe, timeout=timeout, interval=0.3, what="nothing lost")


def starts_and_stops(trail: Path) -> tuple[int, int]:
    """How often the probe driver of this journal was loaded (start) and unloaded (stop); fails
    when it ever ran twice at once (a start while a copy ran)."""
    events = [e["event"] for e in journal(trail) if e["event"] in ("start", "stop")]
    assert all(a != b for a, b in itertools.pairwise(events)), f"{trail.name}: two at once: {events}"
    assert not events or events[0] == "start", events
    return events.count("start"), events.count("stop")
