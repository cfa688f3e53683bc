"""What a node's agent writes, written by the test instead: NodeDevices (spec, then the Present
condition in status, as the agent must since status cannot be set on create), the Lease it
renews, and its report in NodeDriverConfig status (`agent_status` builds it with the agent's own
pure status code, as a healthy agent whose drivers all load would). Shared by the integration
tests and the operator benchmarks."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from storage_driver_agent.drivers.statemachine import Artifact, DriverState, Host, wanted_devices
from storage_driver_agent.drivers.status import DriverReport, NodeReport, build_status, desired_from_api
from storage_driver_api.constants import (
    API_VERSION,
    DEVICE_TYPE_LABEL,
    LEASE_NAMESPACE_DEFAULT,
    LEASE_PREFIX,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import LEASES, NAMESPACES, NODES, ApiError, KubeClient
from storage_driver_api.nodedriverconfig import NodeDriverConfigSpec, NodeDriverConfigStatus

T = TypeVar("T")

SIMULATED_AGENT_VERSION = "0.0.0+simulated"


def stamp(at: dt.datetime | None = None) -> str:
    return (at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_stamp(at: dt.datetime | None = None) -> str:
    return (at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def device_body(node: str, name: str, type_: str = "loop", **attributes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": node,
        "type": type_,
        "identity": {"kind": "virtual", "value": f"{node}/{name}"},
        "kernelName": name.rsplit("-", 1)[-1],
        "sysPath": f"/sys/devices/virtual/block/{name}",
        **attributes,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "NodeDevice",
        "metadata": {
            "name": name,
            "labels": {NODE_LABEL: node_label_value(node), DEVICE_TYPE_LABEL: type_},
        },
        "spec": spec,
    }


async def add_device(
    kube: KubeClient,
    node: str,
    name: str,
    type_: str = "loop",
    *,
    node_uid: str | None = None,
    present: bool | None = True,
    **attributes: Any,
) -> dict[str, Any]:
    """Publish a NodeDevice; present=None leaves the Present condition unset."""
    body = device_body(node, name, type_, **attributes)
    if node_uid:
        body["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}
        ]
    created = await kube.create(NODE_DEVICES, body)
    if present is None:
        return created
    return await set_present(kube, name, present)


async def set_present(
    kube: KubeClient, name: str, present: bool, at: dt.datetime | None = None
) -> dict[str, Any]:
    condition = {
        "type": "Present",
        "status": "True" if present else "False",
        "reason": "Attached" if present else "Detached",
        "message": "device attached" if present else "device detached",
        "lastTransitionTime": stamp(at),
    }
    return await kube.patch(NODE_DEVICES, name, {"status": {"conditions": [condition]}}, subresource="status")


async def ensure_lease_namespace(kube: KubeClient, namespace: str = LEASE_NAMESPACE_DEFAULT) -> None:
    try:
        await kube.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
    except ApiError as exc:
        if not exc.conflict:
            raise


async def renew_lease(
    kube: KubeClient,
    node: str,
    *,
    at: dt.datetime | None = None,
    duration: int = 40,
    namespace: str = LEASE_NAMESPACE_DEFAULT,
) -> None:
    """Create or renew the node agent's Lease (renewTime = at, default now)."""
    name = LEASE_PREFIX + node
    spec = {
        "holderIdentity": f"storage-agent-{node}",
        "leaseDurationSeconds": duration,
        "renewTime": micro_stamp(at),
    }
    try:
        await kube.patch(LEASES, name, {"spec": spec}, namespace=namespace)
    except ApiError as exc:
        if not exc.not_found:
            raise
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {**spec, "acquireTime": micro_stamp(at)},
        }
        await kube.create(LEASES, body, namespace=namespace)


async def rewritten_on_conflict(write: Callable[[], Awaitable[T]], attempts: int = 10) -> T:
    """Run a read-then-write again when the object changed in between (409 Conflict), as the
    agent does: the operator may write the same NodeDriverConfig at any moment."""
    for _ in range(attempts - 1):
        try:
            return await write()
        except ApiError as exc:
            if not exc.conflict:
                raise
    return await write()


async def report(
    kube: KubeClient,
    node: str,
    *,
    drivers: list[dict[str, Any]] | Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    available: list[dict[str, Any]] | None = None,
    max_loaded: int | None = None,
    observe: bool = True,
    boot_id: str | None = None,
) -> dict[str, Any]:
    """Write the agent's part of a node's NodeDriverConfig (creating it with an empty spec if the
    operator has not yet). `drivers` may be a function of the object as read; `observe` sets
    observedGeneration to the current generation."""

    async def write() -> dict[str, Any]:
        config = await kube.get_or_none(NODE_DRIVER_CONFIGS, node)
        if config is None:
            node_obj = await kube.get(NODES, node)
            body = {
                "apiVersion": API_VERSION,
                "kind": "NodeDriverConfig",
                "metadata": {
                    "name": node,
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_obj["metadata"]["uid"]}
                    ],
                },
                "spec": {"drivers": []},
            }
            try:
                config = await kube.create(NODE_DRIVER_CONFIGS, body)
            except ApiError as exc:
                if not exc.conflict:
                    raise
                config = await kube.get(NODE_DRIVER_CONFIGS, node)
        status: dict[str, Any] = dict(config.get("status") or {})
        if drivers is not None:
            status["drivers"] = drivers(config) if callable(drivers) else drivers
        if available is not None:
            status["available"] = available
        if max_loaded is not None:
            status["capacity"] = {"maxLoadedDrivers": max_loaded}
        if observe:
            status["observedGeneration"] = config["metadata"]["generation"]
        if boot_id is not None:
            status["bootId"] = boot_id
        return await kube.replace(
            NODE_DRIVER_CONFIGS,
            node,
            {**config, "status": status},
            subresource="status",
        )

    return await rewritten_on_conflict(write)


def loaded_from_spec(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every driver in the node's spec reported Loaded at its spec version."""
    return [
        {
            "name": d["name"],
            "phase": "Loaded",
            "version": d["version"],
            "pid": 4242,
            "boundDevices": d.get("devices", []),
        }
        for d in config["spec"].get("drivers", [])
    ]


async def report_loaded(kube: KubeClient, node: str, **extra: Any) -> dict[str, Any]:
    """Report every driver in the node's spec as Loaded at its spec version, as a healthy agent would."""
    return await report(kube, node, drivers=loaded_from_spec, **extra)


def available_entry(
    file: str, content: str = "driver", driver_name: str = "Loop Info Driver", version: str = "1.0.0"
) -> dict[str, Any]:
    return {"file": file, "sha256": sha256_of(content), "driverName": driver_name, "version": version}


def storage_driver(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "driverName": "Loop Info Driver",
        "version": "1.0.0",
        "supportedDevices": ["loop"],
        "source": {"url": {"url": f"https://drivers.example/{name}.py", "sha256": sha256_of(name)}},
        "unloadDelaySeconds": 2,
        "unloadGracePeriodSeconds": 1,
    }
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "StorageDriver", "metadata": {"name": name}, "spec": body}


async def spec_drivers(kube: KubeClient, node: str) -> dict[str, dict[str, Any]] | None:
    """The drivers in a node's NodeDriverConfig spec by name; None when it does not exist."""
    config = await kube.get_or_none(NODE_DRIVER_CONFIGS, node)
    if config is None:
        return None
    return {d["name"]: d for d in (config.get("spec") or {}).get("drivers") or []}


async def driver_status(kube: KubeClient, name: str) -> dict[str, Any]:
    obj = await kube.get(STORAGE_DRIVERS, name)
    return dict(obj.get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def agent_status(
    config: Mapping[str, Any],
    *,
    started: dict[str, float],
    boot_id: str = "",
    previous: NodeDriverConfigStatus | None = None,
    now: float | None = None,
) -> NodeDriverConfigStatus:
    """The status a healthy agent reports for this NodeDriverConfig once it acted on its spec:
    every driver Loaded (its file verified, a host running) with every device the spec names
    bound, observedGeneration the spec's generation, built by the agent's own `build_status`.
    A driver gone from the spec is gone from the status, as after a finished unload.
    `started` (driver -> host start time) is kept by the caller, so an unchanged spec gives an
    unchanged status; `previous` keeps the conditions' transition times."""
    at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = now if now is not None else at.timestamp()
    spec = NodeDriverConfigSpec.model_validate(config.get("spec") or {})
    reports = []
    for index, entry in enumerate(spec.drivers):
        desired = desired_from_api(entry)
        sha = entry.source.sha256 or sha256_of(entry.name)
        start = started.setdefault(entry.name, clock)
        host = Host(
            pid=40000 + index,
            driver_name=desired.driver_name,
            version=desired.version,
            sha256=sha,
            config_json=desired.config_json,
            attached=wanted_devices(desired, desired.devices),  # the node has every device named
            started_at=start,
        )
        artifact = Artifact(desired.fetch_key, sha, class_name="SimulatedDriver")
        state = DriverState(entry.name, desired=desired, artifact=artifact, file_sha=sha, host=host)
        reports.append(DriverReport(state))
    for name in [n for n in started if n not in {d.name for d in spec.drivers}]:
        del started[name]
    report = NodeReport(
        generation=(config.get("metadata") or {}).get("generation"),
        boot_id=boot_id,
        agent_version=SIMULATED_AGENT_VERSION,
        max_loaded_drivers=100,
        drivers=reports,
        available=[],
        previous=previous,
    )
    present = frozenset(d for entry in spec.drivers for d in entry.devices)
    return build_status(report, present, clock, at)
