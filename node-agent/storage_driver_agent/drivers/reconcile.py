"""The per-node reconcile loop: makes the running driver hosts match NodeDriverConfig.spec.

Inputs arrive as method calls (`set_spec`, `set_devices`, `inventory_changed`, a host's
connection closing) and each wakes the loop at once; the loop asks the state machine for every
driver's next action and starts it, at most one per driver. Actions run concurrently across
drivers; each records its outcome in the driver's Record and wakes the loop again. Timers
(backoff) are deadlines the loop sleeps towards; nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol

from storage_driver_api.constants import short_hash
from storage_driver_api.logs import fields
from storage_driver_sdk.protocol import PROTOCOL_VERSION, Op

from storage_driver_agent.drivers.host import HOST_MODULE
from storage_driver_agent.drivers.hostclient import HostCallError, HostConnection, HostGone
from storage_driver_agent.drivers.inventory import Inventory
from storage_driver_agent.drivers.launcher import HOSTS_DIR, HostProcess, Launcher, LauncherError
from storage_driver_agent.drivers.sources import SourceFetcher
from storage_driver_agent.drivers.statemachine import (
    Action,
    Artifact,
    BackoffPolicy,
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
    next_failure,
)
from storage_driver_agent.drivers.status import DriverReport, LastError
from storage_driver_agent.stopping import wait_or_stop

log = logging.getLogger(__name__)

KILL_WAIT: Final = 5.0
HEALTH_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class RuntimeSettings:
    state_dir: Path
    driver_dir: Path
    boot_id: str = ""
    max_loaded_drivers: int = 100
    memory_limit: int = 0
    adoption_window: float = 300.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    load_timeout: float = 60.0
    terminate_timeout: float = 5.0
    health_interval: float = 30.0
    python: str = sys.executable

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / HOSTS_DIR


@dataclass(frozen=True)
class HostSlot:
    """Where one driver's host keeps its socket, state file and log."""

    socket: Path
    state_file: Path
    log: Path

    @classmethod
    def for_driver(cls, hosts_dir: Path, name: str) -> HostSlot:
        # Unix socket paths are limited to 107 bytes: a short readable prefix plus a hash.
        slug = re.sub(r"[^a-z0-9-]", "-", name.lower())[:24].strip("-") or "driver"
        base = hosts_dir / f"{slug}-{short_hash(name, 10)}"
        return cls(base.with_suffix(".sock"), base.with_suffix(".json"), base.with_suffix(".log"))


class EventSink(Protocol):
    def emit(self, reason: str, message: str, *, warning: bool = False) -> None: ...


@dataclass
class Record:
    """One driver: its decision state plus what the agent knows beyond the decision."""

    state: DriverState
    in_flight: Action | None = None
    conn: HostConnection | None = None
    restarts: int = 0
    last_error: LastError | None = None
    unhealthy: str | None = None
    facts: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    grace: int = 5
    started_mono: float | None = None
    announced: tuple[str, str] | None = None  # the last refusal announced, so retries do not repeat it
    attach_attempts: dict[str, int] = field(default_factory=dict)
    crashed: bool = False  # the next start is a restart after a crash


def error_reason(error_type: str) -> str:
    return {
        "MemoryError": "MemoryLimitExceeded",
        "ChecksumMismatch": "ChecksumMismatch",
        "ImportFailed": "ImportFailed",
        "ImportError": "ImportFailed",
        "ModuleNotFoundError": "ImportFailed",
        "SyntaxError": "ImportFailed",
    }.get(error_type, "StartFailed")


def describe_exit(code: int | None) -> str:
    if code is None:
        return "the driver host exited unexpectedly"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the driver host was killed by {name}"
    return f"the driver host exited with code {code}"


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
    ):
        self.settings = settings
        self.launcher = launcher
        self.inventory = inventory
        self.fetcher = fetcher
        self.events = events
        self.on_change = on_change
        self.clock = clock
        self.wall = wall
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
            DriverReport(r.state, r.in_flight, r.restarts, r.last_error, r.unhealthy, dict(r.facts))
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
                self._fail(
                    record,
                    "CapacityExceeded",
                    f"the node already runs maxLoadedDrivers={self.settings.max_loaded_drivers} drivers of higher priority",
                )
            file_sha = self.inventory.sha256(state.desired.source.path) if state.desired else None
            record.state = state = replace(state, admitted=fits, file_sha=file_sha)
            action = next_action(state, self.present, now)
            if isinstance(action, Wait):
                deadline = action.until if deadline is None else min(deadline, action.until)
            elif isinstance(action, Idle):
                if state.desired is None and state.host is None and not state.busy:
                    del self.records[name]
            else:
                self._launch(record, action)
        return deadline

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

    def _launch(self, record: Record, action: Action) -> None:
        record.in_flight = action
        record.state = replace(record.state, busy=True)
        task = asyncio.create_task(
            self._perform(record, action), name=f"{type(action).__name__} {record.state.name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _perform(self, record: Record, action: Action) -> None:
        try:
            if isinstance(action, Fetch):
                await self._fetch(record)
            elif isinstance(action, Start):
                await self._start(record, action)
            elif isinstance(action, Bind):
                await self._bind(record, action)
            elif isinstance(action, Stop):
                await self._stop(record, action)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "driver action failed", extra=fields(driver=record.state.name, action=type(action).__name__)
            )
            self._fail(record, "InternalError", f"{type(action).__name__} failed: {exc!r}")
        finally:
            record.in_flight = None
            record.state = replace(record.state, busy=False)
            self.wake.set()

    # --- bookkeeping -------------------------------------------------------------------------

    def _fail(self, record: Record, reason: str, message: str) -> None:
        record.last_error = LastError(reason, message, dt.datetime.now(dt.UTC).replace(microsecond=0))
        if record.announced != (reason, message):
            record.announced = (reason, message)
            self.events.emit("LoadFailed", f"{record.state.name}: {reason}: {message}", warning=True)
            log.warning(
                "driver not loaded", extra=fields(driver=record.state.name, reason=reason, error=message)
            )

    def _device_message(self, name: str) -> dict[str, Any]:
        return {"name": name, "spec": dict(self.devices[name])}

    def _host_argv(self, desired: Desired, artifact: Artifact, slot: HostSlot, restarts: int) -> list[str]:
        return [
            self.settings.python,
            "-m",
            HOST_MODULE,
            "--name",
            desired.name,
            "--driver-name",
            desired.driver_name,
            "--version",
            desired.version,
            "--sha256",
            artifact.sha256,
            "--path",
            str(self.settings.driver_dir / desired.source.path),
            "--class-name",
            artifact.class_name,
            "--module",
            artifact.module,
            "--socket",
            str(slot.socket),
            "--state-file",
            str(slot.state_file),
            "--boot-id",
            self.settings.boot_id,
            "--adoption-window",
            str(self.settings.adoption_window),
            "--memory-limit",
            str(self.settings.memory_limit),
            "--restarts",
            str(restarts),
        ]

    def _slot(self, name: str) -> HostSlot:
        return HostSlot.for_driver(self.settings.hosts_dir, name)

    async def _wait_exited(self, process: HostProcess, conn: HostConnection | None, timeout: float) -> bool:
        """Wait until the host process is gone; True if it went within the timeout."""
        deadline = self.clock() + timeout
        if conn is not None and not conn.closed:
            await conn.wait_closed(max(0.0, deadline - self.clock()))
        return await self.launcher.wait_exited(process, max(0.0, deadline - self.clock()))

    async def _terminate(self, process: HostProcess, conn: HostConnection | None, grace: float) -> str:
        """Make sure the host is gone: wait `grace`, then SIGTERM, then SIGKILL. Returns how it ended."""
        if await self._wait_exited(process, conn, grace):
            return "stopped"
        await self.launcher.signal(process, signal.SIGTERM)
        if await self._wait_exited(process, conn, self.settings.terminate_timeout):
            return "terminated"
        await self.launcher.signal(process, signal.SIGKILL)
        await self._wait_exited(process, conn, KILL_WAIT)
        return "killed"

    def _remove_slot_files(self, slot: HostSlot) -> None:
        for path in (slot.socket, slot.state_file):
            with contextlib.suppress(OSError):
                path.unlink()

    # --- actions -----------------------------------------------------------------------------

    async def _fetch(self, record: Record) -> None:
        desired = record.state.desired
        assert desired is not None
        result = await self.fetcher.fetch(desired)
        file_sha = self.inventory.sha256(desired.source.path)
        record.state = replace(record.state, artifact=result, file_sha=file_sha)
        if isinstance(result, Refusal):
            self._fail(record, result.reason, result.message)

    async def _start(self, record: Record, action: Start) -> None:
        state = record.state
        desired, artifact = state.desired, state.artifact
        assert desired is not None and isinstance(artifact, Artifact)
        slot = self._slot(desired.name)
        slot.socket.parent.mkdir(parents=True, exist_ok=True)
        restarts = record.restarts + (1 if record.crashed else 0)
        argv = self._host_argv(desired, artifact, slot, restarts)
        started_mono, started_wall = self.clock(), self.wall()
        try:
            pid = await self.launcher.spawn(desired.name, argv, slot.log)
        except (LauncherError, OSError) as exc:
            self._load_failed(record, "LaunchFailed", f"cannot start a driver host: {exc}")
            return
        self.loads += 1
        process = HostProcess(pid, slot.socket)
        log.info("driver host started", extra=fields(driver=desired.name, pid=pid, version=desired.version))
        conn: HostConnection | None = None
        try:
            conn = await HostConnection.connect(
                slot.socket, timeout=self.settings.load_timeout, alive=lambda: self.launcher.alive(process)
            )
            result = await conn.call(
                Op.LOAD,
                {
                    "config": json.loads(desired.config_json),
                    "configJson": desired.config_json,
                    # Read the present devices only now: one may have gone while the host started.
                    "devices": [self._device_message(d) for d in sorted(action.devices & self.present)],
                },
                timeout=self.settings.load_timeout,
            )
        except (HostCallError, HostGone, TimeoutError) as exc:
            if isinstance(exc, HostCallError):
                reason, message = error_reason(exc.error.type), f"{exc.error.type}: {exc.error.message}"
            elif isinstance(exc, TimeoutError):
                reason, message = (
                    "LoadTimeout",
                    f"the driver did not load within {self.settings.load_timeout:.0f}s",
                )
            else:
                code = await self._exit_code(process)
                reason, message = "LoadFailed", f"{describe_exit(code)} while loading"
            await self._terminate(process, conn, KILL_WAIT)
            self._remove_slot_files(slot)
            self._load_failed(record, reason, message, pid)
            return
        attached = dict(result.get("attached") or {})
        failed = dict(result.get("failed") or {})
        record.restarts, record.crashed = restarts, False
        record.conn = conn
        record.started_mono = started_mono
        record.facts = {name: facts for name, facts in attached.items() if isinstance(facts, Mapping)}
        record.unhealthy = None
        record.state = replace(
            record.state,
            host=Host(
                pid=pid,
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
        conn.on_close(lambda closed: self._host_closed(record, closed))
        self._attach_failed(record, failed)
        message = f"{desired.name}: loaded {desired.driver_name} {desired.version} (pid {pid})"
        if attached:
            message += f", attached {', '.join(sorted(attached))}"
        self.events.emit("Loaded", message)
        log.info(
            "driver loaded",
            extra=fields(driver=desired.name, pid=pid, version=desired.version, devices=sorted(attached)),
        )

    def _load_failed(self, record: Record, reason: str, message: str, pid: int | None = None) -> None:
        """A start that failed: report it and back off before the next attempt."""
        failure = next_failure(
            record.state.failure, reason, message, now=self.clock(), policy=self.settings.backoff
        )
        record.state = replace(record.state, failure=failure)
        record.last_error = LastError(reason, message, dt.datetime.now(dt.UTC).replace(microsecond=0))
        self.events.emit("LoadFailed", f"{record.state.name}: {reason}: {message}", warning=True)
        log.warning(
            "driver failed to load",
            extra=fields(driver=record.state.name, reason=reason, error=message, pid=pid),
        )

    def _attach_failed(self, record: Record, failed: Mapping[str, Any]) -> None:
        if not failed:
            return
        now = self.clock()
        retry = dict(record.state.attach_retry)
        for name, error in failed.items():
            attempts = record.attach_attempts.get(name, 0) + 1
            record.attach_attempts[name] = attempts
            policy = self.settings.backoff
            retry[name] = now + min(policy.base_seconds * 2 ** min(attempts - 1, 32), policy.max_seconds)
            detail = error.get("message", error) if isinstance(error, Mapping) else error
            record.last_error = LastError(
                "AttachFailed", f"attach {name}: {detail}", dt.datetime.now(dt.UTC).replace(microsecond=0)
            )
            log.warning(
                "device attach failed", extra=fields(driver=record.state.name, device=name, error=str(detail))
            )
        record.state = replace(record.state, attach_retry=retry)

    async def _bind(self, record: Record, action: Bind) -> None:
        host, conn = record.state.host, record.conn
        if host is None or conn is None:
            return
        attached = set(host.attached)
        failed: dict[str, Any] = {}
        try:
            for name in sorted(action.detach):
                try:
                    await conn.call(Op.DETACH, {"name": name})
                except HostCallError as exc:
                    record.last_error = LastError(
                        "DetachFailed",
                        f"detach {name}: {exc}",
                        dt.datetime.now(dt.UTC).replace(microsecond=0),
                    )
                    log.warning(
                        "device detach failed",
                        extra=fields(driver=record.state.name, device=name, error=str(exc)),
                    )
                attached.discard(name)
                record.facts.pop(name, None)
                log.info("device detached", extra=fields(driver=record.state.name, device=name))
            for name in sorted(action.attach):
                if name not in self.devices:
                    continue
                try:
                    result = await conn.call(Op.ATTACH, {"device": self._device_message(name)})
                except HostCallError as exc:
                    failed[name] = {"message": str(exc)}
                    continue
                attached.add(name)
                record.attach_attempts.pop(name, None)
                facts = result.get("facts")
                record.facts[name] = facts if isinstance(facts, Mapping) else {}
                log.info("device attached", extra=fields(driver=record.state.name, device=name))
        except (HostGone, TimeoutError):
            return  # the host died or hangs: _host_closed or the next health check deals with it
        finally:
            current = record.state.host
            if current is not None and current.pid == host.pid:
                retry = {k: v for k, v in record.state.attach_retry.items() if k not in attached}
                record.state = replace(
                    record.state, host=replace(current, attached=frozenset(attached)), attach_retry=retry
                )
        self._attach_failed(record, failed)

    async def _stop(self, record: Record, action: Stop) -> None:
        host, conn = record.state.host, record.conn
        if host is None:
            return
        name = record.state.name
        slot = self._slot(name)
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
        ended = await self._terminate(process, conn, max(0.0, grace - (self.clock() - started)))
        self._remove_slot_files(slot)
        record.conn = None
        record.facts = {}
        record.unhealthy = None
        record.state = forget_host(record.state)
        took = self.clock() - started
        what = {StopReason.RELOAD: "to reload it", StopReason.CAPACITY: "over maxLoadedDrivers"}.get(
            action.reason, f"({action.reason.value})"
        )
        if ended != "stopped" or errors:
            detail = "; ".join(errors) if errors else ""
            if ended != "stopped":
                detail = (
                    f"stop() did not finish within the grace period of {grace:.0f}s; the host was {ended}"
                    + (f"; {detail}" if detail else "")
                )
            record.last_error = LastError(
                "UnloadFailed", detail, dt.datetime.now(dt.UTC).replace(microsecond=0)
            )
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

    async def _exit_code(self, process: HostProcess) -> int | None:
        # The exit status becomes known once the process is reaped, shortly after its socket closes.
        for _ in range(20):
            code = await self.launcher.exit_status(process)
            if code is not None or not await self.launcher.alive(process):
                return code if code is not None else await self.launcher.exit_status(process)
            await asyncio.sleep(0.05)
        return None

    def _host_closed(self, record: Record, conn: HostConnection) -> None:
        """The connection to a host ended. During a Stop that is expected; otherwise it crashed."""
        if record.conn is not conn:
            return
        record.conn = None
        host = record.state.host
        if isinstance(record.in_flight, Stop) or host is None:
            return
        now = self.clock()
        message = "the driver host exited unexpectedly"
        record.crashed = True
        record.state = replace(
            forget_host(record.state),
            failure=next_failure(
                record.state.failure,
                "Crashed",
                message,
                now=now,
                policy=self.settings.backoff,
                running_since=record.started_mono,
            ),
        )
        record.facts = {}
        record.last_error = LastError("Crashed", message, dt.datetime.now(dt.UTC).replace(microsecond=0))
        self.wake.set()
        task = asyncio.create_task(self._report_crash(record, host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report_crash(self, record: Record, host: Host) -> None:
        slot = self._slot(record.state.name)
        process = HostProcess(host.pid, slot.socket)
        code = await self._exit_code(process)
        if await self.launcher.alive(process):
            # The connection broke but the process lives on (it hangs): it cannot be managed.
            await self._terminate(process, None, 0.0)
        self._remove_slot_files(slot)
        failure = record.state.failure
        message = describe_exit(code)
        if failure is not None:
            wait = max(0.0, failure.retry_at - self.clock())
            message += f"; restarting in {wait:.0f}s (restart {record.restarts + 1})"
        record.last_error = LastError("Crashed", message, dt.datetime.now(dt.UTC).replace(microsecond=0))
        self.events.emit("Crashed", f"{record.state.name}: {message}", warning=True)
        log.warning(
            "driver host crashed",
            extra=fields(driver=record.state.name, pid=host.pid, code=code, restarts=record.restarts),
        )
        self.wake.set()

    # --- health ------------------------------------------------------------------------------

    async def check_health(self) -> None:
        """Ask every loaded driver's health(), all at once (a hung host delays only itself)."""
        await asyncio.gather(*(self._check_one(r) for r in list(self.records.values())))

    async def _check_one(self, record: Record) -> None:
        conn = record.conn
        if conn is None or record.in_flight is not None or record.state.host is None:
            return
        try:
            result = await conn.call(Op.HEALTH, timeout=HEALTH_TIMEOUT)
            unhealthy = None if result.get("healthy", True) else str(result.get("message") or "unhealthy")
        except HostCallError as exc:
            unhealthy = str(exc)
        except TimeoutError:
            unhealthy = f"health() did not answer within {HEALTH_TIMEOUT:.0f}s"
        except HostGone:
            return
        if unhealthy != record.unhealthy:
            record.unhealthy = unhealthy
            if unhealthy:
                record.last_error = LastError(
                    "Unhealthy", unhealthy, dt.datetime.now(dt.UTC).replace(microsecond=0)
                )
                log.warning("driver unhealthy", extra=fields(driver=record.state.name, error=unhealthy))
            else:
                log.info("driver healthy again", extra=fields(driver=record.state.name))
            self.wake.set()

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
        for state_file in sorted(hosts_dir.glob("*.json")):
            try:
                info = json.loads(state_file.read_text())
                process = HostProcess(int(info["pid"]), Path(str(info["socket"])))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("unreadable host state file; removing it", extra=fields(file=str(state_file)))
                state_file.unlink(missing_ok=True)
                continue
            slot = HostSlot(process.socket, state_file, state_file.with_suffix(".log"))
            if info.get("bootId") != self.settings.boot_id:
                self._remove_slot_files(slot)  # from before the node rebooted
                continue
            await self._adopt_one(process, slot, info)

    async def _adopt_one(self, process: HostProcess, slot: HostSlot, info: Mapping[str, Any]) -> None:
        name = str(info.get("name", "?"))
        conn: HostConnection | None = None
        try:
            conn = await HostConnection.connect(
                process.socket, timeout=3.0, alive=lambda: self.launcher.alive(process)
            )
            hello = await conn.call(Op.HELLO, timeout=10.0)
        except (HostGone, HostCallError, TimeoutError) as exc:
            if await self.launcher.alive(process):
                log.warning(
                    "driver host does not answer; stopping it",
                    extra=fields(driver=name, pid=process.pid, error=str(exc)),
                )
                await self._terminate(process, conn, 0.0)
            if conn is not None:
                await conn.close()
            self._remove_slot_files(slot)
            return
        if (
            hello.get("protocol") != PROTOCOL_VERSION
            or hello.get("phase") != "running"
            or int(hello.get("pid", 0)) != process.pid
        ):
            # Never loaded (the previous agent died while starting it), stopping, or incompatible.
            log.info(
                "stopping a driver host that cannot be adopted",
                extra=fields(driver=name, pid=process.pid, phase=hello.get("phase")),
            )
            with contextlib.suppress(HostGone, HostCallError, TimeoutError):
                await conn.call(Op.UNLOAD, timeout=30.0)
            await self._terminate(process, conn, KILL_WAIT)
            self._remove_slot_files(slot)
            return
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
