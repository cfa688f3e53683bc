"""Driver host: runs one driver in its own process, so that a driver can crash, leak or hang
without touching the agent or other drivers.

    python -m storage_driver_agent.drivers.host --name loop-info --driver-name "Loop Info Driver" ...

The agent (or the supervisor, on the agent's request) starts it; it serves the driver host
protocol (storage_driver_sdk.protocol) on a unix socket and records what it runs in a state
file next to the socket. Both outlive the agent's connection: a restarted agent connects again
and adopts the host. If no agent connects within the adoption window, the host stops its driver
cleanly (detach every device, stop) and exits, so nothing is left running unmanaged.

It imports nothing but the standard library and the SDK (an import-linter contract keeps it so):
every loaded driver costs one such process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from storage_driver_sdk.decorator import driver_metadata
from storage_driver_sdk.digest import irregular_refused, manifest_sha256, package_contents, package_irregular
from storage_driver_sdk.driver import Device
from storage_driver_sdk.protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ErrorInfo,
    Op,
    ProtocolError,
    Request,
    Response,
    decode_request,
)

from storage_driver_agent.drivers import proctree
from storage_driver_agent.drivers.verified import VerifiedPackage

HOST_MODULE: Final = "storage_driver_agent.drivers.host"
EXIT_OK: Final = 0
EXIT_LOAD_FAILED: Final = 3
EXIT_USAGE: Final = 2
EXIT_TERMINATED: Final = 128 + signal.SIGTERM
LISTEN_FD_OPTION: Final = "--listen-fd"

log = logging.getLogger("storage_driver_host")


@dataclass(frozen=True)
class HostArgs:
    name: str  # the StorageDriver object's name
    driver_name: str
    version: str
    sha256: str
    path: Path  # driver file or package directory
    class_name: str
    module: str
    socket: Path
    state_file: Path
    boot_id: str
    adoption_window: float
    memory_limit: int
    restarts: int
    cgroup: Path | None = None
    listen_fd: int | None = None


def parse_args(argv: list[str] | None) -> HostArgs:
    ns = parser().parse_args(argv)
    return HostArgs(**{k: v for k, v in vars(ns).items()})


@functools.cache
def parser() -> argparse.ArgumentParser:
    """Built once: a host forked from the template (template.py) reuses the template's."""
    parser = argparse.ArgumentParser(prog=f"python -m {HOST_MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="StorageDriver name (shown by ps)")
    parser.add_argument("--driver-name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--sha256", required=True, help="hash the driver file must have")
    parser.add_argument("--path", type=Path, required=True, help="driver file or package directory")
    parser.add_argument("--class-name", required=True)
    parser.add_argument("--module", default="", help="module inside a package that declares the class")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument("--boot-id", default="")
    parser.add_argument("--adoption-window", type=float, default=300.0)
    parser.add_argument("--memory-limit", type=int, default=0, help="address-space limit in bytes; 0: none")
    parser.add_argument("--restarts", type=int, default=0)
    parser.add_argument(
        "--cgroup", type=Path, default=None, help="the cgroup to join before loading the driver"
    )
    parser.add_argument(
        LISTEN_FD_OPTION,
        type=int,
        default=None,
        help="an inherited socket already listening at --socket (bind_listener); without it the host binds one",
    )
    return parser


def argv_socket(argv: list[str]) -> Path | None:
    """The --socket a host's command line names (it identifies the host), if any."""
    try:
        return Path(argv[argv.index("--socket") + 1])
    except (ValueError, IndexError):
        return None


def bind_listener(path: Path) -> socket.socket:
    """A listening socket at `path`, for the agent to connect to; one left by a host of this
    driver that died is replaced. The launcher binds it before the host starts and hands it over
    (LISTEN_FD_OPTION): the agent's connect succeeds as soon as the host is spawned and its first
    request waits in the socket until the host is ready, instead of the agent polling for the
    socket to appear (and asking the supervisor meanwhile whether the host still lives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        path.chmod(0o600)
        listener.listen(4)
    except OSError:
        listener.close()
        raise
    return listener


# --- process set-up --------------------------------------------------------------------------


class JsonLogFormatter(logging.Formatter):
    def __init__(self, driver: str):
        super().__init__()
        self.driver = driver

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": "driver-host",
            "driver": self.driver,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def set_process_name(name: str) -> None:
    """Name the process 'sdh:<driver>' for top and ps -o comm (the command line names it too)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(f"sdh:{name}"[:15])


def apply_memory_limit(limit: int) -> None:
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


# --- loading the driver ----------------------------------------------------------------------


class LoadError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _module_name(wanted: str) -> str:
    # Never shadow the standard library or a module already imported.
    if wanted.isidentifier() and wanted not in sys.modules and wanted not in sys.stdlib_module_names:
        return wanted
    return f"storage_driver_file_{''.join(c if c.isalnum() else '_' for c in wanted)}"


def import_driver_class(args: HostArgs) -> type:
    """Import the verified driver file (or package) and return its decorated class."""
    path = args.path
    if path.is_dir():
        if irregular := package_irregular(path):
            raise LoadError("InvalidDriverFile", f"package {path}: {irregular_refused(irregular)}")
        # Import exactly the bytes whose hash was checked, as for a file: a package file replaced
        # (or added) after the check cannot slip in.
        contents = package_contents(path)
        actual = manifest_sha256(contents)
        if actual != args.sha256:
            raise LoadError("ChecksumMismatch", f"package {path} has sha256 {actual}, expected {args.sha256}")
        name = _module_name(path.name)
        sys.meta_path.insert(0, VerifiedPackage(name, path, contents))
        package = importlib.import_module(name)
        module = importlib.import_module(f"{name}.{args.module}") if args.module else package
    else:
        # Compile exactly the bytes whose hash was checked: a file replaced meanwhile cannot slip in.
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != args.sha256:
            raise LoadError("ChecksumMismatch", f"file {path} has sha256 {actual}, expected {args.sha256}")
        name = _module_name(path.stem)
        module = types.ModuleType(name)
        module.__file__ = str(path)
        sys.modules[name] = module
        exec(compile(data, str(path), "exec"), module.__dict__)
    cls = getattr(module, args.class_name, None)
    if not isinstance(cls, type) or driver_metadata(cls) is None:
        raise LoadError("ImportFailed", f"{path} has no @storage_driver class {args.class_name}")
    return cls


def describe(exc: BaseException) -> ErrorInfo:
    return ErrorInfo(
        type=getattr(exc, "reason", None) or type(exc).__name__,
        message=str(exc) or type(exc).__name__,
        traceback="".join(traceback.format_exception(exc))[-8000:],
    )


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class Terminated(BaseException):
    """SIGTERM arrived: stop the driver cleanly and exit."""


# --- the host --------------------------------------------------------------------------------


class DriverHost:
    def __init__(self, args: HostArgs):
        self.args = args
        self.driver: Any = None
        self.config_json = ""
        self.attached: dict[str, Device] = {}
        self.facts: dict[str, Any] = {}
        self.started_at = time.time()
        self.phase = "starting"
        self.stopping = False
        self.exit_code: int | None = None

    # --- state file --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "protocol": PROTOCOL_VERSION,
            "name": self.args.name,
            "driverName": self.args.driver_name,
            "version": self.args.version,
            "sha256": self.args.sha256,
            "path": str(self.args.path),
            "className": self.args.class_name,
            "pid": pid,
            "procStart": process_start_ticks(pid),
            "socket": str(self.args.socket),
            "bootId": self.args.boot_id,
            "startedAt": self.started_at,
            "restarts": self.args.restarts,
            "phase": self.phase,
            "configJson": self.config_json,
            "attached": sorted(self.attached),
            "facts": self.facts,
        }

    def write_state(self) -> None:
        tmp = self.args.state_file.with_name(f".{self.args.state_file.name}.tmp")
        tmp.write_text(json.dumps(self.describe(), default=str))
        tmp.replace(self.args.state_file)

    def remove_files(self) -> None:
        for path in (self.args.socket, self.args.state_file):
            with contextlib.suppress(OSError):
                path.unlink()

    # --- operations --------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        handler: Callable[[Mapping[str, Any]], Mapping[str, Any]] = {
            Op.HELLO: self.op_hello,
            Op.LOAD: self.op_load,
            Op.ATTACH: self.op_attach,
            Op.DETACH: self.op_detach,
            Op.HEALTH: self.op_health,
            Op.UNLOAD: self.op_unload,
        }[request.op]
        try:
            return Response(request.id, True, json_safe(handler(request.args)))
        except Terminated:
            raise
        except BaseException as exc:  # a driver may raise anything, SystemExit included
            log.warning("%s failed: %s", request.op.value, exc, exc_info=not isinstance(exc, LoadError))
            if request.op is Op.LOAD:
                self.exit_code = EXIT_LOAD_FAILED
            return Response(request.id, False, error=describe(exc))

    def op_hello(self, args: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.describe()

    def op_load(self, args: Mapping[str, Any]) -> Mapping[str, Any]:
        if self.driver is not None:
            raise RuntimeError("the driver is already loaded")
        config = args.get("config") or {}
        cls = import_driver_class(self.args)
        driver = cls()
        driver.start(config)
        self.driver = driver
        self.config_json = str(args.get("configJson", json.dumps(config, sort_keys=True)))
        self.phase = "running"
        log.info("driver started")
        attached, failed = {}, {}
        for message in args.get("devices") or []:
            device = Device.from_message(message)
            try:
                attached[device.name] = self._attach(device)
            except Exception as exc:
                log.warning("attach %s failed: %s", device.name, exc, exc_info=True)
                failed[device.name] = describe(exc).to_json()
        self.write_state()
        return {"attached": attached, "failed": failed, "pid": os.getpid()}

    def _attach(self, device: Device) -> Any:
        if device.name in self.attached:
            return self.facts.get(device.name)
        facts = json_safe(self.driver.attach(device) or {})
        self.attached[device.name] = device
        self.facts[device.name] = facts
        log.info("attached %s (%s)", device.name, device.dev_path or device.kernel_name)
        return facts

    def _require_driver(self) -> None:
        if self.driver is None:
            raise RuntimeError("no driver loaded; send load first")

    def op_attach(self, args: Mapping[str, Any]) -> Mapping[str, Any]:
        self._require_driver()
        facts = self._attach(Device.from_message(args["device"]))
        self.write_state()
        return {"facts": facts}

    def op_detach(self, args: Mapping[str, Any]) -> Mapping[str, Any]:
        self._require_driver()
        name = str(args["name"])
        device = self.attached.pop(name, None)
        if device is not None:
            # Forgotten even if detach raises: the device is released as far as the driver can.
            self.facts.pop(name, None)
            self.write_state()
            self.driver.detach(device)
            log.info("detached %s", name)
        return {}

    def op_health(self, args: Mapping[str, Any]) -> Mapping[str, Any]:
        self._require_driver()
        check = getattr(self.driver, "health", None)
        if check is None:
            return {"healthy": True, "message": ""}
        try:
            result = check()
        except Exception as exc:
            return {"healthy": False, "message": f"health() raised {type(exc).__name__}: {exc}"}
        if result is None or result is True:
            return {"healthy": True, "message": ""}
        if result is False:
            return {"healthy": False, "message": "health() returned False"}
        if isinstance(result, Mapping):
            return {"healthy": bool(result.get("healthy", True)), "message": str(result.get("message", ""))}
        return {"healthy": bool(result), "message": ""}

    def op_unload(self, args: Mapping[str, Any]) -> Mapping[str, Any]:
        errors = self.unload()
        self.exit_code = EXIT_OK
        return {"errors": errors}

    def unload(self) -> list[str]:
        """Detach every device, then stop the driver; errors are collected, never fatal."""
        self.stopping = True
        self.phase = "stopping"
        errors: list[str] = []
        if self.driver is None:
            return errors
        for name, device in list(self.attached.items()):
            try:
                self.driver.detach(device)
                log.info("detached %s", name)
            except Exception as exc:
                errors.append(f"detach {name}: {type(exc).__name__}: {exc}")
                log.warning("detach %s failed: %s", name, exc, exc_info=True)
            del self.attached[name]
        try:
            self.driver.stop()
            log.info("driver stopped")
        except Exception as exc:
            errors.append(f"stop: {type(exc).__name__}: {exc}")
            log.warning("stop failed: %s", exc, exc_info=True)
        self.driver = None
        return errors

    # --- serving -----------------------------------------------------------------------------

    def on_sigterm(self, signum: int, frame: types.FrameType | None) -> None:
        if self.stopping:
            # Already stopping and told to terminate: the grace period is over.
            os._exit(EXIT_TERMINATED)
        raise Terminated()

    def listen(self) -> socket.socket:
        if self.args.listen_fd is None:
            return bind_listener(self.args.socket)
        listener = socket.socket(fileno=self.args.listen_fd)
        listener.set_inheritable(False)  # the driver's own processes get no way in
        return listener

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self.on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        listener = self.listen()
        self.write_state()
        log.info("driver host listening on %s", self.args.socket)
        try:
            return self._loop(listener)
        except Terminated:
            log.info("terminated: stopping the driver")
            self.unload()
            return EXIT_OK
        finally:
            listener.close()
            self.remove_files()
            # Whatever the driver started dies with its host, even when no agent is there to see it.
            if leftovers := proctree.end_own_tree(self.args.cgroup):
                log.warning("killed %d process(es) the driver left running: %s", len(leftovers), leftovers)

    def _loop(self, listener: socket.socket) -> int:
        conn: socket.socket | None = None
        buffer = b""
        disconnected_since: float | None = time.monotonic()
        while True:
            timeout = None
            if conn is None and disconnected_since is not None:
                timeout = max(0.0, disconnected_since + self.args.adoption_window - time.monotonic())
            readable, _, _ = select.select([listener] + ([conn] if conn else []), [], [], timeout)
            if not readable:
                log.warning(
                    "no agent connected for %.0fs (the adoption window): stopping the driver and exiting",
                    self.args.adoption_window,
                )
                self.unload()
                return EXIT_OK
            if listener in readable:
                new, _ = listener.accept()
                if conn is not None:
                    log.info("a new agent connection replaces the previous one")
                    conn.close()
                conn, buffer, disconnected_since = new, b"", None
                continue
            assert conn is not None
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                log.info(
                    "agent disconnected; waiting up to %.0fs for it to return", self.args.adoption_window
                )
                conn.close()
                conn, buffer, disconnected_since = None, b"", time.monotonic()
                continue
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                if not self._answer(conn, line):
                    conn.close()
                    conn, buffer, disconnected_since = None, b"", time.monotonic()
                    break
                if self.exit_code is not None:
                    conn.close()
                    return self.exit_code
            if conn is not None and len(buffer) > MAX_MESSAGE_BYTES:
                log.warning("request larger than %d bytes; closing the connection", MAX_MESSAGE_BYTES)
                conn.close()
                conn, buffer, disconnected_since = None, b"", time.monotonic()

    def _answer(self, conn: socket.socket, line: bytes) -> bool:
        try:
            request = decode_request(line)
        except ProtocolError as exc:
            log.warning("bad request: %s", exc)
            return False
        response = self.handle(request)
        try:
            conn.sendall(response.encode())
        except (OSError, ProtocolError) as exc:
            log.warning("cannot answer the agent: %s", exc)
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(args.name))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    set_process_name(args.name)
    if args.cgroup is not None:
        try:
            proctree.join(args.cgroup)
        except OSError as exc:
            # The launcher made the cgroup for this host: running outside it would let the
            # driver's processes escape unload.
            log.error("cannot join the driver host's cgroup %s: %s", args.cgroup, exc)
            return EXIT_USAGE
    try:
        apply_memory_limit(args.memory_limit)
    except (ValueError, OSError) as exc:
        log.error("cannot set the memory limit of %d bytes: %s", args.memory_limit, exc)
        return EXIT_USAGE
    return DriverHost(args).serve()


if __name__ == "__main__":
    sys.exit(main())
