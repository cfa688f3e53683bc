"""The floor of the hot-plug chain: what the API server and the kernel allow, with no logic.

A raw client performs the hot-plug's writes one after the other, each as soon as a watch shows
the previous one, with nothing decided in between:

    in:  create a NodeDevice -> its watch sees it -> patch the NodeDriverConfig spec -> its watch
         sees it -> fork a process -> patch the status -> its watch sees it
    out: patch the NodeDevice Present=False -> its watch sees it -> patch the spec -> its watch
         sees it -> end the process -> patch the status -> its watch sees it

The objects belong to a node name of their own that has no Node, agent or operator plan, so
nothing else reacts to them; `bench_hotplug` runs this in the same run as the product's chain
and reports the ratio of the two.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import yaml
from storage_driver_api.constants import (
    API_VERSION,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    node_label_value,
)
from storage_driver_api.kube import KubeClient

FLOOR_STAGES_IN = ("NodeDevice created", "spec patched", "process forked", "status patched")
FLOOR_STAGES_OUT = ("NodeDevice Present=False", "spec patched", "process ended", "status patched")
EXAMPLE_DEVICE = Path(__file__).resolve().parents[2] / "examples" / "nodedevice.yaml"
PROCESS = ("/bin/sleep", "600")  # the least a driver host can be: a fork and an exec, then a signal


def device_body(node: str, name: str, index: int) -> dict[str, Any]:
    """The example NodeDevice (what an agent publishes for a loop device), on this node."""
    body: dict[str, Any] = yaml.safe_load(EXAMPLE_DEVICE.read_text())
    body.pop("status", None)
    body["metadata"] = {
        "name": name,
        "labels": {**body["metadata"]["labels"], NODE_LABEL: node_label_value(node)},
    }
    body["spec"].update(
        nodeName=node,
        identity={"kind": "virtual", "value": f"{node}/loop{index}//floor-{index}.img"},
        kernelName=f"loop{index}",
        devPath=f"/dev/loop{index}",
    )
    return body


def driver_entry(name: str, devices: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "driverName": "Loop Info Driver",
        "version": "1.0.0",
        "source": {"kind": "hostPath", "path": "loop_info.py"},
        "config": {},
        "unloadGracePeriodSeconds": 5,
        "devices": devices,
        "priority": 0,
    }


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def present_condition(present: bool) -> dict[str, Any]:
    return {
        "type": "Present",
        "status": "True" if present else "False",
        "reason": "Detected" if present else "Removed",
        "message": "floor",
        "lastTransitionTime": _now(),
    }


class Floor:
    """The raw chain on one node name: `setup()`, then `cycle()` as often as wanted, `cleanup()`."""

    def __init__(self, kube: KubeClient, node: str, driver: str = "floor"):
        self.kube = kube
        self.node = node
        self.driver = driver
        self.devices: dict[str, dict[str, Any]] = {}
        self.config: dict[str, Any] | None = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def setup(self) -> None:
        await self.cleanup()
        await self.kube.create(
            NODE_DRIVER_CONFIGS,
            {
                "apiVersion": API_VERSION,
                "kind": "NodeDriverConfig",
                "metadata": {"name": self.node},
                "spec": {"drivers": []},
            },
        )
        ready = [asyncio.Event(), asyncio.Event()]
        self._tasks = [
            asyncio.create_task(
                self._follow(
                    NODE_DEVICES, ready[0], label_selector=f"{NODE_LABEL}={node_label_value(self.node)}"
                )
            ),
            asyncio.create_task(
                self._follow(NODE_DRIVER_CONFIGS, ready[1], field_selector=f"metadata.name={self.node}")
            ),
        ]
        for event in ready:
            await event.wait()

    async def cleanup(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        await self.kube.delete(NODE_DRIVER_CONFIGS, self.node)
        items, _ = await self.kube.list(
            NODE_DEVICES, label_selector=f"{NODE_LABEL}={node_label_value(self.node)}"
        )
        for item in items:
            await self.kube.delete(NODE_DEVICES, item["metadata"]["name"])

    async def _follow(
        self,
        res: Any,
        ready: asyncio.Event,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> None:
        items, version = await self.kube.list(
            res, label_selector=label_selector, field_selector=field_selector
        )
        for item in items:
            self._apply(res, "ADDED", item)
        ready.set()
        while True:
            async for event in self.kube.watch(
                res, resource_version=version, label_selector=label_selector, field_selector=field_selector
            ):
                version = event.object["metadata"].get("resourceVersion", version)
                if event.type != "BOOKMARK":
                    self._apply(res, event.type, event.object)
                    self._changed.set()

    def _apply(self, res: Any, kind: str, obj: dict[str, Any]) -> None:
        if res is NODE_DRIVER_CONFIGS:
            self.config = None if kind == "DELETED" else obj
        elif kind == "DELETED":
            self.devices.pop(obj["metadata"]["name"], None)
        else:
            self.devices[obj["metadata"]["name"]] = obj

    async def _seen(self, probe: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))

    def _spec_devices(self) -> list[str] | None:
        for entry in ((self.config or {}).get("spec") or {}).get("drivers") or []:
            if entry["name"] == self.driver:
                return list(entry.get("devices") or [])
        return None

    def _status_phase(self) -> str | None:
        for entry in ((self.config or {}).get("status") or {}).get("drivers") or []:
            if entry["name"] == self.driver:
                return str(entry.get("phase"))
        return None

    def _present(self, name: str) -> bool | None:
        obj = self.devices.get(name)
        if obj is None:
            return None
        conditions = (obj.get("status") or {}).get("conditions") or []
        return not any(c["type"] == "Present" and c["status"] == "False" for c in conditions)

    async def cycle(self, index: int) -> tuple[list[float], list[float]]:
        """One plug and unplug: the cumulative time to each stage in, then out."""
        name = f"{self.node}-floor{index}"
        timings_in: list[float] = []
        started = time.monotonic()
        await self.kube.create(NODE_DEVICES, device_body(self.node, name, index))
        await self._seen(lambda: name in self.devices)
        timings_in.append(time.monotonic() - started)
        await self.kube.patch(
            NODE_DRIVER_CONFIGS, self.node, {"spec": {"drivers": [driver_entry(self.driver, [name])]}}
        )
        await self._seen(lambda: name in (self._spec_devices() or []))
        timings_in.append(time.monotonic() - started)
        process = await asyncio.create_subprocess_exec(*PROCESS)
        try:
            timings_in.append(time.monotonic() - started)
            timings_out = await self._plug_rest(name, process, started, timings_in)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await self.kube.delete(NODE_DEVICES, name)
        return timings_in, timings_out

    async def _plug_rest(
        self, name: str, process: asyncio.subprocess.Process, started: float, timings_in: list[float]
    ) -> list[float]:
        entry = {"name": self.driver, "phase": "Loaded", "pid": process.pid, "boundDevices": [name]}
        await self.kube.patch(
            NODE_DRIVER_CONFIGS, self.node, {"status": {"drivers": [entry]}}, subresource="status"
        )
        await self._seen(lambda: self._status_phase() == "Loaded")
        timings_in.append(time.monotonic() - started)

        timings_out: list[float] = []
        started = time.monotonic()
        await self.kube.patch(
            NODE_DEVICES, name, {"status": {"conditions": [present_condition(False)]}}, subresource="status"
        )
        await self._seen(lambda: self._present(name) is False)
        timings_out.append(time.monotonic() - started)
        await self.kube.patch(NODE_DRIVER_CONFIGS, self.node, {"spec": {"drivers": []}})
        await self._seen(lambda: self._spec_devices() is None)
        timings_out.append(time.monotonic() - started)
        process.terminate()
        await process.wait()
        timings_out.append(time.monotonic() - started)
        await self.kube.patch(
            NODE_DRIVER_CONFIGS, self.node, {"status": {"drivers": []}}, subresource="status"
        )
        await self._seen(lambda: self._status_phase() is None)
        timings_out.append(time.monotonic() - started)
        return timings_out
