"""The agent's device discovery: keeps one NodeDevice per present device of the node.

    uevent -> coalescer (window) -> re-probe the named devices -> describe -> desired
          -> plan against the node's NodeDevices -> publisher writes only the differences

A full re-probe and re-list runs at start, every resync interval, after lost uevents, and
after the API server was unreachable (with backoff); since every pass compares the whole
desired state with the whole published state, a change seen during an outage is written once
the API server is back, and an event storm costs probes but no writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping

import aiohttp
from storage_driver_api.kube import NODES, ApiError, KubeClient
from storage_driver_api.logs import fields
from storage_driver_api.nodedevice import NodeDeviceSpec

from storage_driver_agent import metrics
from storage_driver_agent.config import AgentConfig
from storage_driver_agent.devices.coalesce import Backoff, Coalescer
from storage_driver_agent.devices.describe import describe_all
from storage_driver_agent.devices.diff import Plan, desired, plan
from storage_driver_agent.devices.facts import RawDevice
from storage_driver_agent.devices.monitor import UeventMonitor, pick_source
from storage_driver_agent.devices.options import Options
from storage_driver_agent.devices.probe import Probe
from storage_driver_agent.devices.publisher import NodeNotFound, Publisher
from storage_driver_agent.devices.sysfs import HostRoot
from storage_driver_agent.kubewatch import Obj, list_watch

__all__ = ["DeviceAgent", "DeviceDiscoveryError", "Options", "run"]

log = logging.getLogger("storage_driver_agent.devices")

MAX_PASSES = 3  # re-list and re-plan this often in one sync when the view turned out stale
DELETION_RECHECK = 1.0  # seconds: a device is back while its old NodeDevice is still being deleted
TRANSIENT = (ApiError, aiohttp.ClientError, TimeoutError, OSError, NodeNotFound)


class DeviceDiscoveryError(RuntimeError):
    """Device discovery cannot run as configured."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class DeviceAgent:
    def __init__(
        self,
        node_name: str,
        options: Options,
        kube: KubeClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        synced: asyncio.Event | None = None,
    ):
        self.node_name = node_name
        self.options = options
        self.kube = kube
        self.clock = clock
        self.probe = Probe(HostRoot(options.host_root))
        self.publisher = Publisher(kube, node_name)
        self.coalescer = Coalescer(options.coalesce_window)
        self.backoff = Backoff()
        self.devices: dict[str, RawDevice] = {}
        self.transitions: dict[str, dt.datetime] = {}  # NodeDevice name -> when its device came or went
        self.published: set[str] | None = None  # names desired at the last pass
        self.wake = asyncio.Event()
        self.dirty = True
        self.retry_at: float | None = None
        self.retention_at: float | None = None
        self.next_resync = 0.0
        self.failing_since: float | None = None
        self.uevents = 0  # received, for tests and benchmarks
        self.synced = synced or asyncio.Event()  # set once the node's devices were published

    # --- uevents ---------------------------------------------------------------------------

    def on_uevent(self, action: str, name: str) -> None:
        log.debug("uevent", extra=fields(action=action, device=name))
        self.uevents += 1
        self.coalescer.add(name, self.clock())
        self.wake.set()

    def on_lost_uevents(self) -> None:
        self.coalescer.lost_events(self.clock())
        self.wake.set()

    # --- the Node ----------------------------------------------------------------------------

    def on_node(self, node: Obj | None) -> None:
        """The Node now (None: there is none). A Node deleted, or deleted and created again with
        the same name, had the garbage collector delete the NodeDevices the old one owned, behind
        the agent's back: list again and publish for the new one at once (no backoff left over)."""
        uid = str(node["metadata"]["uid"]) if node is not None else None
        owner = self.publisher.owner
        if owner is None or uid == owner.uid:
            if uid is not None and self.retry_at is not None:
                self.retry_at = None  # the Node we waited for exists now
                self.backoff.reset()
                self.wake.set()
            return
        what = "the Node was created again" if uid is not None else "the Node is gone"
        log.info(f"{what}; publishing its devices again", extra=fields(node=self.node_name, uid=uid))
        self.publisher.stale = True
        self.dirty = True
        if uid is not None:
            self.retry_at = None
            self.backoff.reset()
        self.wake.set()

    async def follow_node(self, stop: asyncio.Event) -> None:
        def synced(items: list[Obj]) -> None:
            self.on_node(items[0] if items else None)

        def changed(kind: str, obj: Obj) -> None:
            self.on_node(None if kind == "DELETED" else obj)

        await list_watch(
            self.kube,
            NODES,
            on_sync=synced,
            on_event=changed,
            stop=stop,
            field_selector=f"metadata.name={self.node_name}",
        )

    # --- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        block_class = self.options.host_root / "sys/class/block"
        if not block_class.is_dir():
            # Probing an empty tree would mark every device of the node absent, then delete them.
            message = f"{block_class} is not a directory: --host-root must be where the host's / is mounted"
            log.error("device discovery cannot start", extra=fields(error=message))
            raise DeviceDiscoveryError(message)
        source = pick_source(self.options.uevent_source, self.options.host_root)
        monitor = UeventMonitor(source, self.on_uevent, self.on_lost_uevents)
        try:
            monitor.start(asyncio.get_running_loop())
        except OSError as exc:
            log.error(
                "cannot follow uevents; devices are only refreshed every resync interval",
                extra=fields(source=source, error=str(exc), resync_interval_s=self.options.resync_interval),
            )
        relay = asyncio.create_task(self._relay(stop))
        node_watch = asyncio.create_task(self.follow_node(stop))
        try:
            # The monitor is open before the first probe: nothing that happens in between is missed.
            self.devices = self.probe.all()
            self.next_resync = self.clock() + self.options.resync_interval
            log.info(
                "device discovery started",
                extra=fields(
                    node=self.node_name,
                    devices=len(self.devices),
                    uevents=source,
                    host_root=str(self.options.host_root),
                ),
            )
            while not stop.is_set():
                # A pass may wait on an unreachable API server for a while; shutting down must not.
                step = asyncio.create_task(self.step())
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not step.done():
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await step
                    break
                step.result()
                if stop.is_set():
                    break
                await self._wait()
        finally:
            relay.cancel()
            node_watch.cancel()
            monitor.close()

    async def _relay(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.wake.set()

    async def step(self) -> None:
        """Re-probe what is due, then publish if anything may differ (unless backing off)."""
        now = self.clock()
        batch = self.coalescer.take(now)
        probed = batch is not None or now >= self.next_resync
        if batch is not None:
            names, full = batch
            if full:
                self.devices = self.probe.all()
            else:
                self._merge(self.probe.some(names))
            self.dirty = True
        if now >= self.next_resync:
            log.debug("periodic resync")
            self.devices = self.probe.all()
            self.publisher.stale = True
            self.dirty = True
            self.next_resync = now + self.options.resync_interval
        if self.retention_at is not None and now >= self.retention_at:
            self.retention_at = None
            self.dirty = True
        syncing = self.dirty and (self.retry_at is None or now >= self.retry_at)
        if probed and self.published is not None and (not syncing or self.publisher.stale):
            # Note arrivals and removals now, not when the (maybe unreachable) API server is next
            # reached, so that lastTransitionTime says when the device really came or went. (A
            # sync that plans at once, with no request before, notes them itself.)
            self._desired()
        if syncing:
            await self.sync()

    def _merge(self, probed: Mapping[str, RawDevice | None]) -> None:
        gone = [name for name, device in probed.items() if device is None]
        for name, device in probed.items():
            if device is None:
                self.devices.pop(name, None)
            else:
                self.devices[name] = device
        # A vanished disk takes its partitions along, even if their own events were lost.
        orphans = [
            name
            for name, device in self.devices.items()
            if (disk := device.ancestor("block")) is not None and disk.name in gone
        ]
        if orphans:
            self._merge(self.probe.some(orphans))

    async def sync(self) -> None:
        """Make the node's NodeDevices match the devices; back off when the API fails."""
        try:
            for _ in range(MAX_PASSES):
                if self.publisher.stale:
                    await self.publisher.refresh()
                outcome = self._plan()
                await self.publisher.apply(outcome.actions)
                if not self.publisher.stale:
                    break
        except TRANSIENT as exc:
            self.publisher.stale = True
            delay = self.backoff.next_delay()
            self.retry_at = self.clock() + delay
            if self.failing_since is None:
                self.failing_since = self.clock()
                log.warning(
                    "cannot publish devices; retrying with backoff",
                    extra=fields(error=str(exc) or type(exc).__name__, retry_in_s=round(delay, 2)),
                )
            else:
                log.debug(
                    "still cannot publish devices", extra=fields(error=str(exc), retry_in_s=round(delay, 2))
                )
            return
        if self.failing_since is not None:
            log.info(
                "publishing devices again",
                extra=fields(after_s=round(self.clock() - self.failing_since, 1)),
            )
            self.failing_since = None
        self.backoff.reset()
        self.retry_at = None
        if self.publisher.stale or outcome.waiting_for_deletion:
            self.dirty = True
            self.publisher.stale = True
            self.retry_at = self.clock() + DELETION_RECHECK
        else:
            self.dirty = False
            self.transitions.clear()
            self.synced.set()
        wall = utcnow()
        self.retention_at = (
            self.clock() + max(0.0, (outcome.wake_at - wall).total_seconds()) if outcome.wake_at else None
        )

    def _desired(self) -> dict[str, NodeDeviceSpec]:
        """The specs to publish, by name; records when names appeared or vanished."""
        want = desired(
            describe_all(self.devices, self.node_name),
            self.publisher.objects,
            self.node_name,
            self.options.filter,
        )
        names = set(want)
        if self.published is not None:
            now = utcnow()
            for name in names ^ self.published:
                self.transitions[name] = now  # the latest arrival or removal
        self.published = names
        return want

    def _plan(self) -> Plan:
        owner = self.publisher.owner
        assert owner is not None  # refresh() sets it or raises NodeNotFound
        want = self._desired()
        return plan(
            want,
            self.publisher.objects,
            owner,
            now=utcnow(),
            retention=dt.timedelta(seconds=self.options.retention),
            transitions=self.transitions,
        )

    async def _wait(self) -> None:
        deadlines = [self.next_resync]
        if self.coalescer.due_at is not None:
            deadlines.append(self.coalescer.due_at)
        if self.retention_at is not None:
            deadlines.append(self.retention_at)
        if self.dirty:
            deadlines.append(self.retry_at if self.retry_at is not None else self.clock())
        timeout = max(0.0, min(deadlines) - self.clock())
        if timeout == 0:
            await asyncio.sleep(0)  # let the loop deliver what is pending
            return
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)


async def run(
    config: AgentConfig, options: Options, kube: KubeClient, stop: asyncio.Event, ready: asyncio.Event
) -> None:
    agent = DeviceAgent(config.node_name, options, kube, synced=ready)
    # A lambda: refresh() replaces the publisher's dict, so its bound method would go stale.
    metrics.STATE.devices = lambda: agent.publisher.objects.values()  # noqa: PLW0108
    metrics.STATE.uevents = lambda: agent.uevents
    metrics.STATE.device_writes = lambda: agent.publisher.writes
    await agent.run(stop)
