"""The operator's loop: the cache feeds the pure planners, and a thin shell applies the result.

    cache (Nodes, NodeDevices, NodeDriverConfigs, Leases, StorageDrivers)
      -> nodes marked dirty (coalesced per node)
      -> desired.plan_node for each dirty node
      -> NodeDriverConfig spec written only when it differs
      -> status.aggregate per StorageDriver -> status written only when it differs, plus Events

Nothing is planned before every kind is listed, so a restart sees the same world and writes
nothing; derived times come from the objects (Present conditions, Leases), never from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
from storage_driver_api.constants import (
    API_VERSION,
    MANAGED_BY_LABEL,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    STORAGE_DRIVERS,
    UNLOAD_AFTER_ANNOTATION,
)
from storage_driver_api.kube import LEASES, NODES, ApiError, KubeClient
from storage_driver_api.logs import fields
from storage_driver_api.storagedriver import MAX_UNLOAD_DELAY_SECONDS as MAX_UNLOAD_DELAY

from storage_driver_operator import events
from storage_driver_operator.cache import Informer
from storage_driver_operator.desired import NodePlan, NodeState, Rollout, plan_node, plan_rollouts
from storage_driver_operator.metrics import DriverStats, InformerStats, Snapshot
from storage_driver_operator.options import Options
from storage_driver_operator.pacing import Pacing
from storage_driver_operator.status import NodeDriverState, Observed, aggregate, observe, transitions
from storage_driver_operator.views import (
    ConfigView,
    DeviceView,
    LeaseView,
    NodeView,
    StorageDriverView,
    config_view,
    device_view,
    format_unload_after,
    lease_node,
    lease_view,
    node_view,
    reported_runs,
    storage_driver_view,
)

log = logging.getLogger(__name__)

MANAGER = "storage-operator"
TICK_SECONDS = 10.0
STUCK_SECONDS = 120.0
MAX_RETRY_SECONDS = 30.0
# Lists from the API server's watch cache may trail etcd by a moment; the watches that follow
# make it up. Waiting this long after the lists before the first plan lets them.
SETTLE_SECONDS = 1.0
CHECK_SHARE = 9.0  # wait_unloaded rests 9 times as long as a check took: checks take <= 10%


def _lease_key(obj: Any) -> str | None:
    return lease_node(obj)


class Controller:
    def __init__(self, kube: KubeClient, options: Options, clock: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.options = options
        self.clock = clock
        common: dict[str, Any] = {
            "watch_timeout": options.watch_timeout,
            "inactivity_timeout": options.inactivity_timeout,
            "from_watch_cache": not options.list_pages,
        }
        self.nodes: Informer[NodeView] = Informer(kube, NODES, node_view, on_change=self._on_node, **common)
        self.devices: Informer[DeviceView] = Informer(
            kube, NODE_DEVICES, device_view, on_change=self._on_device, **common
        )
        self.configs: Informer[ConfigView] = Informer(
            kube, NODE_DRIVER_CONFIGS, config_view, on_change=self._on_config, **common
        )
        self.leases: Informer[LeaseView] = Informer(
            kube,
            LEASES,
            lease_view,
            key=_lease_key,
            namespace=options.lease_namespace,
            on_change=self._on_lease,
            **common,
        )
        self.drivers: Informer[StorageDriverView] = Informer(
            kube, STORAGE_DRIVERS, storage_driver_view, on_change=self._on_driver, **common
        )
        self.informers: tuple[Informer[Any], ...] = (
            self.nodes,
            self.devices,
            self.configs,
            self.leases,
            self.drivers,
        )
        self.devices_by_node: dict[str, set[str]] = {}
        # Devices the agent deleted after its retention period, kept as absent so that a longer
        # unloadDelaySeconds is still honoured: node -> name -> view (absent since).
        self.departed: dict[str, dict[str, DeviceView]] = {}
        self.plans: dict[str, NodePlan] = {}
        self.rollouts: dict[str, Rollout] = {}
        self.ready = asyncio.Event()
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._timers: list[tuple[float, str]] = []
        self._failures: dict[str, int] = {}
        self._status_due = asyncio.Event()
        self._progress = asyncio.Event()
        self._observed: dict[str, dict[str, Observed]] = {}
        self._seed_quietly: set[str] = set()
        self._writes = asyncio.Semaphore(max(1, options.write_concurrency))
        self._background: set[asyncio.Task[None]] = set()
        self.last_tick = clock()
        self.ready_seconds: float | None = None
        self.counters = {"plans": 0, "spec_writes": 0, "spec_creates": 0, "status_writes": 0, "events": 0}

    # --- change tracking (called by the informers) -------------------------------------------

    def _mark(self, *nodes: str | None) -> None:
        if not self.ready.is_set():
            return
        for node in nodes:
            if node:
                self._dirty.add(node)
        self._wake.set()

    def mark_all(self) -> None:
        self._dirty.update(name for name, node in self.nodes.items.items() if not node.deleting)
        self._wake.set()

    def _on_node(self, key: str, old: NodeView | None, new: NodeView | None) -> None:
        if new is None or new.deleting:
            # Its NodeDriverConfig and NodeDevices are garbage-collected through ownerReferences.
            self.plans.pop(key, None)
            self.departed.pop(key, None)
            self._dirty.discard(key)
            self._status_due.set()
            self._notify()
            return
        self._mark(key)

    def _on_device(self, key: str, old: DeviceView | None, new: DeviceView | None) -> None:
        if old is not None and new is None:
            since = old.since if not old.present and old.since is not None else self.clock()
            self.departed.setdefault(old.node, {})[key] = replace(old, present=False, since=since)
        if new is not None and key in self.departed.get(new.node, {}):
            del self.departed[new.node][key]
        if old is not None and (new is None or new.node != old.node):
            names = self.devices_by_node.get(old.node)
            if names is not None:
                names.discard(key)
                if not names:
                    del self.devices_by_node[old.node]
        if new is not None:
            self.devices_by_node.setdefault(new.node, set()).add(key)
        self._mark(old.node if old else None, new.node if new else None)

    def _on_config(self, key: str, old: ConfigView | None, new: ConfigView | None) -> None:
        self._mark(key)
        self._status_due.set()
        self._notify()

    def _on_lease(self, key: str, old: LeaseView | None, new: LeaseView | None) -> None:
        now = self.clock()
        if old is None or new is None or old.fresh(now) != new.fresh(now):
            self._mark(key)
            self._notify()

    def _on_driver(self, key: str, old: StorageDriverView | None, new: StorageDriverView | None) -> None:
        self._status_due.set()
        self._notify()
        if (
            old is None
            or new is None
            or (old.spec, old.invalid, old.deleting, old.generation)
            != (
                new.spec,
                new.invalid,
                new.deleting,
                new.generation,
            )
        ) and self.ready.is_set():
            self.mark_all()
        if new is None:
            self._observed.pop(key, None)

    def _notify(self) -> None:
        """Wake whoever waits for progress (the deletion handler)."""
        self._progress.set()
        self._progress = asyncio.Event()

    # --- planning ------------------------------------------------------------------------------

    def node_state(self, name: str) -> NodeState | None:
        node = self.nodes.items.get(name)
        if node is None or node.deleting:
            return None
        devices = tuple(
            self.devices.items[d]
            for d in sorted(self.devices_by_node.get(name, ()))
            if d in self.devices.items
        ) + self._departed(name)
        return NodeState(
            node=node, devices=devices, config=self.configs.items.get(name), lease=self.leases.items.get(name)
        )

    def _departed(self, node: str) -> tuple[DeviceView, ...]:
        """This node's deleted devices that could still hold back an unload (the longest
        unloadDelaySeconds the schema allows); older ones are forgotten."""
        departed = self.departed.get(node)
        if not departed:
            return ()
        horizon = self.clock() - MAX_UNLOAD_DELAY
        for key in [k for k, v in departed.items() if (v.since or 0) < horizon]:
            del departed[key]
        return tuple(departed[k] for k in sorted(departed))

    def sorted_drivers(self) -> list[StorageDriverView]:
        return [self.drivers.items[name] for name in sorted(self.drivers.items)]

    async def _plan_batch(self, batch: set[str]) -> tuple[bool, float]:
        """Plan the batch's nodes and write the specs that changed: whether any did, and the
        seconds the planning took (the writes left out)."""
        now, started = self.clock(), time.monotonic()
        drivers = self.sorted_drivers()
        self.rollouts = plan_rollouts(drivers, self.configs.items.values())
        for rollout in self.rollouts.values():
            batch |= rollout.allowed  # a node the rollout may switch now, even if nothing else changed
        changed: list[NodePlan] = []
        for name in sorted(batch):
            state = self.node_state(name)
            if state is None:
                self.plans.pop(name, None)
                continue
            plan = plan_node(state, drivers, now, self.rollouts, self.options.directory_autoload)
            self.counters["plans"] += 1
            self.plans[name] = plan
            if plan.recheck_at is not None:
                heapq.heappush(self._timers, (plan.recheck_at, name))
            if plan.changed:
                changed.append(plan)
        planning = time.monotonic() - started
        if changed:
            await asyncio.gather(*(self._write(plan) for plan in changed))
        self._status_due.set()
        self._notify()
        return bool(changed), planning

    def _retry_later(self, node: str) -> None:
        failures = self._failures.get(node, 0) + 1
        self._failures[node] = failures
        heapq.heappush(self._timers, (self.clock() + min(MAX_RETRY_SECONDS, 0.5 * 2**failures), node))

    async def _write(self, plan: NodePlan) -> None:
        """Bring one NodeDriverConfig's spec to the plan (create it when needed, never for a Node
        that is gone)."""
        name = plan.node
        node = self.nodes.items.get(name)
        if node is None or node.deleting:
            return
        spec = {"drivers": [d.to_api() for d in plan.drivers]}
        config = self.configs.items.get(name)
        unload_after = format_unload_after(plan.unload_after)
        body: dict[str, Any] = {"spec": spec}
        if config is None or unload_after != format_unload_after(config.unload_after):
            body["metadata"] = {"annotations": {UNLOAD_AFTER_ANNOTATION: unload_after}}
        async with self._writes:
            try:
                if config is None:
                    if not plan.drivers:
                        return
                    obj = await self._create(node, spec, unload_after)
                else:
                    obj = await self.kube.patch(NODE_DRIVER_CONFIGS, name, body)
                    self.counters["spec_writes"] += 1
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                # Retried with backoff. A 404 means it was deleted under us (its Node went away,
                # or a person removed it): the cache catches up, and a live Node gets a new one.
                self._retry_later(name)
                log.warning("cannot write node spec", extra=fields(node=name, error=str(exc)))
                return
        self._failures.pop(name, None)
        self.last_tick = self.clock()  # a long first batch is progress, not a stuck planner
        self.configs.apply(obj)
        # Plan it once more against what was written, so that the kept plan (which status and
        # Events read) says "keep" rather than "load" or "update"; that plan writes nothing.
        self._mark(name)
        actions = {
            d.driver: f"{d.action}:{d.reason}"
            for d in plan.decisions.values()
            if d.action not in ("keep", "none")
        }
        log.info(
            "node spec written",
            extra=fields(node=name, drivers=[d.name for d in plan.drivers], changes=actions or "devices"),
        )

    async def _create(self, node: NodeView, spec: dict[str, Any], unload_after: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": NODE_DRIVER_CONFIGS.kind,
            "metadata": {
                "name": node.name,
                "labels": {MANAGED_BY_LABEL: MANAGER},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node.uid}],
            },
            "spec": spec,
        }
        if unload_after is not None:
            body["metadata"]["annotations"] = {UNLOAD_AFTER_ANNOTATION: unload_after}
        try:
            obj = await self.kube.create(NODE_DRIVER_CONFIGS, body)
            self.counters["spec_creates"] += 1
            return obj
        except ApiError as exc:
            if not exc.conflict:
                raise
        # The agent created it first (to report what it has): write our part.
        obj = await self.kube.patch(NODE_DRIVER_CONFIGS, node.name, {"spec": spec})
        self.counters["spec_writes"] += 1
        return obj

    # --- status and events ---------------------------------------------------------------------

    def driver_states(self, driver: str) -> list[NodeDriverState] | None:
        """The driver on every live node; None while some node has not been planned for it yet."""
        states = []
        for name, plan in self.plans.items():
            decision = plan.decisions.get(driver)
            if decision is None:
                return None
            runs = reported_runs(self.configs.items.get(name), self.nodes.items.get(name))
            states.append(NodeDriverState(name, decision, runs.get(driver)))
        return states

    async def _update_statuses(self) -> None:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        for driver in self.sorted_drivers():
            states = self.driver_states(driver.name)
            if states is None:
                self._status_due.set()  # planned in the next batch; try again after it
                continue
            status = aggregate(driver, states, now)
            observed = {s.node: observe(s) for s in states}
            before = self._observed.get(driver.name)
            self._observed[driver.name] = observed
            if before is None and driver.name in self._seed_quietly:
                found = []  # first look after a restart: what is already so is no news
            else:
                found = transitions(before or {}, observed, driver.status.conditions, status.conditions)
            self._seed_quietly.discard(driver.name)
            for event in found:
                self._spawn(events.post(self.kube, driver, event, self.options.event_namespace))
                self.counters["events"] += 1
            if status.to_api() != driver.status.to_api():
                await self._write_status(driver, status.to_api())

    async def _write_status(self, driver: StorageDriverView, status: dict[str, Any]) -> None:
        try:
            obj = await self.kube.patch(
                STORAGE_DRIVERS, driver.name, {"status": status}, subresource="status"
            )
        except ApiError as exc:
            if not exc.not_found:
                log.warning("cannot write status", extra=fields(storage_driver=driver.name, error=str(exc)))
                self._status_due.set()
            return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("cannot write status", extra=fields(storage_driver=driver.name, error=str(exc)))
            self._status_due.set()
            return
        self.counters["status_writes"] += 1
        self.drivers.apply(obj)
        ready: dict[str, Any] = next(
            (c for c in status.get("conditions", []) if c.get("type") == "Ready"), {}
        )
        log.debug(
            "status written",
            extra=fields(storage_driver=driver.name, ready=ready.get("status"), reason=ready.get("reason")),
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- deletion ------------------------------------------------------------------------------

    def unloading_nodes(self, driver: str) -> list[str]:
        """Live nodes that still have `driver` in their spec or still run it. A node counts as
        done when it is gone, or when its agent stopped renewing its Lease (nothing there can
        report, and its driver hosts stop on their own when no agent adopts them)."""
        now = self.clock()
        remaining = []
        for name, config in self.configs.items.items():
            node = self.nodes.items.get(name)
            lease = self.leases.items.get(name)
            if node is None or node.deleting or lease is None or not lease.fresh(now):
                continue
            run = reported_runs(config, node).get(driver)
            if driver in config.rollout_keys or (run is not None and not run.stopped):
                remaining.append(name)
        return sorted(remaining)

    async def wait_unloaded(self, driver: str, timeout: float) -> list[str]:
        """Wait until `driver` (being deleted) is unloaded everywhere; the nodes still running it
        when `timeout` passes."""
        deadline = time.monotonic() + timeout
        await asyncio.wait_for(self.ready.wait(), timeout)
        while True:
            checked = time.monotonic()
            view = self.drivers.items.get(driver)
            remaining = self.unloading_nodes(driver)
            if (view is None or view.deleting) and not remaining:
                return []
            left = deadline - time.monotonic()
            if left <= 0:
                return remaining or ["(the operator has not seen the deletion yet)"]
            # A check looks at every node: with thousands of agents reporting one after another,
            # checking after each report would take the operator's whole time (5,000 nodes:
            # 40 ms a check). Checking takes at most a tenth of the time; a small cluster waits
            # microseconds.
            cost = time.monotonic() - checked
            progress = self._progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), min(left, 2.0))
            await asyncio.sleep(min(max(0.0, deadline - time.monotonic()), cost * CHECK_SHARE))

    # --- running -------------------------------------------------------------------------------

    async def _wait_for_work(self) -> None:
        timeout = TICK_SECONDS
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - self.clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    def _due_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, node = heapq.heappop(self._timers)
            self._dirty.add(node)

    async def _planner(self) -> None:
        pacing = Pacing(self.options.coalesce_seconds)
        while True:
            await self._wait_for_work()
            self.last_tick = self.clock()
            if self._dirty and (delay := pacing.delay(time.monotonic())):
                await asyncio.sleep(delay)  # a burst is on: gather the rest of it
            self._due_timers()
            if not self._dirty:
                continue
            started = time.monotonic()  # pacing measures durations: not the injectable wall clock
            batch, self._dirty = self._dirty, set()
            wrote, planning = await self._plan_batch(batch)
            pacing.planned(started, time.monotonic(), planning, wrote)

    async def _status_writer(self) -> None:
        while True:
            await self._status_due.wait()
            self._status_due.clear()
            await self._update_statuses()
            await asyncio.sleep(self.options.status_interval)

    async def _sync(self) -> None:
        started = time.monotonic()
        await asyncio.gather(*(informer.synced.wait() for informer in self.informers))
        if not self.options.list_pages:
            await asyncio.sleep(SETTLE_SECONDS)
        self._seed_quietly = set(self.drivers.items)
        self.ready.set()
        self.mark_all()
        self._dirty, batch = set(), set(self._dirty)
        await self._plan_batch(batch)
        self.ready_seconds = time.monotonic() - started
        writes = self.counters["spec_writes"] + self.counters["spec_creates"]
        log.info(
            "ready",
            extra=fields(
                seconds=round(self.ready_seconds, 3),
                nodes=len(self.plans),
                devices=len(self.devices.items),
                storage_drivers=len(self.drivers.items),
                spec_writes=writes,
            ),
        )

    async def run(self) -> None:
        """List and watch everything, then plan until cancelled."""
        async with asyncio.TaskGroup() as group:
            for informer in self.informers:
                group.create_task(informer.run(), name=f"watch {informer.kind}")
            await self._sync()
            group.create_task(self._planner(), name="planner")
            group.create_task(self._status_writer(), name="status")

    # --- health --------------------------------------------------------------------------------

    def metrics(self) -> Snapshot:
        return Snapshot(
            ready=self.ready.is_set(),
            ready_seconds=self.ready_seconds,
            counters=dict(self.counters),
            informers=[
                InformerStats(i.kind, len(i.items), i.lists, i.watches, i.events, i.synced.is_set())
                for i in self.informers
            ],
            drivers=[
                DriverStats(
                    name=d.name,
                    matching=d.status.matching_nodes,
                    desired=d.status.desired_nodes,
                    loaded=d.status.loaded_nodes,
                    failed=d.status.failed_nodes,
                    ready=any(c.type == "Ready" and c.status == "True" for c in d.status.conditions),
                )
                for d in sorted(self.drivers.items.values(), key=lambda d: d.name)
            ],
        )

    def health(self) -> dict[str, Any]:
        """For the liveness probe: raises when the planner has stopped ticking."""
        age = self.clock() - self.last_tick
        if self.ready.is_set() and age > STUCK_SECONDS:
            raise RuntimeError(f"the planner has not run for {age:.0f}s")
        return {
            "ready": self.ready.is_set(),
            "synced": {i.kind: i.synced.is_set() for i in self.informers},
            "errors": {i.kind: i.last_error for i in self.informers if i.last_error},
            **self.counters,
        }
