"""Starting, signalling and reaping driver host processes, behind one small interface.

- DirectLauncher: the agent spawns hosts itself, each in a new session, so they outlive the
  agent's process (used when the agent runs on the host: tests, the demo).
- SupervisorLauncher: the agent asks `storage-agent supervise` (supervisor.py) over a unix socket
  in the state directory; the supervisor spawns and reaps the hosts. In a cluster it runs in its
  own DaemonSet, so restarting or upgrading the agent does not touch the drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from storage_driver_agent.drivers.host import HOST_MODULE, LISTEN_FD_OPTION, argv_socket, bind_listener
from storage_driver_agent.drivers.proctree import ProcessTrees

LOG_ROTATE_BYTES: Final = 5 * 1024 * 1024
SUPERVISOR_SOCKET: Final = "supervisor.sock"


class LauncherError(Exception):
    """The launcher could not do what was asked (e.g. the supervisor is not running)."""


@dataclass(frozen=True)
class HostProcess:
    """What identifies a driver host process: its pid and the socket it serves."""

    pid: int
    socket: Path


class Launcher(Protocol):
    async def spawn(self, name: str, argv: list[str], log_path: Path) -> int:
        """Start a driver host; returns its pid."""
        ...

    async def alive(self, host: HostProcess) -> bool: ...

    async def exit_status(self, host: HostProcess) -> int | None:
        """The exit code (negative: killed by that signal) if known and exited, else None."""
        ...

    async def signal(self, host: HostProcess, sig: int) -> None: ...

    async def wait_exited(self, host: HostProcess, timeout: float) -> bool:
        """Wait until the host process is gone; True if it went within the timeout."""
        ...

    async def end_tree(self, host: HostProcess) -> list[int]:
        """Kill whatever is left of the host's process tree (proctree.py); the pids killed."""
        ...

    async def close(self) -> None: ...


def host_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # Fewer malloc arenas: less address space reserved per thread, so RLIMIT_AS limits real use.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


def check_host_argv(argv: list[str]) -> list[str]:
    """The argv with this interpreter, if it starts a driver host; refuses anything else."""
    if len(argv) < 3 or argv[1:3] != ["-m", HOST_MODULE]:
        raise LauncherError(f"refusing to start {argv[:3]!r}: only '-m {HOST_MODULE}' may be started")
    return [sys.executable, *argv[1:]]


def rotate_log(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))


def host_socket(argv: list[str]) -> Path:
    if (path := argv_socket(argv)) is None:
        raise LauncherError("a driver host's argv must name its --socket")
    return path


def prepare_host(argv: list[str], log_path: Path, trees: ProcessTrees) -> list[str]:
    """Before a driver host starts: the checked argv, with its fresh cgroup (where the node has
    one) to join; its log rotated."""
    checked = check_host_argv(argv)
    checked += trees.prepare(host_socket(checked))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rotate_log(log_path)
    return checked


def spawn_host(argv: list[str], log_path: Path, trees: ProcessTrees) -> subprocess.Popen[bytes]:
    """Start a driver host in a new session and (where the node has one) a fresh cgroup."""
    return exec_host(prepare_host(argv, log_path, trees), log_path)


def exec_host(checked: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a prepared host as a fresh interpreter (the path without the host template), with
    its socket already listening (host.bind_listener)."""
    with log_path.open("ab") as log, bind_listener(host_socket(checked)) as listener:
        return subprocess.Popen(
            [*checked, LISTEN_FD_OPTION, str(listener.fileno())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the agent's process group: its signals do not reach hosts
            env=host_env(),
            close_fds=True,
            pass_fds=[listener.fileno()],
        )


def is_driver_host(host: HostProcess) -> bool:
    """True when the pid is a live (not zombie) driver host serving that socket; guards against
    a recycled pid being mistaken for, or signalled as, a host."""
    try:
        args = Path(f"/proc/{host.pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{host.pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
        return False
    decoded = [a.decode(errors="replace") for a in args]
    if HOST_MODULE not in decoded:
        return False
    with contextlib.suppress(ValueError):
        return decoded[decoded.index("--socket") + 1] == str(host.socket)
    return False


async def wait_pidfd(pid: int, timeout: float) -> bool | None:
    """Wait for a process in our pid namespace to exit, woken by the kernel (pidfd), not by
    polling. None when pidfds are not available here."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (OSError, AttributeError):
        return None
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_exit)
    try:
        await asyncio.wait_for(exited, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def poll_exited(launcher: Launcher, host: HostProcess, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await launcher.alive(host):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(0.02, remaining))
    return True


class DirectLauncher:
    """Spawns hosts as the agent's own children (each in a new session)."""

    def __init__(self, trees: ProcessTrees | None = None) -> None:
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.trees = trees or ProcessTrees("session")

    async def spawn(self, name: str, argv: list[str], log_path: Path) -> int:
        process = spawn_host(argv, log_path, self.trees)
        self.children[process.pid] = process
        return process.pid

    async def alive(self, host: HostProcess) -> bool:
        child = self.children.get(host.pid)
        if child is not None:
            return child.poll() is None
        return is_driver_host(host)

    async def exit_status(self, host: HostProcess) -> int | None:
        child = self.children.get(host.pid)
        return child.poll() if child is not None else None

    async def signal(self, host: HostProcess, sig: int) -> None:
        child = self.children.get(host.pid)
        if child is not None:
            if child.poll() is None:
                child.send_signal(sig)
        elif is_driver_host(host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(host.pid, sig)

    async def wait_exited(self, host: HostProcess, timeout: float) -> bool:
        if not await self.alive(host):
            return True
        done = await wait_pidfd(host.pid, timeout)
        if done is None:
            return await poll_exited(self, host, timeout)
        if done and (child := self.children.get(host.pid)) is not None:
            child.poll()  # reap it, recording its exit status
        return done

    async def end_tree(self, host: HostProcess) -> list[int]:
        return await asyncio.to_thread(self.trees.end, host.socket, host.pid)

    async def close(self) -> None:
        # Hosts keep running; only reap those that already exited.
        for child in self.children.values():
            child.poll()


class SupervisorLauncher:
    """Asks the supervisor (storage-agent supervise) to spawn, signal and reap hosts."""

    def __init__(self, socket_path: Path, *, connect_timeout: float = 30.0):
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._next_id = 0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None and not self._writer.is_closing():
            return self._reader, self._writer
        deadline = asyncio.get_running_loop().time() + self.connect_timeout
        delay = 0.05
        while True:
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(str(self.socket_path))
                return self._reader, self._writer
            except OSError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise LauncherError(
                        f"the supervisor is not reachable at {self.socket_path} ({exc.strerror or exc}); "
                        "start it with 'storage-agent supervise --state-dir ...' or use --launcher direct"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def request(self, op: str, **args: Any) -> Mapping[str, Any]:
        async with self._lock:
            for attempt in range(2):
                reader, writer = await self._connect()
                self._next_id += 1
                line = await _exchange(reader, writer, self._next_id, op, args)
                if line:
                    return _result(line)
                # The supervisor restarted: reconnect once.
                self._reader = self._writer = None
                if attempt == 1:
                    raise LauncherError(f"the supervisor at {self.socket_path} closed the connection")
        raise AssertionError("unreachable")

    async def spawn(self, name: str, argv: list[str], log_path: Path) -> int:
        result = await self.request("spawn", name=name, argv=argv, log=str(log_path))
        return int(result["pid"])

    async def alive(self, host: HostProcess) -> bool:
        result = await self.request("alive", pid=host.pid, socket=str(host.socket))
        return bool(result["alive"])

    async def exit_status(self, host: HostProcess) -> int | None:
        result = await self.request("exit_status", pid=host.pid)
        code = result.get("code")
        return None if code is None else int(code)

    async def signal(self, host: HostProcess, sig: int) -> None:
        await self.request("signal", pid=host.pid, socket=str(host.socket), signal=int(sig))

    async def wait_exited(self, host: HostProcess, timeout: float) -> bool:
        # The hosts may live in another pid namespace (the supervisor's pod): the supervisor
        # answers when it reaps the host. On a connection of its own, so that the wait holds up
        # no other request; a supervisor older than the "wait" request is asked until it is gone.
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError:
            return await poll_exited(self, host, timeout)
        try:
            args = {"pid": host.pid, "socket": str(host.socket), "timeout": timeout}
            line = await asyncio.wait_for(_exchange(reader, writer, 0, "wait", args), timeout + 5.0)
            return bool(_result(line)["exited"]) if line else await poll_exited(self, host, timeout)
        except LauncherError:
            return await poll_exited(self, host, timeout)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def end_tree(self, host: HostProcess) -> list[int]:
        result = await self.request("end_tree", pid=host.pid, socket=str(host.socket))
        return [int(p) for p in result.get("killed") or []]

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request_id: int,
    op: str,
    args: Mapping[str, Any],
) -> bytes:
    """One request and its reply line; b"" when the supervisor closed the connection."""
    try:
        writer.write(json.dumps({"id": request_id, "op": op, "args": dict(args)}).encode() + b"\n")
        await writer.drain()
        return await reader.readline()
    except OSError:
        return b""


def _result(line: bytes) -> Mapping[str, Any]:
    reply = json.loads(line)
    if not reply.get("ok"):
        raise LauncherError(str(reply.get("error", "supervisor refused the request")))
    result: Mapping[str, Any] = reply.get("result") or {}
    return result


def make_launcher(kind: str, state_dir: Path, trees: ProcessTrees | None = None) -> Launcher:
    """The launcher of that kind; `trees` is how a direct launcher holds host process trees (the
    supervisor chooses its own)."""
    if kind == "direct":
        return DirectLauncher(trees)
    if kind == "supervisor":
        return SupervisorLauncher(state_dir / SUPERVISOR_SOCKET)
    raise ValueError(f"--launcher: {kind!r} is not one of direct, supervisor")
