"""A real local Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

    python -m tests.harness.localcluster up|down|status|env

Everything lives under `.local-cluster/` in the checkout (certificates, data, logs, pid files,
the admin kubeconfig); the binaries come from the cache that `hack/build-kubernetes.sh` fills.
There is no kubelet: `up` registers this machine as a Node with its real kernel, OS and
architecture, and tests create further (simulated) Nodes themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import platform
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from storage_driver_api.kube import NODES, ApiError, KubeClient, load_kubeconfig

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = "1.20.2"
KUBE_BUILD_REVISION = 2  # as in hack/build-kubernetes.sh


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class ClusterConfig:
    """Where the cluster lives and which loopback ports it uses (all overridable by env)."""

    root: Path
    bin_dir: Path
    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    controller_manager_port: int

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


COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")


def log(message: str) -> None:
    print(f"[local-cluster] {message}", flush=True)


# --- certificates ----------------------------------------------------------------------------


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _issue(
    name: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    *,
    ca: bool = False,
    server_names: list[str] | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name = issuer[0].subject if issuer else name
    signing_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650 if ca else 825))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        sans: list[x509.GeneralName] = []
        for entry in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                sans.append(x509.DNSName(entry))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _subject(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def ensure_pki(cfg: ClusterConfig) -> None:
    """CA, apiserver serving certificate, client certificates and the service-account key."""
    pki = cfg.pki
    if (pki / "complete").exists():
        return
    log(f"generating certificates in {pki}")
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_cert = _issue(_subject("storage-driver-operator-local-ca"), ca_key, None, ca=True)
    _write_key(pki / "ca.key", ca_key)
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def leaf(name: str, subject: x509.Name, **kwargs: object) -> None:
        key = _key()
        cert = _issue(subject, key, (ca_cert, ca_key), **kwargs)  # type: ignore[arg-type]
        _write_key(pki / f"{name}.key", key)
        (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    leaf(
        "apiserver",
        _subject("kube-apiserver"),
        server_names=[
            "127.0.0.1",
            "10.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
    )
    leaf("admin", _subject("local-admin", "system:masters"), client=True)
    leaf("controller-manager", _subject("system:kube-controller-manager"), client=True)
    _write_key(pki / "service-account.key", _key())
    sa_key = serialization.load_pem_private_key((pki / "service-account.key").read_bytes(), None)
    (pki / "service-account.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (pki / "complete").touch()


def write_kubeconfig(cfg: ClusterConfig, path: Path, user: str, cert: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {"server": cfg.server, "certificate-authority": str(cfg.pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(cfg.pki / f"{cert}.crt"),
                    "client-key": str(cfg.pki / f"{cert}.key"),
                },
            }
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# --- processes -------------------------------------------------------------------------------


def _pid_alive(pid: int, component: str) -> bool:
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
    return pid if _pid_alive(pid, component) else None


def _start(cfg: ClusterConfig, component: str, binary: str, args: list[str]) -> int:
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
    while not _pid_alive(proc.pid, component) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc.pid


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _wait_for(what: str, check: object, timeout: float, component: str, cfg: ClusterConfig) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(cfg, component) is None:
            tail = cfg.log_file(component).read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"{component} exited while waiting for {what}; last log lines:\n" + "\n".join(tail)
            )
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}; see {cfg.log_file(component)}")


def _https_ok(url: str, cfg: ClusterConfig, client_cert: bool = True) -> bool:
    ctx = ssl.create_default_context(cafile=str(cfg.pki / "ca.crt"))
    if client_cert:
        ctx.load_cert_chain(cfg.pki / "admin.crt", cfg.pki / "admin.key")
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
        return bool(resp.status == 200)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


def is_up(cfg: ClusterConfig) -> bool:
    if any(running_pid(cfg, c) is None for c in COMPONENTS):
        return False
    try:
        return _https_ok(f"{cfg.server}/readyz", cfg)
    except Exception:
        return False


def up(cfg: ClusterConfig) -> None:
    if is_up(cfg):
        log(f"already up at {cfg.server} (kubeconfig {cfg.kubeconfig}); nothing to do")
        return
    for binary in ("kube-apiserver", "kube-controller-manager"):
        if not (cfg.bin_dir / binary).exists():
            raise SystemExit(
                f"[local-cluster] {binary} not found in {cfg.bin_dir}; run 'make kube-binaries' first"
            )
    # Partially running from an earlier failure: start from a clean set of processes.
    stop_processes(cfg, quiet=True)
    for port in (cfg.etcd_port, cfg.etcd_peer_port, cfg.apiserver_port, cfg.controller_manager_port):
        if _port_in_use(port):
            raise SystemExit(
                f"[local-cluster] port {port} on 127.0.0.1 is taken by another process; "
                "free it or choose other ports with SDO_ETCD_PORT / SDO_ETCD_PEER_PORT / "
                "SDO_APISERVER_PORT / SDO_CONTROLLER_MANAGER_PORT"
            )
    started = time.monotonic()
    ensure_pki(cfg)
    write_kubeconfig(cfg, cfg.kubeconfig, "admin", "admin")
    write_kubeconfig(
        cfg,
        cfg.root / "controller-manager.kubeconfig",
        "system:kube-controller-manager",
        "controller-manager",
    )
    pki = cfg.pki

    log(f"starting etcd on 127.0.0.1:{cfg.etcd_port}")
    _start(
        cfg,
        "etcd",
        "etcd",
        [
            "--name=local",
            f"--data-dir={cfg.root / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{cfg.etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{cfg.etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{cfg.etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{cfg.etcd_peer_port}",
            f"--initial-cluster=local=http://127.0.0.1:{cfg.etcd_peer_port}",
            "--listen-metrics-urls=",
            "--quota-backend-bytes=4294967296",
            "--snapshot-count=10000",
            "--log-level=warn",
        ],
    )
    _wait_for("etcd health", lambda: _http_ok(f"http://127.0.0.1:{cfg.etcd_port}/health"), 30, "etcd", cfg)

    log(f"starting kube-apiserver {KUBE_VERSION} on 127.0.0.1:{cfg.apiserver_port}")
    _start(
        cfg,
        "kube-apiserver",
        str(cfg.bin_dir / "kube-apiserver"),
        [
            f"--etcd-servers=http://127.0.0.1:{cfg.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={cfg.apiserver_port}",
            "--insecure-port=0",
            f"--cert-dir={cfg.root / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={pki / 'service-account.pub'}",
            f"--service-account-signing-key-file={pki / 'service-account.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.0.0.0/24",
            # A loopback advertise address cannot be an Endpoints address; nothing needs it here.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--event-ttl=1h",
            "--v=1",
        ],
    )
    _wait_for(
        "kube-apiserver /readyz", lambda: _https_ok(f"{cfg.server}/readyz", cfg), 90, "kube-apiserver", cfg
    )

    log(f"starting kube-controller-manager on 127.0.0.1:{cfg.controller_manager_port}")
    cm_kubeconfig = cfg.root / "controller-manager.kubeconfig"
    _start(
        cfg,
        "kube-controller-manager",
        str(cfg.bin_dir / "kube-controller-manager"),
        [
            f"--kubeconfig={cm_kubeconfig}",
            f"--authentication-kubeconfig={cm_kubeconfig}",
            f"--authorization-kubeconfig={cm_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={cfg.controller_manager_port}",
            "--port=0",
            f"--cert-dir={cfg.root / 'controller-manager-certs'}",
            f"--service-account-private-key-file={pki / 'service-account.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--controllers=*",
            "--v=1",
        ],
    )
    _wait_for(
        "kube-controller-manager /healthz",
        lambda: _https_ok(f"https://127.0.0.1:{cfg.controller_manager_port}/healthz", cfg, client_cert=False),
        60,
        "kube-controller-manager",
        cfg,
    )
    node = asyncio.run(register_local_node(cfg))
    log(f"up in {time.monotonic() - started:.1f}s; registered Node {node!r}")
    log(f"use it with: export KUBECONFIG={cfg.kubeconfig}")


def stop_processes(cfg: ClusterConfig, *, quiet: bool = False) -> None:
    for component in reversed(COMPONENTS):
        pid = running_pid(cfg, component)
        if pid is None:
            cfg.pid_file(component).unlink(missing_ok=True)
            continue
        if not quiet:
            log(f"stopping {component} (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _pid_alive(pid, component) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid, component):
            os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid, component):
                time.sleep(0.05)
        cfg.pid_file(component).unlink(missing_ok=True)


def down(cfg: ClusterConfig) -> None:
    stop_processes(cfg)
    busy = [
        p
        for p in (cfg.etcd_port, cfg.etcd_peer_port, cfg.apiserver_port, cfg.controller_manager_port)
        if _port_in_use(p)
    ]
    if busy:
        raise SystemExit(f"[local-cluster] ports still in use after stopping: {busy}")
    log("down; nothing of ours is running or listening")


# --- the local Node --------------------------------------------------------------------------


def _os_image() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def local_node_name() -> str:
    return socket.gethostname().split(".")[0].lower()


def local_node_info() -> dict[str, str]:
    uname = os.uname()
    return {
        "kernelVersion": uname.release,
        "osImage": _os_image(),
        "operatingSystem": "linux",
        "architecture": GO_ARCH.get(uname.machine, uname.machine),
        "kubeletVersion": f"v{KUBE_VERSION}",
        "kubeProxyVersion": f"v{KUBE_VERSION}",
        "containerRuntimeVersion": "",
        "machineID": Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else "",
        "systemUUID": "",
        "bootID": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
    }


def node_manifest(
    name: str, node_info: dict[str, str], labels: dict[str, str] | None = None
) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": node_info.get("operatingSystem", "linux"),
                "kubernetes.io/arch": node_info.get("architecture", "amd64"),
                **(labels or {}),
            },
        },
    }


async def ensure_node(
    client: KubeClient, name: str, node_info: dict[str, str], labels: dict[str, str] | None = None
) -> dict[str, object]:
    """Create (or update) a Node object with the given nodeInfo, as a kubelet would register it."""
    manifest = node_manifest(name, node_info, labels)
    try:
        await client.create(NODES, manifest)
    except ApiError as exc:
        if not exc.conflict:
            raise
        await client.patch(NODES, name, {"metadata": manifest["metadata"]})
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "status": {
            "nodeInfo": node_info,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "LocalClusterNode",
                    "message": "registered by the local cluster harness (no kubelet)",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        }
    }
    return await client.patch(NODES, name, status, subresource="status")


async def register_local_node(cfg: ClusterConfig) -> str:
    name = local_node_name()
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as client:
        await ensure_node(client, name, local_node_info())
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    args = parser.parse_args(argv)
    cfg = ClusterConfig.from_env()
    if args.command == "up":
        try:
            up(cfg)
        except RuntimeError as exc:
            log(f"FAILED: {exc}")
            log("the processes that started were stopped; fix the cause and rerun 'make cluster-up'")
            stop_processes(cfg, quiet=True)
            return 1
    elif args.command == "down":
        down(cfg)
    elif args.command == "status":
        for component in COMPONENTS:
            pid = running_pid(cfg, component)
            print(f"{component:26} {'running pid ' + str(pid) if pid else 'stopped'}")
        print(f"{'api server':26} {'ready at ' + cfg.server if is_up(cfg) else 'not ready'}")
        return 0 if is_up(cfg) else 1
    else:
        print(f"export KUBECONFIG={cfg.kubeconfig}")
        print(f"export PATH={cfg.bin_dir}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
