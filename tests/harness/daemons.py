"""The local cluster's configuration and its daemons: where each lives, how it is started,
found again by pid (a recycled pid is never taken for ours), waited for and stopped."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = "1.20.2"
KUBE_BUILD_REVISION = 2  # as in hack/build-kubernetes.sh


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_switch(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise SystemExit(f"[local-cluster] {name}={value!r}: use on or off")


@dataclass(frozen=True)
class ClusterConfig:
    """Where the cluster lives and which loopback ports it uses (all overridable by env)."""

    root: Path
    bin_dir: Path
    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    controller_manager_port: int
    scheduler_port: int
    kubelet_port: int
    kubelet_healthz_port: int
    proxy_metrics_port: int
    proxy_healthz_port: int
    # The pod network: a bridge of its own whose first address is the gateway, the node's IP
    # and the API server's advertised address (pods reach it through the kubernetes Service).
    bridge: str
    pod_cidr: ipaddress.IPv4Network
    # Off: the control plane only, and this machine's Node a simulated object. A machine has
    # room for one kubelet, so other checkouts on the same machine run their clusters this way.
    with_node: bool = True

    @classmethod
    def from_env(cls) -> ClusterConfig:
        cache = Path(
            os.environ.get("SDO_CACHE_DIR")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "storage-driver-operator"
        )
        return cls(
            root=Path(os.environ.get("SDO_CLUSTER_DIR") or REPO_ROOT / ".local-cluster"),
            bin_dir=cache / f"kubernetes-{KUBE_VERSION}-r{KUBE_BUILD_REVISION}" / "bin",
            etcd_port=_env_int("SDO_ETCD_PORT", 23790),
            etcd_peer_port=_env_int("SDO_ETCD_PEER_PORT", 23800),
            apiserver_port=_env_int("SDO_APISERVER_PORT", 16443),
            controller_manager_port=_env_int("SDO_CONTROLLER_MANAGER_PORT", 20257),
            scheduler_port=_env_int("SDO_SCHEDULER_PORT", 21259),
            kubelet_port=_env_int("SDO_KUBELET_PORT", 21250),
            kubelet_healthz_port=_env_int("SDO_KUBELET_HEALTHZ_PORT", 21248),
            proxy_metrics_port=_env_int("SDO_PROXY_METRICS_PORT", 21249),
            proxy_healthz_port=_env_int("SDO_PROXY_HEALTHZ_PORT", 21256),
            bridge=os.environ.get("SDO_BRIDGE", "sdo0"),
            pod_cidr=ipaddress.IPv4Network(os.environ.get("SDO_POD_CIDR", "10.244.0.0/24")),
            with_node=_env_switch("SDO_NODE", True),
        )

    @property
    def components(self) -> tuple[str, ...]:
        """The processes this cluster runs, in start order."""
        return COMPONENTS if self.with_node else CONTROL_PLANE

    @property
    def advertise_ip(self) -> str:
        """The API server's address: the bridge's for pods (behind the kubernetes Service)."""
        return self.gateway_ip if self.with_node else "127.0.0.1"

    @property
    def gateway_ip(self) -> str:
        return str(self.pod_cidr.network_address + 1)

    @property
    def service_cidr(self) -> str:
        return "10.0.0.0/24"

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the cluster listens on (on loopback, or the bridge for the kubelet); the
        node's only when it runs one (without, another cluster's node may hold them)."""
        control_plane = (
            self.etcd_port,
            self.etcd_peer_port,
            self.apiserver_port,
            self.controller_manager_port,
            self.scheduler_port,
        )
        if not self.with_node:
            return control_plane
        return (
            *control_plane,
            self.kubelet_port,
            self.kubelet_healthz_port,
            self.proxy_metrics_port,
            self.proxy_healthz_port,
        )

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    def pid_file(self, component: str) -> Path:
        return self.root / "run" / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"


CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE = ("containerd", "kube-proxy", "kubelet")
COMPONENTS = CONTROL_PLANE + NODE


def log(message: str) -> None:
    print(f"[local-cluster] {message}", flush=True)


def pid_alive(pid: int, component: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    # A recycled pid must not be mistaken for (or killed as) our component.
    return Path(cmdline.decode(errors="replace")).name == component


def running_pid(cfg: ClusterConfig, component: str) -> int | None:
    try:
        pid = int(cfg.pid_file(component).read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, component) else None


def start(cfg: ClusterConfig, component: str, binary: str, args: list[str]) -> int:
    cfg.log_file(component).parent.mkdir(parents=True, exist_ok=True)
    cfg.pid_file(component).parent.mkdir(parents=True, exist_ok=True)
    with cfg.log_file(component).open("ab") as out:
        proc = subprocess.Popen(
            [binary, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    cfg.pid_file(component).write_text(str(proc.pid))
    # Until the child has exec'd, /proc/<pid>/cmdline still names python, and running_pid()
    # would report the component as exited; wait for the exec (or the exit) first.
    deadline = time.monotonic() + 10
    while not pid_alive(proc.pid, component) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc.pid


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_for(
    what: str, check: Callable[[], object], timeout: float, component: str, cfg: ClusterConfig
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(cfg, component) is None:
            tail = cfg.log_file(component).read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"{component} exited while waiting for {what}; last log lines:\n" + "\n".join(tail)
            )
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}; see {cfg.log_file(component)}")


def https_ok(url: str, cfg: ClusterConfig, client_cert: bool = True) -> bool:
    ctx = ssl.create_default_context(cafile=str(cfg.pki / "ca.crt"))
    if client_cert:
        ctx.load_cert_chain(cfg.pki / "admin.crt", cfg.pki / "admin.key")
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
        return bool(resp.status == 200)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


def stop(cfg: ClusterConfig, component: str, *, quiet: bool = False, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after `timeout`; the pid file goes either way."""
    pid = running_pid(cfg, component)
    if pid is None:
        cfg.pid_file(component).unlink(missing_ok=True)
        return
    if not quiet:
        log(f"stopping {component} (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid, component) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid, component):
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid, component):
            time.sleep(0.05)
    cfg.pid_file(component).unlink(missing_ok=True)
