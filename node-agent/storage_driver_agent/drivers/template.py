"""The host template: a warm, single-threaded process that forks driver hosts.

    python -m storage_driver_agent.drivers.template --fd N --title-room ...

A fresh interpreter per driver host costs tens of milliseconds and ~20 MiB, nearly all of it
the interpreter and the host module (host.py, the SDK). The supervisor starts one template that
has imported them, and asks it, over the socket `--fd`, for a host: the template creates it as
the supervisor's child, straight in its cgroup (clone3.py), and the new process becomes the host
(new session, its log as stdout and stderr, its memory limit set by host.main exactly as in a
fresh `python -m ...host`), then imports only its driver. It shares the template's pages until it
writes them, so a host costs little more than its driver. Where the kernel refuses clone3 (a
seccomp profile, an old kernel, a v1 cgroup), the template forks twice instead: the child forks
the host and exits, and the host joins its cgroup itself.

Either way the host is the supervisor's child (created so, or reparented to it as the nearest
subreaper when the middle child exits), which reaps it and knows its exit status; the template
keeps no host as a child, so its death (or its restart) takes no host with it. A host rewrites its command line to the one a
fresh host would have (`python -m storage_driver_agent.drivers.host --name ... --socket ...`), so
ps, the supervisor's identity check (launcher.is_driver_host) and adoption see no difference;
`--title-room` only reserves the room in the argument area that the new command line needs.

Like the host, it imports nothing but the standard library, the SDK and host.py (an
import-linter contract keeps it so): everything it imports, every host shares.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Final, NoReturn

from storage_driver_sdk.protocol import Response, decode_request

from storage_driver_agent.drivers import clone3, host

TEMPLATE_MODULE: Final = "storage_driver_agent.drivers.template"
# Room for a host's command line (names, sha256, paths; ~700 bytes in practice).
TITLE_ROOM: Final = 4096
MAX_REQUEST_BYTES: Final = 1 << 20
# Where a host forked from the template finds its listening socket (host.LISTEN_FD_OPTION).
LISTENER_FD: Final = 3


class TitleError(Exception):
    """The new command line does not fit in this process's argument area."""


def _argument_area() -> tuple[int, int]:
    """The start and end address of this process's argument strings (what /proc/PID/cmdline shows)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    # /proc/PID/stat fields 48 and 49 (arg_start, arg_end); the list starts at field 3.
    return int(fields[45]), int(fields[46])


def set_command_line(argv: list[str]) -> None:
    """Make /proc/self/cmdline read `argv` (NUL-separated, as after an exec), padded with NULs.
    The kernel shows the whole argument area while its last byte is NUL, so the padding stays
    out of sight of anything that drops empty arguments (ps, the identity checks)."""
    start, end = _argument_area()
    data = b"".join(a.encode() + b"\0" for a in argv)
    if len(data) > end - start:
        raise TitleError(f"a command line of {len(data)} bytes does not fit in {end - start}")
    ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)


def with_listener(argv: list[str]) -> list[str]:
    """A host's command line as the template starts it: told where its listening socket is."""
    return [*argv, host.LISTEN_FD_OPTION, str(LISTENER_FD)]


def fits(argv: list[str]) -> bool:
    """Whether a host's command line, as the template starts it, fits in the room it reserves."""
    return sum(len(a.encode()) + 1 for a in with_listener(argv)) <= TITLE_ROOM


def threads() -> int:
    return sum(1 for _ in Path("/proc/self/task").iterdir())


# --- in the host (the grandchild) ------------------------------------------------------------


def become_host(argv: list[str], log_path: Path, control: socket.socket, listener: socket.socket) -> NoReturn:
    """Turn this freshly forked process into the driver host `argv` names, serving `listener`
    (argv hands it over as LISTENER_FD); never returns."""
    code = 1
    try:
        os.setsid()  # its own session, as a fresh host's: the agent's signals do not reach it
        control.close()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        if (listener_fd := listener.detach()) != LISTENER_FD:
            os.dup2(listener_fd, LISTENER_FD)
        os.closerange(LISTENER_FD + 1, os.sysconf("SC_OPEN_MAX"))  # nothing else of the template's
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        set_command_line(argv)
        sys.argv = [str(host.__file__), *argv[3:]]
        code = host.main(argv[3:])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# --- in the template -------------------------------------------------------------------------


def warm_up() -> None:
    """Run once what every host runs as it starts (argument parsing, its log format, its state
    file, the protocol), so that what that allocates and caches for good (argparse's and the
    formatter's compiled patterns, ...) is the template's, shared, instead of each host's own
    copy: that halves a host's private memory."""
    args = host.parse_args(
        [
            "--name",
            "warm",
            "--driver-name",
            "Warm",
            "--version",
            "0",
            "--sha256",
            hashlib.sha256().hexdigest(),
            "--path",
            "/",
            "--class-name",
            "Warm",
            "--socket",
            "/",
            "--state-file",
            "/",
            "--cgroup",
            "/",
        ]
    )
    record = logging.LogRecord("warm", logging.INFO, __file__, 0, "warm %s", ("up",), None)
    host.JsonLogFormatter(args.name).format(record)
    json.loads(json.dumps(host.DriverHost(args).describe(), default=str))
    request = decode_request(b'{"id": 1, "op": "hello", "args": {}}')
    Response(request.id, True, host.json_safe({"warm": [1, 2.0, None]})).encode()
    exec(compile("WARM = 1\n", "<warm>", "exec"), {})


class HostForker:
    """Creates hosts as the supervisor's children: with clone3 straight into their cgroup where the
    kernel lets us (clone3.py), else by a double fork after which the host joins its cgroup itself
    (host.main). `why` says why not clone3, for the supervisor's log."""

    def __init__(self) -> None:
        self.state: clone3.ThreadState | None = None
        self.why = ""
        try:
            self.state = clone3.thread_state()
        except OSError as exc:
            self.why = str(exc)

    @property
    def method(self) -> str:
        return "clone3" if self.state is not None else "fork"

    def start(self, group: Path | None, child: Callable[[], NoReturn]) -> int:
        """Run `child` in a new process; returns its pid."""
        if self.state is not None:
            try:
                pid = self._clone(self.state, group)
            except OSError as exc:
                if exc.errno in clone3.UNAVAILABLE:  # for good: every host forks from now on
                    self.state, self.why = None, str(exc)
            else:
                if pid == 0:
                    child()
                return pid
        return double_fork(child)

    @staticmethod
    def _clone(state: clone3.ThreadState, group: Path | None) -> int:
        fd = None if group is None else os.open(group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return clone3.fork(state, fd)
        finally:  # in both processes
            if fd is not None:
                os.close(fd)


def double_fork(child: Callable[[], NoReturn]) -> int:
    """Run `child` in a grandchild whose parent exits at once, so that it is reparented to the
    nearest subreaper (the supervisor); returns its pid."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_end)
            pid = os.fork()
            if pid == 0:
                os.close(write_end)
                child()
            os.write(write_end, str(pid).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        answer = reader.read()
    os.waitpid(middle, 0)
    if not answer:
        raise OSError("the host could not be forked")
    return int(answer)


def argv_cgroup(argv: list[str]) -> Path | None:
    """The --cgroup a host's command line names (the launcher made it), if any."""
    with contextlib.suppress(ValueError, IndexError):
        return Path(argv[argv.index("--cgroup") + 1])
    return None


def fork_host(argv: list[str], log_path: Path, control: socket.socket, forker: HostForker) -> int:
    """Start a host that is not our child, its socket already listening; returns its pid."""
    if argv[1:3] != ["-m", host.HOST_MODULE]:
        raise ValueError(f"refusing to start {argv[:3]!r}: only '-m {host.HOST_MODULE}' may be started")
    if (socket_path := host.argv_socket(argv)) is None:
        raise ValueError("a driver host's argv must name its --socket")
    if not fits(argv):
        raise TitleError(f"a command line of {len(' '.join(argv))} bytes does not fit in {TITLE_ROOM}")
    argv = with_listener(argv)
    # The listener is the host's alone once we leave this block: when the host exits, the
    # agent's connection ends.
    with host.bind_listener(socket_path) as listener:
        sys.stdout.flush()
        sys.stderr.flush()
        return forker.start(argv_cgroup(argv), lambda: become_host(argv, log_path, control, listener))


def serve(control: socket.socket, forker: HostForker) -> int:
    """Answer spawn requests (one JSON line each) until the supervisor closes the socket."""
    buffer = b""
    while True:
        data = control.recv(65536)
        if not data:
            return 0
        buffer += data
        if len(buffer) > MAX_REQUEST_BYTES:
            return 2
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                request = json.loads(line)
                pid = fork_host([str(a) for a in request["argv"]], Path(request["log"]), control, forker)
                reply: dict[str, object] = {"pid": pid, "method": forker.method, "why": forker.why}
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            control.sendall(json.dumps(reply).encode() + b"\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        control = socket.socket(fileno=int(args[args.index("--fd") + 1]))
    except (ValueError, IndexError, OSError) as exc:
        print(f"usage: python -m {TEMPLATE_MODULE} --fd N ({exc})", file=sys.stderr)
        return 2
    if threads() != 1:
        # fork() copies only the calling thread: a lock another thread held stays locked forever.
        print(f"the host template must be single-threaded; it has {threads()} threads", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError, TitleError):
        set_command_line([sys.executable, "-m", TEMPLATE_MODULE])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor ends it by closing the socket
    warm_up()
    forker = HostForker()
    # What the template has allocated so far stays put: the collector does not touch it in the
    # hosts, so their copies of those pages stay shared.
    gc.collect()
    gc.freeze()
    return serve(control, forker)


if __name__ == "__main__":
    sys.exit(main())
