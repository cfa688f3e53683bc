"""Helpers for driver-runtime tests: a probe driver with configurable misbehaviour, a real
storage-agent process, NodeDevices for real loop devices, and finding (only our own) driver
host processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage_driver_agent.drivers import proctree
from storage_driver_agent.drivers.host import HOST_MODULE
from storage_driver_agent.drivers.template import TEMPLATE_MODULE
from storage_driver_api.constants import API_VERSION, DEVICE_TYPE_LABEL, NODE_LABEL, node_label_value
from storage_driver_api.nodedevice import DeviceIdentity, IdentityKind, node_device_name

from tests.harness.loopdev import LoopDevice
from tests.harness.processes import ComponentProcess, console_script

# A driver that records every call in a journal (config["journal"]) and misbehaves on request:
#   crashAfter: seconds after start, exit the host with exitCode (default 7)
#   hangInStop: stop() never returns;  ignoreSigterm: the host ignores SIGTERM
#   allocateInStart / allocateInAttach: bytes to allocate (to exceed the memory limit)
#   failAttach: device names whose attach raises;  failStart: start raises
#   hangInAttach / hangInHealth: a marker file; the first call (the marker does not exist yet)
#     creates it and never returns, later ones (a restarted host) behave
#   spawnChildren: start a child (sleep) and a daemon that double-forks and calls setsid(); both
#     pids go to the journal ("spawned": child, daemon)
PROBE_DRIVER = """
import json, os, signal, subprocess, threading, time
from storage_driver_sdk import DeviceType, storage_driver


def _journal(cfg, event, **data):
    path = cfg.get("journal")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **data}) + "\\n")


def _hang_once(cfg, key):
    marker = cfg.get(key)
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        _journal(cfg, "hang", where=key)
        while True:
            time.sleep(1)


def _spawn_children(cfg):
    child = subprocess.Popen(["sleep", "600"])
    read, write = os.pipe()
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(write, str(os.getpid()).encode())
            os.execvp("sleep", ["sleep", "601"])
        os._exit(0)
    os.waitpid(first, 0)
    os.close(write)
    daemon = int(os.read(read, 32))
    os.close(read)
    _journal(cfg, "spawned", child=child.pid, daemon=daemon)


@storage_driver("__NAME__", version="__VERSION__", supported_devices=[DeviceType.LOOP], description="test probe")
class ProbeDriver:
    def start(self, config):
        self.config = dict(config)
        self.keep = None
        _journal(self.config, "start", config=dict(self.config))
        if self.config.get("failStart"):
            raise RuntimeError("failStart was requested")
        if self.config.get("ignoreSigterm"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.config.get("allocateInStart"):
            self.keep = bytearray(int(self.config["allocateInStart"]))
        if self.config.get("spawnChildren"):
            _spawn_children(self.config)
        crash_after = self.config.get("crashAfter")
        if crash_after is not None:
            def crash():
                time.sleep(float(crash_after))
                _journal(self.config, "crash")
                os._exit(int(self.config.get("exitCode", 7)))
            threading.Thread(target=crash, daemon=True).start()

    def attach(self, device):
        _journal(self.config, "attach", device=device.name, devPath=device.dev_path)
        _hang_once(self.config, "hangInAttach")
        if device.name in self.config.get("failAttach", []):
            raise RuntimeError(f"failAttach: {device.name}")
        if self.config.get("allocateInAttach"):
            self.keep = bytearray(int(self.config["allocateInAttach"]))
        return {"devPath": device.dev_path, "sizeBytes": device.size_bytes, "marker": "__NAME__"}

    def detach(self, device):
        _journal(self.config, "detach", device=device.name)

    def health(self):
        _hang_once(self.config, "hangInHealth")
        return {"healthy": not self.config.get("unhealthy"), "message": "probe says so"}

    def stop(self):
        _journal(self.config, "stop")
        if self.config.get("hangInStop"):
            while True:
                time.sleep(1)
"""

SIDE_EFFECT_DRIVER = """
import os, pathlib
pathlib.Path(__MARKER__).write_text("imported!")
os._exit(99)
from storage_driver_sdk import DeviceType, storage_driver

@storage_driver("Side Effects", version="0.1.0", supported_devices=[DeviceType.LOOP])
class SideEffects:
    def start(self, config): ...
    def attach(self, device): ...
    def detach(self, device): ...
    def stop(self): ...
"""


def probe_source(driver_name: str = "Probe Driver", version: str = "1.0.0") -> str:
    return PROBE_DRIVER.replace("__NAME__", driver_name).replace("__VERSION__", version)


def write_probe(
    directory: Path, file: str = "probe.py", driver_name: str = "Probe Driver", version: str = "1.0.0"
) -> str:
    """Write a probe driver file; returns its sha256."""
    data = probe_source(driver_name, version).encode()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / file).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def short_tmpdir(prefix: str = "sdo-rt-") -> Path:
    """A short directory: unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# --- driver host processes -------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        return [
            a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a
        ]
    except OSError:
        return []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def host_processes(state_dir: Path) -> dict[int, str]:
    """pid -> driver name of every live driver host whose socket lies in state_dir (ours only)."""
    found: dict[int, str] = {}
    prefix = str(state_dir) + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = _cmdline(int(entry.name))
        if HOST_MODULE not in args or "--socket" not in args:
            continue
        socket = args[args.index("--socket") + 1]
        if socket.startswith(prefix) and not _zombie(int(entry.name)):
            found[int(entry.name)] = args[args.index("--name") + 1]
    return found


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def process_args(pid: int) -> list[str]:
    return _cmdline(pid)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def host_templates(supervisor: int) -> list[int]:
    """The pids of a supervisor's host templates (its children running template.py)."""
    return [c for c in children(supervisor) if TEMPLATE_MODULE in process_args(c)]


def process_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _zombie(pid)


def kill_hosts(state_dir: Path) -> list[int]:
    """SIGKILL the driver hosts of one state directory (a test's own); returns their pids."""
    pids = list(host_processes(state_dir))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    remove_host_cgroups(state_dir)
    return pids


def remove_host_cgroups(state_dir: Path) -> None:
    """The (empty) cgroups the killed hosts of a test's state directory leave behind."""
    for hierarchy in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/pids")):
        base = hierarchy / proctree.TREES_DIR
        if base.is_dir():
            for _ in range(20):  # a killed host may take a moment to be reaped
                proctree.ProcessTrees("cgroup", base).remove_empty(state_dir / "hosts")
                if not list(base.glob(f"*-{proctree.hosts_dir_suffix(state_dir / 'hosts')}")):
                    break
                time.sleep(0.05)


def start_supervisor(
    state_dir: Path, log: Path, *extra: str, ready: str = "supervisor listening"
) -> ComponentProcess:
    """A real `storage-agent supervise` for one state directory (a test's own), started; `extra`
    are further options (--host-start, --host-cgroup, --stop-timeout)."""
    argv = [
        console_script("storage-agent"),
        "supervise",
        "--state-dir",
        str(state_dir),
        "--log-format",
        "text",
    ]
    process = ComponentProcess("supervisor", [*argv, *extra], log).start()
    process.wait_for_log(ready)
    return process


# --- NodeDevices for real loop devices -------------------------------------------------------


def loop_node_device(node: str, device: LoopDevice) -> dict[str, Any]:
    """The NodeDevice the device part of the agent publishes for an attached loop device."""
    sys_path = Path(f"/sys/block/{device.name}").resolve()
    identity = f"{node}/{device.name}/{device.backing_file}"
    name = node_device_name(node, DeviceIdentity(kind=IdentityKind.VIRTUAL, value=identity))
    return {
        "apiVersion": API_VERSION,
        "kind": "NodeDevice",
        "metadata": {
            "name": name,
            "labels": {NODE_LABEL: node_label_value(node), DEVICE_TYPE_LABEL: "loop"},
        },
        "spec": {
            "nodeName": node,
            "type": "loop",
            "identity": {"kind": "virtual", "value": identity},
            "kernelName": device.name,
            "devPath": str(device.path),
            "sysPath": str(sys_path),
            "sizeBytes": int((sys_path / "size").read_text()) * 512,
            "rotational": False,
            "removable": False,
            "readOnly": False,
            "logicalBlockSize": int((sys_path / "queue" / "logical_block_size").read_text()),
            "kernelDriver": "loop",
            "backingFile": str(device.backing_file),
        },
    }


# --- the agent -------------------------------------------------------------------------------


@dataclass
class Agent:
    """A real storage-agent process for one node, with its own state and driver directories."""

    node: str
    kubeconfig: Path
    namespace: str
    root: Path
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # e.g. STORAGE_AGENT_BOOT_ID, a simulated reboot
    process: ComponentProcess | None = None
    runs: int = 0

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def driver_dir(self) -> Path:
        return self.root / "drivers"

    @property
    def log_path(self) -> Path:
        return self.root / f"agent-{self.runs}.log"

    def start(self, *extra: str) -> Agent:
        self.runs += 1
        argv = [
            console_script("storage-agent"),
            "--node-name",
            self.node,
            "--kubeconfig",
            str(self.kubeconfig),
            "--namespace",
            self.namespace,
            "--state-dir",
            str(self.state_dir),
            "--driver-dir",
            str(self.driver_dir),
            "--log-format",
            "text",
            "--restart-backoff",
            "0.5",
            "--lease-renew",
            "2",
            "--driver-dir-debounce",
            "0.3",
            *self.extra,
            *extra,
        ]
        self.process = ComponentProcess(
            f"storage-agent-{self.runs}", argv, self.log_path, env=dict(self.env)
        ).start()
        self.process.wait_for_log("driver runtime ready", timeout=60)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def log(self, lines: int = 80) -> str:
        return self.process.log(lines) if self.process else ""

    def hosts(self) -> dict[int, str]:
        return host_processes(self.state_dir)

    def cleanup(self) -> None:
        self.stop()
        kill_hosts(self.state_dir)


def desired_driver(
    name: str,
    *,
    path: str = "probe.py",
    driver_name: str = "Probe Driver",
    version: str = "1.0.0",
    devices: list[str] | None = None,
    config: dict[str, Any] | None = None,
    grace: int = 5,
    priority: int = 0,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One entry of NodeDriverConfig.spec.drivers, as the operator writes it."""
    return {
        "name": name,
        "driverName": driver_name,
        "version": version,
        "source": source or {"kind": "hostPath", "path": path},
        "config": config or {},
        "unloadGracePeriodSeconds": grace,
        "devices": devices or [],
        "priority": priority,
    }


def iter_events(items: list[dict[str, Any]], node: str) -> Iterator[tuple[str, str]]:
    for item in items:
        involved = item.get("involvedObject") or {}
        if involved.get("kind") == "NodeDriverConfig" and involved.get("name") == node:
            yield item["reason"], item.get("message", "")
