"""The per-node reconcile loop: makes the running driver hosts match NodeDriverConfig.spec.

Inputs arrive as method calls (`set_spec`, `set_devices`, `inventory_changed`, a host's
connection closing) and each wakes the loop at once; the loop asks the state machine for every
driver's next action and starts it, at most one per driver. Actions run concurrently across
drivers; each records its outcome in the driver's Record and wakes the loop again. Timers
(backoff) are deadlines the loop sleeps towards; nothing polls.

The work itself lives beside it: hosts.py starts, stops and adopts host processes, binding.py
attaches and detaches devices, failures.py records what a failure means for the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from storage_driver_api.logs import fields
from storage_driver_sdk.protocol import Op

from storage_driver_agent import metrics
from storage_driver_agent.drivers import failures, inuse
from storage_driver_agent.drivers.binding import attach_failed, bind, device_message
from storage_driver_agent.drivers.hostclient import HostCallError, HostConnection, HostGone
from storage_driver_agent.drivers.hosts import (
    HOST_FORKED,
    Adopted,
    HostLoadFailed,
    HostRunner,
    forked_message,
)
from storage_driver_agent.drivers.inventory import Inventory
from storage_driver_agent.drivers.launcher import HostProcess, Launcher, LauncherError
from storage_driver_agent.drivers.liveness import Healthy, Hung, Outcome, Unhealthy, judge
from storage_driver_agent.drivers.runtime import EventSink, Record, RuntimeSettings
from storage_driver_agent.drivers.slots import LeftHost, left_hosts
from storage_driver_agent.drivers.sources import SourceFetcher
from storage_driver_agent.drivers.statemachine import (
    Action,
    Artifact,
    Bind,
    Desired,
    DriverState,
    Fetch,
    Host,
    Idle,
    Refusal,
    Start,
    Stop,
    StopReason,
    Wait,
    admitted,
    forget_host,
    next_action,
)
from storage_driver_agent.drivers.status import DriverReport
from storage_driver_agent.drivers.usage import UsageReader
from storage_driver_agent.stopping import wait_or_stop

__all__ = ["NodeReconciler", "RuntimeSettings"]

log = logging.getLogger(__name__)


class NodeReconciler:
    def __init__(
        self,
        settings: RuntimeSettings,
        launcher: Launcher,
        inventory: Inventory,
        fetcher: SourceFetcher,
        events: EventSink,
        *,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        usage: UsageReader | None = None,
    ):
        self.settings = settings
        self.launcher = launcher
        self.inventory = inventory
        self.fetcher = fetcher
        self.events = events
        self.on_change = on_change
        self.clock = clock
        self.wall = wall
        self.hosts = HostRunner(settings, launcher, clock, wall)
        self.usage = usage or UsageReader(Path("/proc/self/mountinfo"))
        self.records: dict[str, Record] = {}
        self.devices: dict[str, Mapping[str, Any]] = {}  # present NodeDevices: name -> spec
        self.generation: int | None = None
        self.wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.loads = 0  # hosts started (a measure for "nothing loaded twice")

    # --- inputs ------------------------------------------------------------------------------

    def _record(self, name: str) -> Record:
        if name not in self.records:
            self.records[name] = Record(DriverState(name))
            metrics.driver_added(name)
        return self.records[name]

    def set_spec(self, drivers: list[Desired], generation: int | None) -> None:
        wanted = {d.name: d for d in drivers}
        for name, desired in wanted.items():
            record = self._record(name)
            if record.state.desired != desired:
                # A changed spec gets a fresh start: no backoff left from the previous one.
                record.state = replace(record.state, desired=desired, failure=None, attach_retry={})
                record.attach_attempts.clear()
                record.announced = None
            record.grace = desired.grace_seconds
            record.force_unload = desired.force_unload
        for name, record in self.records.items():
            if name not in wanted and record.state.desired is not None:
                record.state = replace(record.state, desired=None)
        self.generation = generation
        self.wake.set()

    def set_devices(self, devices: Mapping[str, Mapping[str, Any]]) -> None:
        self.devices = dict(devices)
        self.wake.set()

    def inventory_changed(self) -> None:
        self.wake.set()

    # --- the loop ----------------------------------------------------------------------------

    def reports(self) -> list[DriverReport]:
        return [
            DriverReport(
                r.state, r.in_flight, r.restarts, r.last_error, r.unhealthy, dict(r.facts), dict(r.blocked)
            )
            for _, r in sorted(self.records.items())
        ]

    @property
    def present(self) -> frozenset[str]:
        return frozenset(self.devices)

    def step(self) -> float | None:
        """Start every action that is due; returns the earliest deadline to wake up for."""
        now = self.clock()
        desired = [r.state.desired for r in self.records.values() if r.state.desired is not None]
        within = admitted(desired, self.settings.max_loaded_drivers)
        deadline: float | None = None
        for name, record in list(self.records.items()):
            state = record.state
            fits = state.desired is None or name in within
            if not fits and state.admitted:
                failures.refused(
                    record,
                    self.events,
                    "CapacityExceeded",
                    f"the node already runs maxLoadedDrivers={self.settings.max_loaded_drivers} drivers of higher priority",
                )
            file_sha = self.inventory.sha256(state.desired.source.path) if state.desired else None
            record.state = state = replace(state, admitted=fits, file_sha=file_sha)
            if record.reaping:
                continue  # _report_crash wakes the loop when the crashed host's tree is gone
            action = self._unless_in_use(record, next_action(state, self.present, now), now)
            if isinstance(action, Wait):
                deadline = action.until if deadline is None else min(deadline, action.until)
            elif isinstance(action, Idle):
                if state.desired is None and state.host is None and not state.busy:
                    del self.records[name]
            else:
                self._launch(record, action)
        return deadline

    def _unless_in_use(self, record: Record, action: Action, now: float) -> Action:
        """`action`, or what of it may run while devices it would detach are in use."""
        if record.state.busy:
            return action  # nothing starts now; what waits stays as it was
        busy = inuse.detaching(action, record.state)
        in_use = self.usage.in_use(busy, self.devices) if busy else {}
        force = record.force_unload
        guarded = inuse.guard(
            action, record.state, in_use, force=force, now=now, recheck=self.settings.in_use_recheck
        )
        if guarded.forced:
            failures.forced(record, self.events, guarded.forced)
        else:
            failures.blocked_changed(record, self.events, guarded.blocked, unloading=isinstance(action, Stop))
        return guarded.action

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            deadline = self.step()
            self.on_change()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            await wait_or_stop(self.wake, stop, timeout)

    async def shutdown(self) -> None:
        """Leave every host running (the next agent adopts them); stop talking to them."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for record in self.records.values():
            if record.conn is not None:
                await record.conn.close()
                record.conn = None

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _launch(self, record: Record, action: Action) -> None:
        record.in_flight = action
        record.state = replace(record.state, busy=True)
        self._background(self._perform(record, action), f"{type(action).__name__} {record.state.name}")

    async def _perform(self, record: Record, action: Action) -> None:
        try:
            if isinstance(action, Fetch):
                await self._fetch(record)
            elif isinstance(action, Start):
                await self._start(record, action)
            elif isinstance(action, Bind):
                timeout = self.settings.liveness.call_timeout
                hung = await bind(
                    record, action, self.devices, self.clock, self.settings.backoff, timeout=timeout
                )
                if hung is not None:
                    await self._judge(record, hung)
            elif isinstance(action, Stop):
                await self._stop(record, action)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "driver action failed", extra=fields(driver=record.state.name, action=type(action).__name__)
            )
            failures.refused(record, self.events, "InternalError", f"{type(action).__name__} failed: {exc!r}")
        finally:
            record.in_flight = None
            record.state = replace(record.state, busy=False)
            self.wake.set()

    # --- actions -----------------------------------------------------------------------------

    async def _fetch(self, record: Record) -> None:
        desired = record.state.desired
        assert desired is not None
        result = await self.fetcher.fetch(desired)
        file_sha = self.inventory.sha256(desired.source.path)
        record.state = replace(record.state, artifact=result, file_sha=file_sha)
        if isinstance(result, Refusal):
            failures.refused(record, self.events, result.reason, result.message)

    async def _start(self, record: Record, action: Start) -> None:
        state = record.state
        desired, artifact = state.desired, state.artifact
        assert desired is not None and isinstance(artifact, Artifact)
        restarts = record.restarts + (1 if record.crashed else 0)
        started_mono, started_wall = self.clock(), self.wall()
        if record.crashed:
            metrics.RESTARTS.labels(record.state.name).inc()
        try:
            pid = await self.hosts.spawn(desired, artifact, restarts)
            self.loads += 1
            loaded = await self.hosts.load(
                desired,
                pid,
                lambda: [device_message(self.devices, d) for d in sorted(action.devices & self.present)],
                started_mono,
                started_wall,
            )
        except HostLoadFailed as exc:
            metrics.LOADS.labels(record.state.name, "failed").inc()
            metrics.LOAD_SECONDS.labels("failed").observe(self.clock() - started_mono)
            failures.load_failed(
                record,
                self.events,
                exc.reason,
                exc.message,
                now=self.clock(),
                policy=self.settings.backoff,
                pid=exc.pid,
            )
            return
        metrics.LOADS.labels(record.state.name, "loaded").inc()
        metrics.LOAD_SECONDS.labels("loaded").observe(self.clock() - started_mono)
        attached = loaded.attached
        record.restarts, record.crashed = restarts, False
        record.conn = loaded.conn
        record.started_mono = started_mono
        record.facts = {name: facts for name, facts in attached.items() if isinstance(facts, Mapping)}
        record.unhealthy = None
        record.strikes = 0
        record.state = replace(
            record.state,
            host=Host(
                pid=loaded.pid,
                driver_name=desired.driver_name,
                version=desired.version,
                sha256=artifact.sha256,
                config_json=desired.config_json,
                attached=frozenset(attached),
                started_at=started_wall,
            ),
            attach_retry={},
        )
        record.attach_attempts.clear()
        conn = loaded.conn
        conn.on_close(lambda closed: self._host_closed(record, closed))
        attach_failed(record, loaded.failed, self.clock(), self.settings.backoff)
        message = f"{desired.name}: loaded {desired.driver_name} {desired.version} (pid {loaded.pid})"
        if attached:
            message += f", attached {', '.join(sorted(attached))}"
        self.events.emit("Loaded", message)
        log.info(
            "driver loaded",
            extra=fields(
                driver=desired.name, pid=loaded.pid, version=desired.version, devices=sorted(attached)
            ),
        )

    async def _stop(self, record: Record, action: Stop) -> None:
        host, conn = record.state.host, record.conn
        if host is None:
            return
        name = record.state.name
        slot = self.hosts.slot(name)
        process = HostProcess(host.pid, slot.socket)
        grace = float(record.grace)
        errors: list[str] = []
        started = self.clock()
        if conn is not None and not conn.closed:
            try:
                result = await conn.call(Op.UNLOAD, timeout=grace)
                errors = [str(e) for e in result.get("errors") or []]
            except HostCallError as exc:
                errors = [str(exc)]
            except (HostGone, TimeoutError):
                pass
        ended = await self.hosts.stop(process, conn, max(0.0, grace - (self.clock() - started)))
        slot.remove_files()
        record.conn = None
        record.facts = {}
        record.unhealthy = None
        record.state = forget_host(record.state)
        took = self.clock() - started
        what = {StopReason.RELOAD: "to reload it", StopReason.CAPACITY: "over maxLoadedDrivers"}.get(
            action.reason, f"({action.reason.value})"
        )
        unloaded = "failed" if ended != "stopped" or errors else "unloaded"
        metrics.UNLOADS.labels(name, unloaded).inc()
        metrics.UNLOAD_SECONDS.labels(unloaded).observe(took)
        if ended != "stopped" or errors:
            detail = "; ".join(errors) if errors else ""
            if ended != "stopped":
                detail = (
                    f"stop() did not finish within the grace period of {grace:.0f}s; the host was {ended}"
                    + (f"; {detail}" if detail else "")
                )
            record.error("UnloadFailed", detail)
            self.events.emit("UnloadFailed", f"{name}: unloaded {what}: {detail}", warning=True)
            log.warning(
                "driver unloaded with errors",
                extra=fields(driver=name, pid=host.pid, how=ended, error=detail),
            )
        else:
            self.events.emit(
                "Unloaded", f"{name}: unloaded {host.driver_name} {host.version} (pid {host.pid}) {what}"
            )
            log.info(
                "driver unloaded",
                extra=fields(driver=name, pid=host.pid, reason=action.reason.value, seconds=round(took, 3)),
            )

    # --- crashes -----------------------------------------------------------------------------

    def _host_closed(self, record: Record, conn: HostConnection) -> None:
        """The connection to a host ended. During a Stop that is expected; otherwise it crashed."""
        if record.conn is not conn:
            return
        record.conn = None
        host = record.state.host
        if isinstance(record.in_flight, Stop) or host is None:
            return
        failures.crashed(record, now=self.clock(), policy=self.settings.backoff)
        record.reaping = True
        self.wake.set()
        self._background(self._report_crash(record, host), f"crash {record.state.name}")

    async def _report_crash(self, record: Record, host: Host) -> None:
        slot = self.hosts.slot(record.state.name)
        process = HostProcess(host.pid, slot.socket)
        try:
            code = await self.hosts.exit_code(process)
            if await self.launcher.alive(process):
                # The connection broke but the process lives on (it hangs): it cannot be managed.
                await self.hosts.terminate(process, None, 0.0)
            await self.hosts.end_tree(process)  # before a restart can start a second copy beside them
            slot.remove_files()
            failures.report_crash(record, self.events, host.pid, code, now=self.clock())
        finally:
            record.reaping = False
            self.wake.set()

    # --- health ------------------------------------------------------------------------------

    async def check_health(self) -> None:
        """Ask every loaded driver's health(), all at once (a hung host delays only itself)."""
        await asyncio.gather(*(self._check_one(r) for r in list(self.records.values())))

    async def _check_one(self, record: Record) -> None:
        conn = record.conn
        if conn is None or record.in_flight is not None or record.state.host is None:
            return
        timeout = self.settings.liveness.call_timeout
        outcome: Outcome
        try:
            result = await conn.call(Op.HEALTH, timeout=timeout)
            healthy = result.get("healthy", True)
            outcome = Healthy() if healthy else Unhealthy(str(result.get("message") or "unhealthy"))
        except HostCallError as exc:
            outcome = Unhealthy(str(exc))
        except TimeoutError:
            outcome = Hung("health()", timeout)
        except HostGone:
            return
        checked = {Healthy: "healthy", Unhealthy: "unhealthy", Hung: "hung"}[type(outcome)]
        metrics.HEALTH_CHECKS.labels(record.state.name, checked).inc()
        host = record.state.host
        if record.conn is not conn or host is None:
            return
        process = HostProcess(host.pid, self.hosts.slot(record.state.name).socket)
        if not isinstance(outcome, Hung) and not await self.launcher.alive(process):
            await self._forked_away(record, process)
            return
        await self._judge(record, outcome)

    async def _forked_away(self, record: Record, process: HostProcess) -> None:
        """The host is gone, yet its connection answers: the driver forked and the host exited.
        Ending the tree ends the copy too; its connection closing takes the crash path."""
        if record.killed_for is not None:
            return
        record.killed_for = (HOST_FORKED, forked_message(process.pid))
        log.warning(
            "a driver host exited and a process it forked answered for it; ending them",
            extra=fields(driver=record.state.name, pid=process.pid),
        )
        await self.hosts.end_tree(process)

    async def _judge(self, record: Record, outcome: Outcome) -> None:
        """Act on a timed call's outcome: record it, and restart the host if liveness says so."""
        unhealthy = None if isinstance(outcome, Healthy) else outcome.message
        if failures.health_changed(record, unhealthy):
            self.wake.set()
        verdict = judge(outcome, record.strikes, self.settings.liveness)
        record.strikes = verdict.strikes
        host = record.state.host
        if not verdict.restart or host is None or record.conn is None or record.killed_for is not None:
            return
        # Killed, not stopped: a host stuck in a call cannot run stop(). The connection closing
        # then takes the crash path (backoff, end of the process tree, restart), with this reason.
        record.killed_for = (verdict.reason, verdict.message)
        log.warning(
            "restarting a driver host",
            extra=fields(driver=record.state.name, pid=host.pid, reason=verdict.reason),
        )
        with contextlib.suppress(LauncherError):
            await self.launcher.signal(
                HostProcess(host.pid, self.hosts.slot(record.state.name).socket), signal.SIGKILL
            )

    async def health_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.health_interval)
            if not stop.is_set():
                await self.check_health()

    # --- adoption ----------------------------------------------------------------------------

    async def adopt(self) -> None:
        """Take over the hosts a previous agent left running (their state files and sockets)."""
        hosts_dir = self.settings.hosts_dir
        hosts_dir.mkdir(parents=True, exist_ok=True)
        for left in left_hosts(hosts_dir):
            if not isinstance(left, LeftHost):
                log.warning(
                    "unreadable host state file; removing it", extra=fields(file=str(left.state_file))
                )
                left.remove_files()
            elif left.info.get("bootId") != self.settings.boot_id:
                # From before the node rebooted: nothing of it can run any more; should a host
                # still serve that socket (a simulated reboot), it goes, so no driver runs twice.
                process = HostProcess(left.pid, left.slot.socket)
                if await self.launcher.alive(process):
                    await self.hosts.stop(process, None, 0.0)
                left.slot.remove_files()
            elif (adopted := await self.hosts.adopt(left)) is not None:
                self._adopted(adopted)

    def _adopted(self, adopted: Adopted) -> None:
        hello, conn, process = adopted.hello, adopted.conn, adopted.process
        record = self._record(str(hello["name"]))
        facts = hello.get("facts") or {}
        record.conn = conn
        record.restarts = int(hello.get("restarts", 0))
        record.facts = {k: v for k, v in facts.items() if isinstance(v, Mapping)}
        record.started_mono = self.clock() - max(
            0.0, self.wall() - float(hello.get("startedAt", self.wall()))
        )
        record.state = replace(
            record.state,
            host=Host(
                pid=process.pid,
                driver_name=str(hello["driverName"]),
                version=str(hello["version"]),
                sha256=str(hello["sha256"]),
                config_json=str(hello.get("configJson", "")),
                attached=frozenset(str(d) for d in hello.get("attached") or []),
                started_at=float(hello.get("startedAt", self.wall())),
            ),
        )
        conn.on_close(lambda closed: self._host_closed(record, closed))
        log.info(
            "adopted a running driver host",
            extra=fields(
                driver=record.state.name,
                pid=process.pid,
                version=hello.get("version"),
                devices=hello.get("attached"),
            ),
        )
