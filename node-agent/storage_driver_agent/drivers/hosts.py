"""Starting, stopping and adopting driver host processes.

`HostRunner` turns the reconcile loop's Start and Stop into processes: it builds a host's
command line, spawns it through the launcher, connects and loads the driver; it stops a host
(grace period, SIGTERM, SIGKILL) and then ends whatever the driver left in its process tree;
and it reconnects to the hosts a previous agent left running. What the outcome means for the
driver (its record, events, backoff) is decided by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from storage_driver_api.logs import fields
from storage_driver_sdk.protocol import PROTOCOL_VERSION, Op

from storage_driver_agent.drivers.host import HOST_MODULE
from storage_driver_agent.drivers.hostclient import HostCallError, HostConnection, HostGone
from storage_driver_agent.drivers.launcher import HostProcess, Launcher, LauncherError
from storage_driver_agent.drivers.runtime import RuntimeSettings
from storage_driver_agent.drivers.slots import HostSlot, LeftHost
from storage_driver_agent.drivers.statemachine import Artifact, Desired

log = logging.getLogger(__name__)

KILL_WAIT: Final = 5.0


def error_reason(error_type: str) -> str:
    return {
        "MemoryError": "MemoryLimitExceeded",
        "ChecksumMismatch": "ChecksumMismatch",
        "ImportFailed": "ImportFailed",
        "ImportError": "ImportFailed",
        "ModuleNotFoundError": "ImportFailed",
        "SyntaxError": "ImportFailed",
    }.get(error_type, "StartFailed")


HOST_FORKED = "HostForked"


def forked_message(pid: int) -> str:
    return (
        f"the driver host (pid {pid}) exited, yet a process it forked answered for it: a driver "
        "must not fork and exit (run helpers as children instead); its processes were ended"
    )


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


class HostLoadFailed(Exception):
    """A host did not start or did not load its driver; nothing of it is left running."""

    def __init__(self, reason: str, message: str, pid: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.pid = pid


@dataclass(frozen=True)
class Loaded:
    """A host that loaded its driver: the devices it attached and those that failed."""

    pid: int
    conn: HostConnection
    attached: Mapping[str, Any]
    failed: Mapping[str, Any]
    started_mono: float
    started_wall: float


@dataclass(frozen=True)
class Adopted:
    """A running host a previous agent left, connected again; `hello` is what it runs."""

    process: HostProcess
    conn: HostConnection
    hello: Mapping[str, Any]


class HostRunner:
    def __init__(
        self,
        settings: RuntimeSettings,
        launcher: Launcher,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ):
        self.settings = settings
        self.launcher = launcher
        self.clock = clock
        self.wall = wall

    def slot(self, name: str) -> HostSlot:
        return HostSlot.for_driver(self.settings.hosts_dir, name)

    def argv(self, desired: Desired, artifact: Artifact, slot: HostSlot, restarts: int) -> list[str]:
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

    # --- starting ----------------------------------------------------------------------------

    async def spawn(self, desired: Desired, artifact: Artifact, restarts: int) -> int:
        slot = self.slot(desired.name)
        slot.socket.parent.mkdir(parents=True, exist_ok=True)
        try:
            pid = await self.launcher.spawn(
                desired.name, self.argv(desired, artifact, slot, restarts), slot.log
            )
        except (LauncherError, OSError) as exc:
            raise HostLoadFailed("LaunchFailed", f"cannot start a driver host: {exc}") from exc
        log.info("driver host started", extra=fields(driver=desired.name, pid=pid, version=desired.version))
        return pid

    async def load(
        self,
        desired: Desired,
        pid: int,
        devices: Callable[[], list[dict[str, Any]]],
        started_mono: float,
        started_wall: float,
    ) -> Loaded:
        """Connect to a spawned host and load its driver with `devices()` (read only then: one may
        have gone while the host started). On failure the host is gone and HostLoadFailed says why."""
        slot = self.slot(desired.name)
        process = HostProcess(pid, slot.socket)
        timeout = self.settings.load_timeout
        conn: HostConnection | None = None
        try:
            conn = await HostConnection.connect(
                slot.socket, timeout=timeout, alive=lambda: self.launcher.alive(process)
            )
            result = await conn.call(
                Op.LOAD,
                {
                    "config": json.loads(desired.config_json),
                    "configJson": desired.config_json,
                    "devices": devices(),
                },
                timeout=timeout,
            )
        except (HostCallError, HostGone, TimeoutError) as exc:
            if isinstance(exc, HostCallError):
                reason, message = error_reason(exc.error.type), f"{exc.error.type}: {exc.error.message}"
            elif isinstance(exc, TimeoutError):
                reason, message = "LoadTimeout", f"the driver did not load within {timeout:.0f}s"
            else:
                code = await self.exit_code(process)
                reason, message = "LoadFailed", f"{describe_exit(code)} while loading"
            await self.stop(process, conn, KILL_WAIT)
            slot.remove_files()
            raise HostLoadFailed(reason, message, pid) from exc
        if not await self.launcher.alive(process):
            # The driver forked and the host exited (at import, in start()): the answer came from
            # the forked copy, which no pid the agent knows stands for. End it with the tree.
            await self.end_tree(process)
            await conn.close()
            slot.remove_files()
            raise HostLoadFailed(HOST_FORKED, forked_message(pid), pid)
        return Loaded(
            pid,
            conn,
            dict(result.get("attached") or {}),
            dict(result.get("failed") or {}),
            started_mono,
            started_wall,
        )

    # --- stopping ----------------------------------------------------------------------------

    async def wait_exited(self, process: HostProcess, conn: HostConnection | None, timeout: float) -> bool:
        """Wait until the host process is gone; True if it went within the timeout."""
        deadline = self.clock() + timeout
        if conn is not None and not conn.closed:
            await conn.wait_closed(max(0.0, deadline - self.clock()))
        return await self.launcher.wait_exited(process, max(0.0, deadline - self.clock()))

    async def terminate(self, process: HostProcess, conn: HostConnection | None, grace: float) -> str:
        """Make sure the host is gone: wait `grace`, then SIGTERM, then SIGKILL. Returns how it ended."""
        if await self.wait_exited(process, conn, grace):
            return "stopped"
        await self.launcher.signal(process, signal.SIGTERM)
        if await self.wait_exited(process, conn, self.settings.terminate_timeout):
            return "terminated"
        await self.launcher.signal(process, signal.SIGKILL)
        await self.wait_exited(process, conn, KILL_WAIT)
        return "killed"

    async def end_tree(self, process: HostProcess) -> None:
        """Once the host is gone: kill what its driver left running (children, daemons)."""
        try:
            killed = await self.launcher.end_tree(process)
        except LauncherError as exc:
            log.warning(
                "cannot end a driver host's process tree", extra=fields(pid=process.pid, error=str(exc))
            )
            return
        if killed:
            log.warning(
                "killed processes the driver host left running", extra=fields(pid=process.pid, killed=killed)
            )

    async def stop(self, process: HostProcess, conn: HostConnection | None, grace: float) -> str:
        """terminate(), then end the rest of the host's process tree."""
        ended = await self.terminate(process, conn, grace)
        await self.end_tree(process)
        return ended

    async def exit_code(self, process: HostProcess) -> int | None:
        # The exit status becomes known once the process is reaped, shortly after its socket closes.
        for _ in range(20):
            code = await self.launcher.exit_status(process)
            if code is not None or not await self.launcher.alive(process):
                return code if code is not None else await self.launcher.exit_status(process)
            await asyncio.sleep(0.05)
        return None

    # --- adopting ----------------------------------------------------------------------------

    async def adopt(self, left: LeftHost) -> Adopted | None:
        """Connect to a host a previous agent left; stop it (None) if it cannot be adopted."""
        process, slot, name = (
            HostProcess(left.pid, left.slot.socket),
            left.slot,
            str(left.info.get("name", "?")),
        )
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
                await self.stop(process, conn, 0.0)
            if conn is not None:
                await conn.close()
            slot.remove_files()
            return None
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
            await self.stop(process, conn, KILL_WAIT)
            slot.remove_files()
            return None
        return Adopted(process, conn, hello)
