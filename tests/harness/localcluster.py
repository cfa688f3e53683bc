"""A real one-node Kubernetes cluster on this machine: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler on loopback, and this machine as a real node
(containerd, kubelet, kube-proxy and a bridge pod network: `tests/harness/localnode.py`).

    python -m tests.harness.localcluster up|down|status|env

Everything lives under `.local-cluster/` in the checkout (certificates, data, logs, pid files,
the admin kubeconfig, containerd's images); the binaries come from the cache that
`hack/build-kubernetes.sh` fills. The kubelet registers this machine's Node itself; tests
create further (simulated) Nodes, which have no kubelet, themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from storage_driver_api.kube import NODES, PODS, ApiError, KubeClient, load_kubeconfig

from tests.harness import auditlog, localnode
from tests.harness.daemons import (
    COMPONENTS,
    KUBE_VERSION,
    REPO_ROOT,
    ClusterConfig,
    http_ok,
    https_ok,
    log,
    port_in_use,
    running_pid,
    start,
    stop,
    wait_for,
)

# Where the harness and the tests have always found them.
__all__ = ["COMPONENTS", "KUBE_VERSION", "REPO_ROOT", "ClusterConfig", "running_pid"]

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


def _leaves(cfg: ClusterConfig) -> dict[str, dict[str, object]]:
    """Every certificate signed by the cluster CA: file stem -> subject and usage."""
    node = local_node_name()
    return {
        "apiserver": {
            "subject": _subject("kube-apiserver"),
            "server_names": [
                "127.0.0.1",
                "10.0.0.1",
                cfg.gateway_ip,
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        },
        "admin": {"subject": _subject("local-admin", "system:masters"), "client": True},
        "controller-manager": {"subject": _subject("system:kube-controller-manager"), "client": True},
        "scheduler": {"subject": _subject("system:kube-scheduler"), "client": True},
        "kube-proxy": {"subject": _subject("system:kube-proxy"), "client": True},
        # The API server's identity towards kubelets (kubectl logs, exec).
        "apiserver-kubelet-client": {
            "subject": _subject("kube-apiserver-kubelet-client", "system:masters"),
            "client": True,
        },
        # Named after the node: the Node authorizer admits a kubelet for its own Node only.
        f"kubelet-client-{node}": {
            "subject": _subject(f"system:node:{node}", "system:nodes"),
            "client": True,
        },
        f"kubelet-serving-{node}": {"subject": _subject(node), "server_names": [cfg.gateway_ip, node]},
    }


def ensure_pki(cfg: ClusterConfig) -> None:
    """CA, serving and client certificates, and the service-account key; what exists is kept."""
    pki = cfg.pki
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.key").exists():
        log(f"generating the cluster CA in {pki}")
        new_key = _key()
        new_cert = _issue(_subject("storage-driver-operator-local-ca"), new_key, None, ca=True)
        _write_key(pki / "ca.key", new_key)
        (pki / "ca.crt").write_bytes(new_cert.public_bytes(serialization.Encoding.PEM))
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    for name, spec in _leaves(cfg).items():
        if (pki / f"{name}.crt").exists():
            continue
        log(f"generating certificate {name}")
        key = _key()
        kwargs = {k: v for k, v in spec.items() if k != "subject"}
        cert = _issue(spec["subject"], key, (ca_cert, ca_key), **kwargs)  # type: ignore[arg-type]
        _write_key(pki / f"{name}.key", key)
        (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if not (pki / "service-account.key").exists():
        _write_key(pki / "service-account.key", _key())
        sa_key = serialization.load_pem_private_key((pki / "service-account.key").read_bytes(), None)
        (pki / "service-account.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


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


def is_up(cfg: ClusterConfig) -> bool:
    if any(running_pid(cfg, c) is None for c in cfg.components):
        return False
    try:
        return https_ok(f"{cfg.server}/readyz", cfg)
    except Exception:
        return False


def _ports(cfg: ClusterConfig) -> dict[str, tuple[int, ...]]:
    return {
        "etcd": (cfg.etcd_port, cfg.etcd_peer_port),
        "kube-apiserver": (cfg.apiserver_port,),
        "kube-controller-manager": (cfg.controller_manager_port,),
        "kube-scheduler": (cfg.scheduler_port,),
        "containerd": (),
        "kube-proxy": (cfg.proxy_metrics_port, cfg.proxy_healthz_port),
        "kubelet": (cfg.kubelet_port, cfg.kubelet_healthz_port),
    }


def _check_prerequisites(cfg: ClusterConfig, starting: list[str]) -> None:
    binaries = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    tools = ["etcd"]
    if cfg.with_node:
        binaries += ["kubelet", "kube-proxy"]
        tools += ["containerd", "runc", "ctr", "iptables", "ip"]
    for binary in binaries:
        if not (cfg.bin_dir / binary).exists():
            raise SystemExit(
                f"[local-cluster] {binary} not found in {cfg.bin_dir}; run 'make kube-binaries' first"
            )
    for tool in tools:
        if shutil.which(tool) is None:
            raise SystemExit(f"[local-cluster] {tool} is not installed; run 'make deps' first")
    if cfg.with_node and os.geteuid() != 0:
        raise SystemExit(
            "[local-cluster] the node (containerd, kubelet, kube-proxy) needs root; "
            "SDO_NODE=off runs the control plane alone"
        )
    if "kubelet" in starting and (others := localnode.other_kubelets(cfg)):
        raise SystemExit(
            f"[local-cluster] another kubelet runs on this machine (pid {others[0]}): a machine is one "
            "node; stop that cluster first (make cluster-down in its checkout), or run this one "
            "without a node (SDO_NODE=off)"
        )
    for component in starting:
        for port in _ports(cfg)[component]:
            if port_in_use(port):
                raise SystemExit(
                    f"[local-cluster] port {port} on 127.0.0.1 (for {component}) is taken by another "
                    "process; free it or choose other ports (SDO_*_PORT, docs/local-cluster.md)"
                )


def _kubeconfigs(cfg: ClusterConfig) -> None:
    write_kubeconfig(cfg, cfg.kubeconfig, "admin", "admin")
    node = local_node_name()
    for name, user, cert in (
        ("controller-manager", "system:kube-controller-manager", "controller-manager"),
        ("scheduler", "system:kube-scheduler", "scheduler"),
        ("kube-proxy", "system:kube-proxy", "kube-proxy"),
        ("kubelet", f"system:node:{node}", f"kubelet-client-{node}"),
    ):
        write_kubeconfig(cfg, cfg.root / f"{name}.kubeconfig", user, cert)


def _start_etcd(cfg: ClusterConfig) -> None:
    log(f"starting etcd on 127.0.0.1:{cfg.etcd_port}")
    start(
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


def _start_apiserver(cfg: ClusterConfig) -> None:
    pki = cfg.pki
    log(f"starting kube-apiserver {KUBE_VERSION} on port {cfg.apiserver_port}")
    start(
        cfg,
        "kube-apiserver",
        str(cfg.bin_dir / "kube-apiserver"),
        [
            f"--etcd-servers=http://127.0.0.1:{cfg.etcd_port}",
            # Loopback for the harness and the tests, the bridge's address for pods (behind the
            # kubernetes Service); nothing routes to this machine from elsewhere.
            "--bind-address=0.0.0.0",
            f"--advertise-address={cfg.advertise_ip}",
            "--endpoint-reconciler-type=lease",
            f"--secure-port={cfg.apiserver_port}",
            "--insecure-port=0",
            f"--cert-dir={cfg.root / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-key-file={pki / 'service-account.pub'}",
            f"--service-account-signing-key-file={pki / 'service-account.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={cfg.service_cidr}",
            "--allow-privileged=true",
            "--event-ttl=1h",
            f"--audit-policy-file={auditlog.policy_file(cfg)}",
            f"--audit-log-path={auditlog.log_file(cfg)}",
            "--audit-log-maxsize=200",
            "--audit-log-maxbackup=1",
            "--v=1",
        ],
    )


def _start_controller_manager(cfg: ClusterConfig) -> None:
    log(f"starting kube-controller-manager on 127.0.0.1:{cfg.controller_manager_port}")
    kubeconfig = cfg.root / "controller-manager.kubeconfig"
    start(
        cfg,
        "kube-controller-manager",
        str(cfg.bin_dir / "kube-controller-manager"),
        [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={cfg.controller_manager_port}",
            "--port=0",
            f"--cert-dir={cfg.root / 'controller-manager-certs'}",
            f"--service-account-private-key-file={cfg.pki / 'service-account.key'}",
            f"--root-ca-file={cfg.pki / 'ca.crt'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--controllers=*",
            "--v=1",
        ],
    )


def _start_scheduler(cfg: ClusterConfig) -> None:
    log(f"starting kube-scheduler on 127.0.0.1:{cfg.scheduler_port}")
    kubeconfig = cfg.root / "scheduler.kubeconfig"
    start(
        cfg,
        "kube-scheduler",
        str(cfg.bin_dir / "kube-scheduler"),
        [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={cfg.scheduler_port}",
            "--port=0",
            f"--cert-dir={cfg.root / 'scheduler-certs'}",
            "--leader-elect=false",
            "--v=1",
        ],
    )


def _secure_healthz(cfg: ClusterConfig, port: int) -> Callable[[], bool]:
    return lambda: https_ok(f"https://127.0.0.1:{port}/healthz", cfg, client_cert=False)


def up(cfg: ClusterConfig) -> None:
    if is_up(cfg):
        log(f"already up at {cfg.server} (kubeconfig {cfg.kubeconfig}); nothing to do")
        return
    # Partly running (a component crashed, or a test stopped one): start what is missing, in
    # the order each needs the one before.
    missing = [c for c in cfg.components if running_pid(cfg, c) is None]
    if len(missing) < len(cfg.components):
        log(f"partly up: starting {', '.join(missing)}")
    _check_prerequisites(cfg, missing)
    started = time.monotonic()
    ensure_pki(cfg)
    _kubeconfigs(cfg)
    node = local_node_name()
    if cfg.with_node:
        localnode.ensure_bridge(cfg)
    steps: list[tuple[str, Callable[[], None], Callable[[], object] | None, float]] = [
        ("etcd", lambda: _start_etcd(cfg), lambda: http_ok(f"http://127.0.0.1:{cfg.etcd_port}/health"), 30),
        ("kube-apiserver", lambda: _start_apiserver(cfg), lambda: https_ok(f"{cfg.server}/readyz", cfg), 90),
        ("kube-controller-manager", lambda: _start_controller_manager(cfg), None, 0),
        ("kube-scheduler", lambda: _start_scheduler(cfg), None, 0),
        ("containerd", lambda: localnode.start_containerd(cfg), None, 0),
        ("kube-proxy", lambda: localnode.start_kube_proxy(cfg, node), None, 0),
        ("kubelet", lambda: localnode.start_kubelet(cfg, node), None, 0),
    ]
    for component, start_it, ready, timeout in steps:
        if component in missing:
            start_it()
        if ready is not None:
            wait_for(f"{component} to be ready", ready, timeout, component, cfg)
    if cfg.with_node:
        localnode.ensure_pause_image(cfg)
    wait_for("kube-controller-manager /healthz", _secure_healthz(cfg, cfg.controller_manager_port), 60,
             "kube-controller-manager", cfg)  # fmt: skip
    wait_for("kube-scheduler /healthz", _secure_healthz(cfg, cfg.scheduler_port), 60, "kube-scheduler", cfg)
    if cfg.with_node:
        localnode.wait_node_healthy(cfg)
        asyncio.run(wait_local_node_ready(cfg, node))
        log(
            f"up in {time.monotonic() - started:.1f}s; Node {node!r} is Ready (kubelet {KUBE_VERSION}, containerd)"
        )
    else:
        log(
            f"up in {time.monotonic() - started:.1f}s; control plane only (SDO_NODE=off): no kubelet, no pods"
        )
    log(f"use it with: export KUBECONFIG={cfg.kubeconfig}")


async def wait_local_node_ready(cfg: ClusterConfig, node: str, timeout: float = 120) -> None:
    """The kubelet registers the Node itself and reports it Ready once the pod network is."""
    deadline = time.monotonic() + timeout
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as client:
        while time.monotonic() < deadline:
            obj = await client.get_or_none(NODES, node)
            conditions = (obj or {}).get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return
            if running_pid(cfg, "kubelet") is None:
                raise RuntimeError(f"the kubelet exited; see {cfg.log_file('kubelet')}")
            await asyncio.sleep(0.5)
    raise RuntimeError(f"Node {node} did not become Ready in {timeout:.0f}s; see {cfg.log_file('kubelet')}")


async def _delete_local_pods(cfg: ClusterConfig, node: str, timeout: float) -> None:
    """Delete every Pod on the node through the API (each with its own grace period) and wait
    for the kubelet to end them: the graceful path, which also releases their network."""
    on_node = f"spec.nodeName={node}"
    async with KubeClient(load_kubeconfig(cfg.kubeconfig)) as client:
        items, _ = await client.list(PODS, field_selector=on_node)
        for pod in items:
            await client.delete(PODS, pod["metadata"]["name"], pod["metadata"]["namespace"])
        deadline = time.monotonic() + timeout
        while items and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            items, _ = await client.list(PODS, field_selector=on_node)
        # Past the deadline the kubelet is stuck: forget the Pods, the teardown ends them.
        for pod in items:
            path = PODS.path(pod["metadata"]["name"], pod["metadata"]["namespace"])
            with contextlib.suppress(ApiError):
                await client.request("DELETE", path, body={"gracePeriodSeconds": 0})


def stop_processes(cfg: ClusterConfig, *, quiet: bool = False, pod_timeout: float = 60) -> None:
    """Stop the node and the control plane, in the order that lets each clean up after itself."""
    # No new Pods: the controllers and the scheduler stop first, then the node's Pods end
    # gracefully, then the node, then what stores the cluster.
    stop(cfg, "kube-controller-manager", quiet=quiet)
    stop(cfg, "kube-scheduler", quiet=quiet)
    if all(running_pid(cfg, c) for c in ("kube-apiserver", "kubelet")):
        if not quiet:
            log("deleting the node's Pods and waiting for the kubelet to end them")
        with contextlib.suppress(Exception):
            asyncio.run(_delete_local_pods(cfg, local_node_name(), pod_timeout))
    # Without a node of ours, what the sweep removes (KUBE-* rules, kubepods cgroups, pod network
    # namespaces) belongs to the machine's node: leave it alone.
    if cfg.with_node:
        swept = localnode.teardown(cfg, quiet=quiet)
        if swept and not quiet:
            log(f"swept up what the node left: {', '.join(swept)}")
    stop(cfg, "kube-apiserver", quiet=quiet)
    stop(cfg, "etcd", quiet=quiet)


def down(cfg: ClusterConfig) -> None:
    stop_processes(cfg)
    busy = [p for p in cfg.ports if port_in_use(p)]
    if busy:
        raise SystemExit(f"[local-cluster] ports still in use after stopping: {busy}")
    if cfg.with_node and (left := localnode.leftovers(cfg)):
        raise SystemExit(f"[local-cluster] left behind after stopping: {left}")
    log("down; nothing of ours is running, listening, mounted or routed")


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


async def ensure_local_node(client: KubeClient) -> dict[str, object]:
    """This machine's Node. With a node, its kubelet registered it and keeps it up to date: never
    written here (a Node the kubelet did not create makes kubelet 1.20 panic, and it owns the
    status). Without one (SDO_NODE=off), a simulated Node with this machine's nodeInfo."""
    name = local_node_name()
    if not ClusterConfig.from_env().with_node:
        return await ensure_node(client, name, local_node_info())
    obj = await client.get_or_none(NODES, name)
    if obj is None:
        raise AssertionError(
            f"Node {name} is not registered: its kubelet is not running or the Node was deleted "
            "(the kubelet registers once, at start: 'make cluster-down cluster-up')"
        )
    return obj


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
        for component in cfg.components:
            pid = running_pid(cfg, component)
            print(f"{component:26} {'running pid ' + str(pid) if pid else 'stopped'}")
        print(f"{'api server':26} {'ready at ' + cfg.server if is_up(cfg) else 'not ready'}")
        if cfg.with_node:
            print(
                f"{'pod network':26} bridge {cfg.bridge} {cfg.gateway_ip}, pods {cfg.pod_cidr}, "
                f"services {cfg.service_cidr}"
            )
        else:
            print(f"{'node':26} simulated (SDO_NODE=off): no kubelet, no pods")
        return 0 if is_up(cfg) else 1
    else:
        print(f"export KUBECONFIG={cfg.kubeconfig}")
        print(f"export PATH={cfg.bin_dir}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
