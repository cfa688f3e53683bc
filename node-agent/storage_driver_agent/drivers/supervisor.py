"""`storage-agent supervise`: a long-lived process that spawns and reaps driver hosts for the agent.

In a cluster the supervisor runs in its own DaemonSet (see docs/driver-runtime.md) and shares
the state directory with the agent. The agent asks it, over `<state-dir>/supervisor.sock`, to
spawn a host, to tell whether one is alive, its exit status, or to signal it. Because the hosts
are the supervisor's children, restarting or upgrading the agent leaves them running; only
stopping the supervisor stops them (cleanly: SIGTERM, then SIGKILL after --stop-timeout).

It starts nothing but driver hosts (`python -m storage_driver_agent.drivers.host`), and signals
only processes that are driver hosts serving the socket named in the request. By default
(`--host-start template`) it forks each host from a warm host template (template.py) rather
than starting a fresh interpreter: the same process, command line, session, cgroup and limits,
for a fraction of the memory and start time. The hosts are then its children as a subreaper.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import prometheus_client
from prometheus_client import CollectorRegistry
from storage_driver_api.logs import fields, setup_logging

from storage_driver_agent import metricsserver
from storage_driver_agent.config import health_address
from storage_driver_agent.drivers import proctree
from storage_driver_agent.drivers.launcher import (
    SUPERVISOR_SOCKET,
    HostProcess,
    LauncherError,
    exec_host,
    host_socket,
    is_driver_host,
    prepare_host,
    wait_pidfd,
)
from storage_driver_agent.drivers.slots import HOSTS_DIR
from storage_driver_agent.drivers.template import fits
from storage_driver_agent.drivers.templateclient import HostTemplate, TemplateGone, TemplateRefused

log = logging.getLogger("storage_driver_agent.supervisor")
PR_SET_CHILD_SUBREAPER: Final = 36
MAX_EXIT_RECORDS: Final = 1024
OPS: Final = ("spawn", "alive", "exit_status", "signal", "end_tree", "wait")
HOST_STARTS_CHOICES: Final = ("template", "exec")

# The supervisor's own registry (a separate process from the agent, with its own /metrics).
# `driver` is the name the agent gives, one of the node's NodeDriverConfig drivers: bounded.
REGISTRY = CollectorRegistry()
prometheus_client.ProcessCollector(registry=REGISTRY)
PREFIX: Final = "storage_driver_supervisor"
HOST_STARTS = prometheus_client.Counter(
    f"{PREFIX}_host_starts", "Driver hosts started, by driver.", ["driver"], registry=REGISTRY
)
HOST_EXITS = prometheus_client.Counter(
    f"{PREFIX}_host_exits",
    "Driver hosts reaped, by driver and how they ended (clean: exit 0; error: another code; signal: killed).",
    ["driver", "outcome"],
    registry=REGISTRY,
)
LEFTOVERS = prometheus_client.Counter(
    f"{PREFIX}_leftover_processes_killed",
    "Processes a driver host left behind in its process tree, killed when it ended.",
    registry=REGISTRY,
)
HOSTS = prometheus_client.Gauge(
    f"{PREFIX}_hosts", "Driver hosts running as this supervisor's children.", registry=REGISTRY
)
REQUESTS = prometheus_client.Counter(
    f"{PREFIX}_requests",
    "Requests from the agent over the socket, by op and result (ok, refused).",
    ["op", "result"],
    registry=REGISTRY,
)


class Supervisor:
    def __init__(
        self,
        state_dir: Path,
        stop_timeout: float,
        trees: proctree.ProcessTrees,
        metrics_address: str = "",
        host_start: str = "template",
    ):
        self.state_dir = state_dir
        # None: every host is a fresh interpreter (--host-start exec, or no subreaper, see run()).
        self.template: HostTemplate | None = HostTemplate() if host_start == "template" else None
        self.metrics_address = metrics_address
        self.stop_timeout = stop_timeout
        self.trees = trees
        self.children: dict[int, str] = {}  # pid -> driver name
        self.logs: dict[int, Path] = {}  # pid -> the host's log file
        self.sockets: dict[int, Path] = {}  # pid -> the host's socket (names its process tree)
        self.exit_codes: dict[int, int] = {}
        self.reaped: dict[int, asyncio.Event] = {}  # pid -> set once reaped ("wait" requests)
        self.host_method: tuple[str, str] | None = None  # as last logged (log_host_method)
        HOSTS.set_function(lambda: len(self.children))

    def end_tree(self, pid: int, socket: Path) -> list[int]:
        killed = self.trees.end(socket, pid, timeout=2.0)
        LEFTOVERS.inc(len(killed))
        if killed:
            log.warning("killed processes a driver host left behind", extra=fields(pid=pid, killed=killed))
        return killed

    def reap(self) -> None:
        """Collect every exited child (hosts, and orphans we inherit as a subreaper)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if self.template is not None and self.template.exited(pid):
                log.warning(
                    "the host template exited; the next host starts a new one",
                    extra=fields(pid=pid, code=code),
                )
                continue
            name = self.children.pop(pid, None)
            if name is not None:
                self.exit_codes[pid] = code
                if (reaped := self.reaped.pop(pid, None)) is not None:
                    reaped.set()
                HOST_EXITS.labels(name, "clean" if code == 0 else "error" if code > 0 else "signal").inc()
                log.info("driver host exited", extra=fields(driver=name, pid=pid, code=code))
                # Nothing of a driver outlives its host: not after a crash, nor with no agent.
                if (socket := self.sockets.pop(pid, None)) is not None:
                    self.end_tree(pid, socket)
                while len(self.exit_codes) > MAX_EXIT_RECORDS:
                    self.exit_codes.pop(next(iter(self.exit_codes)))

    def start_host(self, argv: list[str], log_path: Path) -> int:
        """A new driver host's pid: forked from the template, else a fresh interpreter. Nothing of
        the host's isolation depends on which: host.main sets up both alike."""
        checked = prepare_host(argv, log_path, self.trees)
        if self.template is not None and fits(checked):
            for attempt in range(2):
                try:
                    pid = self.template.spawn(checked, log_path)
                    self.log_host_method()
                    return pid
                except TemplateRefused as exc:
                    log.warning(
                        "the host template refused a host; starting it afresh", extra=fields(error=str(exc))
                    )
                    break
                except (TemplateGone, OSError) as exc:
                    log.warning("the host template is gone; starting another", extra=fields(error=str(exc)))
                    if attempt == 0:  # a host it may have half-started has joined the cgroup: ended
                        checked = prepare_host(argv, log_path, self.trees)
        process = exec_host(checked, log_path)
        # The supervisor reaps with waitpid(-1); Popen must not try to.
        process.returncode = 0
        return process.pid

    def log_host_method(self) -> None:
        """Say how the template creates hosts, once and whenever it changes."""
        if self.template is None or self.template.method == self.host_method:
            return
        self.host_method = self.template.method
        if self.host_method is not None and self.host_method[0] == "clone3":
            log.info("the host template creates driver hosts with clone3: in their cgroup, as our children")
        elif self.host_method is not None:
            log.info(
                "the host template forks driver hosts and they join their cgroup: clone3 is not available",
                extra=fields(reason=self.host_method[1]),
            )

    def handle(self, op: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        if op == "spawn":
            argv = [str(a) for a in args["argv"]]
            pid = self.start_host(argv, Path(str(args["log"])))
            self.children[pid] = str(args.get("name", "?"))
            HOST_STARTS.labels(self.children[pid]).inc()
            self.logs[pid] = Path(str(args["log"]))
            self.sockets[pid] = host_socket(argv)
            self.exit_codes.pop(pid, None)  # a recycled pid: forget the old process's exit
            log.info("driver host started", extra=fields(driver=args.get("name"), pid=pid))
            return {"pid": pid}
        # Our own children are known until reaped (their pid cannot be reused before), even in the
        # moment between fork and exec when /proc still shows the supervisor's command line.
        # Other processes (hosts of an earlier supervisor) are checked through /proc.
        if op == "alive":
            pid = int(args["pid"])
            host = HostProcess(pid, Path(str(args["socket"])))
            return {"alive": pid in self.children or (pid not in self.exit_codes and is_driver_host(host))}
        if op == "exit_status":
            return {"code": self.exit_codes.get(int(args["pid"]))}
        if op == "signal":
            host = HostProcess(int(args["pid"]), Path(str(args["socket"])))
            if host.pid in self.children or is_driver_host(host):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(host.pid, int(args["signal"]))
            return {}
        if op == "end_tree":
            return {"killed": self.end_tree(int(args["pid"]), Path(str(args["socket"])))}
        raise LauncherError(f"unknown op {op!r}")

    async def wait_exited(self, args: Mapping[str, Any]) -> Mapping[str, Any]:
        """Answer once the host has exited (True), or after `timeout` seconds (False)."""
        pid, timeout = int(args["pid"]), float(args["timeout"])
        if pid in self.children:  # reap() wakes us, on the SIGCHLD of its exit
            reaped = self.reaped.setdefault(pid, asyncio.Event())
            try:
                await asyncio.wait_for(reaped.wait(), timeout)
            except TimeoutError:
                return {"exited": False}
            return {"exited": True}
        host = HostProcess(pid, Path(str(args["socket"])))
        if pid in self.exit_codes or not is_driver_host(host):
            return {"exited": True}
        # A host of an earlier supervisor: not our child, but in our pid namespace.
        done = await wait_pidfd(pid, timeout)
        if done is None:  # no pidfds here: the agent asks "alive" until it is gone
            raise LauncherError("cannot wait for a process that is not a child without pidfds")
        return {"exited": done}

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                request: dict[str, Any] = {}
                try:
                    request = json.loads(line)
                    self.reap()
                    op, args = str(request.get("op")), request.get("args") or {}
                    result = await self.wait_exited(args) if op == "wait" else self.handle(op, args)
                    reply: dict[str, Any] = {"id": request.get("id"), "ok": True, "result": result}
                    REQUESTS.labels(_op_label(request), "ok").inc()
                except Exception as exc:
                    REQUESTS.labels(_op_label(request), "refused").inc()
                    log.warning("request refused", extra=fields(op=request.get("op"), error=str(exc)))
                    reply = {"id": request.get("id"), "ok": False, "error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def stop_hosts(self) -> None:
        self.reap()
        if not self.children:
            return
        log.info("stopping driver hosts", extra=fields(count=len(self.children)))
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while self.children and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            self.reap()
        for pid, name in list(self.children.items()):
            log.warning("driver host did not stop in time; killing it", extra=fields(driver=name, pid=pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.05)
            self.reap()
        for pid, socket in list(self.sockets.items()):
            self.end_tree(pid, socket)
        self.remove_files_of_stopped_hosts()

    def start_template(self) -> None:
        """Start the host template now, so that the first host does not wait for its imports."""
        if self.template is None:
            return
        try:
            pid = self.template.start()
        except OSError as exc:
            log.warning("cannot start the host template; hosts start afresh", extra=fields(error=str(exc)))
            self.template = None
            return
        log.info("host template started", extra=fields(pid=pid))

    def remove_files_of_stopped_hosts(self) -> None:
        """On the way out, what the stopped hosts leave in the state directory: the log of each
        host that stopped cleanly (a crashed host's log stays, to tell why), and the hosts
        directory once empty. A host removes its own socket and state file as it stops."""
        hosts_dirs = set()
        for pid, log_path in self.logs.items():
            hosts_dirs.add(log_path.parent)
            if self.exit_codes.get(pid) == 0:
                for path in (log_path, log_path.with_name(log_path.name + ".1")):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        for directory in hosts_dirs | {self.state_dir / HOSTS_DIR}:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty: the agent's or a crashed host's files stay

    async def run(self) -> int:
        subreaper = -1
        with contextlib.suppress(Exception):
            subreaper = ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if subreaper != 0 and self.template is not None:
            # A host forked by the template is our child only because we are its subreaper.
            log.warning("cannot become a child subreaper; driver hosts start without the host template")
            self.template = None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / SUPERVISOR_SOCKET
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        server = await asyncio.start_unix_server(self.serve_client, str(path))
        path.chmod(0o600)
        log.info("supervisor listening", extra=fields(socket=str(path), pid=os.getpid()))
        log.log(
            logging.INFO if self.trees.base is not None else logging.WARNING,
            proctree.describe(self.trees),
        )
        self.trees.remove_empty(self.state_dir / HOSTS_DIR)
        self.start_template()
        async with server, asyncio.TaskGroup() as group:
            if self.metrics_address:
                group.create_task(metricsserver.serve(self.metrics_address, REGISTRY, stop))
            await stop.wait()
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if self.template is not None:
            self.template.close()  # it exits at the end of its socket
        await self.stop_hosts()
        log.info("supervisor stopped")
        return 0


def _op_label(request: Mapping[str, Any]) -> str:
    """The op as a label: one of OPS, else 'other' (a label must not take any value a client sends)."""
    op = request.get("op")
    return op if isinstance(op, str) and op in OPS else "other"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storage-agent supervise", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("STORAGE_AGENT_STATE_DIR", "/var/lib/storage-agent")),
        help="the agent's state directory; the socket is <state-dir>/supervisor.sock (default: %(default)s)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, how long hosts may take to stop their drivers before they are killed (default: %(default)s)",
    )
    proctree.add_argument(parser)
    parser.add_argument(
        "--host-start",
        choices=HOST_STARTS_CHOICES,
        default=os.environ.get("STORAGE_AGENT_HOST_START", "template"),
        help="how a driver host starts: template (forked from a warm host template: less memory, "
        "faster) or exec (a fresh interpreter each) (default: $STORAGE_AGENT_HOST_START, else %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        type=health_address,
        default=os.environ.get("METRICS_ADDRESS", ""),
        help="HOST:PORT to serve Prometheus metrics on, at /metrics; empty to disable "
        "(default: $METRICS_ADDRESS, else disabled)",
    )
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format", choices=["json", "text"], default=os.environ.get("LOG_FORMAT", "json")
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("storage-agent-supervisor", args.log_level, args.log_format)
    try:
        trees = proctree.choose(args.host_cgroup)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    supervisor = Supervisor(args.state_dir, args.stop_timeout, trees, args.metrics, args.host_start)
    return asyncio.run(supervisor.run())


if __name__ == "__main__":
    sys.exit(main())
