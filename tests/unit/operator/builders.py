"""Views for unit tests, built from API-shaped dicts through the operator's own projections."""

from __future__ import annotations

import datetime as dt
from typing import Any

from storage_driver_api.constants import LEASE_PREFIX
from storage_driver_api.nodedriverconfig import DesiredDriver
from storage_driver_operator.views import (
    ConfigView,
    DeviceView,
    LeaseView,
    NodeView,
    StorageDriverView,
    config_view,
    device_view,
    lease_view,
    node_view,
    storage_driver_view,
)

NOW = 1_800_000_000.0  # a fixed "now" (epoch seconds)


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(
    name: str = "n1",
    *,
    labels: dict[str, str] | None = None,
    kernel: str = "6.1.0-18-amd64",
    os_name: str = "linux",
    arch: str = "amd64",
    deleting: bool = False,
) -> NodeView:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "labels": labels or {}}
    if deleting:
        meta["deletionTimestamp"] = iso(NOW)
    return node_view(
        {
            "metadata": meta,
            "status": {
                "nodeInfo": {"kernelVersion": kernel, "operatingSystem": os_name, "architecture": arch}
            },
        }
    )


def device(
    name: str,
    node_name: str = "n1",
    type_: str = "loop",
    *,
    present: bool | None = True,
    since: float | None = None,
    udev: dict[str, str] | None = None,
    **attributes: Any,
) -> DeviceView:
    status: dict[str, Any] = {}
    if present is not None:
        status["conditions"] = [
            {
                "type": "Present",
                "status": "True" if present else "False",
                "reason": "Attached" if present else "Detached",
                "lastTransitionTime": iso(since if since is not None else NOW - 3600),
            }
        ]
    view = device_view(
        {
            "metadata": {"name": name},
            "spec": {"nodeName": node_name, "type": type_, "udev": udev or {}, **attributes},
            "status": status,
        }
    )
    assert view is not None
    return view


def driver(
    name: str = "drv",
    *,
    deleting: bool = False,
    generation: int = 1,
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> StorageDriverView:
    body: dict[str, Any] = {
        "driverName": "Loop Info Driver",
        "version": "1.0.0",
        "supportedDevices": ["loop"],
        "source": {"hostPath": {"path": "loop_info.py"}},
        "unloadDelaySeconds": 30,
    }
    body.update(spec)
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = iso(NOW)
    return storage_driver_view({"metadata": meta, "spec": body, "status": status or {}})


def entry(view: StorageDriverView, devices: list[str] | tuple[str, ...] = ()) -> DesiredDriver:
    """The spec entry `view` puts on a node binding `devices`."""
    assert view.template is not None
    return view.template.model_copy(update={"devices": list(devices)})


def run(name: str, phase: str = "Loaded", version: str | None = "1.0.0", **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"name": name, "phase": phase, **extra}
    if version is not None:
        item["version"] = version
    if phase in ("Loaded", "Loading", "Unloading") and "pid" not in extra:
        item["pid"] = 100
    return item


def config(
    name: str = "n1",
    drivers: list[DesiredDriver] | tuple[DesiredDriver, ...] = (),
    *,
    runs: list[dict[str, Any]] | None = None,
    available: list[str] | dict[str, dict[str, Any]] | None = ("loop_info.py",),  # type: ignore[assignment]
    max_loaded: int | None = None,
    generation: int = 1,
    observed: int | None = 1,
    status: bool = True,
) -> ConfigView:
    body: dict[str, Any] = {
        "metadata": {"name": name, "uid": f"ndc-{name}", "generation": generation},
        "spec": {"drivers": [d.to_api() for d in drivers]},
    }
    if status:
        st: dict[str, Any] = {"drivers": runs or []}
        if isinstance(available, dict):
            st["available"] = [{"file": f, **v} for f, v in available.items()]
        elif available is not None:
            st["available"] = [{"file": f, "sha256": "a" * 64} for f in available]
        if max_loaded is not None:
            st["capacity"] = {"maxLoadedDrivers": max_loaded}
        if observed is not None:
            st["observedGeneration"] = observed
        body["status"] = st
    return config_view(body)


def lease(node_name: str = "n1", *, renewed: float = NOW - 5, duration: int = 40) -> LeaseView:
    view = lease_view(
        {
            "metadata": {"name": LEASE_PREFIX + node_name},
            "spec": {
                "renewTime": dt.datetime.fromtimestamp(renewed, dt.UTC).isoformat().replace("+00:00", "Z"),
                "leaseDurationSeconds": duration,
            },
        }
    )
    assert view is not None
    return view


__all__ = [
    "NOW",
    "ConfigView",
    "DeviceView",
    "LeaseView",
    "NodeView",
    "StorageDriverView",
    "config",
    "device",
    "driver",
    "entry",
    "lease",
    "node",
    "run",
]
