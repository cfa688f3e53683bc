"""Simulated agents for thousands of nodes in one asyncio process.

Each node's agent answers its NodeDriverConfig as the real one does, with the real agent's status
code (`simulated.agent_status`): when the spec's generation changes it patches the status (a merge
patch from what it wrote last, as `report.StatusWriter` does) with every driver Loaded, its bound
devices and observedGeneration; a driver gone from the spec is gone from the status (unloaded);
then it patches `status.boundDrivers` of each NodeDevice whose list changed (`report.BindingWriter`).
One watch on all NodeDriverConfigs stands in for the per-node watches of the real agents; the
writes stay per node. What the real agent does besides is left out: the intermediate Loading
write (the file fetched, the host starting), Events, Lease renewals (the Leases last an hour).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from storage_driver_agent.drivers.status import merge_patch
from storage_driver_api.constants import API_VERSION, NODE_DEVICES, NODE_DRIVER_CONFIGS
from storage_driver_api.kube import TRANSPORT_ERRORS, ApiError, KubeClient
from storage_driver_api.nodedriverconfig import NodeDriverConfigStatus

from tests.bench.bench_operator import bounded
from tests.integration.operator import simulated as sim

log = logging.getLogger(__name__)
STATUS_IN_FLIGHT = 32
BINDING_IN_FLIGHT = 16


@dataclass
class Marks:
    """When the fleet last did each kind of work in the current phase (monotonic), and how much."""

    spec_seen: float = 0.0
    status_written: float = 0.0
    bindings_written: float = 0.0
    status_writes: int = 0
    binding_writes: int = 0
    errors: int = 0


@dataclass
class Node:
    uid: str
    started: dict[str, float] = field(default_factory=dict)
    handled: tuple[str, int] | None = None  # (uid, generation) of the NodeDriverConfig answered
    written: dict[str, Any] | None = None  # the status as the server holds it
    previous: NodeDriverConfigStatus | None = None


class Fleet:
    """The agents of `nodes` (name -> Node uid); `bound`: NodeDevice -> its boundDrivers now."""

    def __init__(
        self,
        kube: KubeClient,
        nodes: Mapping[str, str],
        bound: Mapping[str, list[str]],
        *,
        label: str,
        bindings: bool = True,
    ) -> None:
        self.kube = kube
        self.nodes = {name: Node(uid) for name, uid in nodes.items()}
        self.bound = dict(bound)
        self.devices_of: dict[str, list[str]] = {}
        for device in bound:
            self.devices_of.setdefault(device.rsplit("-", 1)[0], []).append(device)
        self.label = label
        self.bindings = bindings
        self.marks = Marks()
        self._latest: dict[str, Mapping[str, Any]] = {}
        self._status_queue: asyncio.Queue[str] = asyncio.Queue()
        self._binding_queue: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
        self._queued: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # --- start: what each agent does when it starts -------------------------------------------

    async def prepare(self, in_flight: int = STATUS_IN_FLIGHT) -> None:
        """Each agent's NodeDriverConfig exists (created with an empty spec, owned by the Node, as
        the agent creates it) and holds its report; every NodeDevice's boundDrivers is what runs."""
        existing, _ = await self.kube.list(NODE_DRIVER_CONFIGS, limit=1000)
        by_name = {c["metadata"]["name"]: c for c in existing}

        async def one(name: str) -> None:
            config = by_name.get(name) or await self._create(name)
            self._take(name, config)
            await self._answer(name)

        await bounded((one(name) for name in self.nodes), in_flight)
        await self._drain_bindings(in_flight)

    async def _create(self, name: str) -> Mapping[str, Any]:
        body = {
            "apiVersion": API_VERSION,
            "kind": "NodeDriverConfig",
            "metadata": {
                "name": name,
                "labels": {self.label: "true"},  # for the benchmark's clean-up only
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": name, "uid": self.nodes[name].uid}
                ],
            },
            "spec": {"drivers": []},
        }
        try:
            return await self.kube.create(NODE_DRIVER_CONFIGS, body)
        except ApiError as exc:
            if not exc.conflict:
                raise
            return await self.kube.get(NODE_DRIVER_CONFIGS, name)

    def _take(self, name: str, config: Mapping[str, Any]) -> None:
        node = self.nodes[name]
        uid = config["metadata"]["uid"]
        if node.handled is None or node.handled[0] != uid:
            node.written = dict(config.get("status") or {})
            with contextlib.suppress(ValueError):
                node.previous = NodeDriverConfigStatus.model_validate(node.written)
        self._latest[name] = config

    # --- running: answer spec changes -------------------------------------------------------

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._watch(), name="fleet watch"))
        self._tasks += [asyncio.create_task(self._status_worker()) for _ in range(STATUS_IN_FLIGHT)]
        self._tasks += [asyncio.create_task(self._binding_worker()) for _ in range(BINDING_IN_FLIGHT)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def reset_marks(self) -> Marks:
        marks, self.marks = self.marks, Marks()
        return marks

    @property
    def idle(self) -> bool:
        return not self._queued and self._binding_queue.empty()

    async def _watch(self) -> None:
        version = ""
        while True:
            try:
                if not version:
                    items, version = await self.kube.list(NODE_DRIVER_CONFIGS, limit=1000)
                    for item in items:
                        self._seen(item)
                async for event in self.kube.watch(
                    NODE_DRIVER_CONFIGS, resource_version=version, timeout_seconds=300
                ):
                    version = event.object["metadata"].get("resourceVersion") or version
                    if event.type in ("ADDED", "MODIFIED"):
                        self._seen(event.object)
            except ApiError as exc:
                if exc.gone:
                    version = ""
                else:
                    log.warning("fleet watch: %s", exc)
                    await asyncio.sleep(1)
            except TRANSPORT_ERRORS as exc:
                log.warning("fleet watch: %r", exc)
                await asyncio.sleep(1)

    def _seen(self, config: Mapping[str, Any]) -> None:
        name = config["metadata"]["name"]
        node = self.nodes.get(name)
        if node is None:
            return
        key = (config["metadata"]["uid"], int(config["metadata"].get("generation") or 0))
        if key == node.handled:
            return  # its own status write coming back, or nothing new
        self.marks.spec_seen = time.monotonic()
        self._take(name, config)
        if name not in self._queued:
            self._queued.add(name)
            self._status_queue.put_nowait(name)

    async def _status_worker(self) -> None:
        while True:
            name = await self._status_queue.get()
            self._queued.discard(name)
            try:
                await self._answer(name)
            except (ApiError, *TRANSPORT_ERRORS) as exc:
                self.marks.errors += 1
                log.warning("fleet: status of %s: %r", name, exc)
                self.nodes[name].handled = None
                self._queued.add(name)
                self._status_queue.put_nowait(name)
                await asyncio.sleep(0.5)

    async def _answer(self, name: str) -> None:
        """Report the node's newest spec as acted on: status, then the devices' boundDrivers."""
        node, config = self.nodes[name], self._latest[name]
        meta = config["metadata"]
        status = sim.agent_status(config, started=node.started, previous=node.previous)
        wanted = status.to_api()
        if wanted != node.written:
            await self.kube.patch(
                NODE_DRIVER_CONFIGS,
                name,
                {"status": merge_patch(node.written or {}, wanted)},
                subresource="status",
            )
            node.written, node.previous = wanted, status
            self.marks.status_writes += 1
            self.marks.status_written = time.monotonic()
        node.handled = (meta["uid"], int(meta.get("generation") or 0))
        if self.bindings:
            self._submit_bindings(name, status)

    def _submit_bindings(self, name: str, status: NodeDriverConfigStatus) -> None:
        drivers: dict[str, list[str]] = {}
        for driver in status.drivers:
            for device in driver.bound_devices:
                drivers.setdefault(device, []).append(driver.name)
        for device in dict.fromkeys([*self.devices_of.get(name, ()), *drivers]):
            wanted = sorted(drivers.get(device, []))
            if self.bound.get(device, []) != wanted:
                self.bound[device] = wanted
                self._binding_queue.put_nowait((device, wanted))

    async def _binding_worker(self) -> None:
        while True:
            device, wanted = await self._binding_queue.get()
            await self._bind(device, wanted)

    async def _bind(self, device: str, wanted: list[str]) -> None:
        if self.bound.get(device) != wanted:
            return  # a newer list is queued
        try:
            await self.kube.patch(
                NODE_DEVICES, device, {"status": {"boundDrivers": wanted}}, subresource="status"
            )
            self.marks.binding_writes += 1
            self.marks.bindings_written = time.monotonic()
        except ApiError as exc:
            if not exc.not_found:
                self.marks.errors += 1
                log.warning("fleet: boundDrivers of %s: %s", device, exc)
        except TRANSPORT_ERRORS as exc:
            self.marks.errors += 1
            log.warning("fleet: boundDrivers of %s: %r", device, exc)

    async def _drain_bindings(self, in_flight: int) -> None:
        """Write the queued boundDrivers now (at start, before the workers run)."""
        queued = []
        while not self._binding_queue.empty():
            queued.append(self._binding_queue.get_nowait())
        await bounded((self._bind(device, wanted) for device, wanted in queued), in_flight)

    def add_device(self, node: str, device: str) -> None:
        """A NodeDevice created during the run (its boundDrivers empty)."""
        self.devices_of.setdefault(node, []).append(device)
        self.bound[device] = []
