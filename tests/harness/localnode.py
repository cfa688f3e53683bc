"""This machine as the local cluster's real node: containerd, kube-proxy and the kubelet, a
bridge pod network that stays on this machine, and a teardown that leaves nothing behind.

The recipe (and why each setting) is in docs/local-cluster.md. Everything the node writes lives
under the cluster directory, except what Kubernetes 1.20 or containerd fix in place: pod log
directories (/var/log/pods, /var/log/containers), network namespaces (/var/run/netns/cni-*),
the kubelet's QoS cgroups (kubepods) and iptables chains (KUBE-*). `teardown` removes those too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from tests.harness.daemons import REPO_ROOT, ClusterConfig, http_ok, log, running_pid, start, stop, wait_for

CNI_BIN_DIR = Path("/usr/lib/cni")
NETNS_DIR = Path("/var/run/netns")
POD_LOG_DIRS = (Path("/var/log/pods"), Path("/var/log/containers"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
PAUSE_IMAGE = "localhost/storage-driver-operator/pause:3.5"
NODE_IMAGES_SCRIPT = REPO_ROOT / "hack" / "node-images.sh"


def containerd_dir(cfg: ClusterConfig) -> Path:
    return cfg.root / "containerd"


def containerd_socket(cfg: ClusterConfig) -> Path:
    return containerd_dir(cfg) / "containerd.sock"


def kubelet_dir(cfg: ClusterConfig) -> Path:
    return cfg.root / "kubelet"


def ctr(cfg: ClusterConfig, *args: str, check: bool = True, timeout: float = 120) -> str:
    """containerd's own client, in the namespace the kubelet's pods live in."""
    result = subprocess.run(
        ["ctr", f"--address={containerd_socket(cfg)}", "--namespace=k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


# --- configuration ---------------------------------------------------------------------------


def write_containerd_config(cfg: ClusterConfig) -> Path:
    base = containerd_dir(cfg)
    (base / "cni").mkdir(parents=True, exist_ok=True)
    config = f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"

[grpc]
  address = "{containerd_socket(cfg)}"

[ttrpc]
  address = "{base / "containerd.sock.ttrpc"}"

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  # Built here (hack/node-images.sh): no registry is reachable.
  sandbox_image = "{PAUSE_IMAGE}"
  # Without CAP_SYS_RESOURCE the negative oom_score_adj asked for sandboxes makes runc fail.
  restrict_oom_score_adj = true
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    # Works on any filesystem, overlay or not.
    snapshotter = "native"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{base / "cni"}"
"""
    path = base / "config.toml"
    path.write_text(config)
    # The pod network: the bridge the harness made, no masquerade, and routes to the pod and
    # service ranges only (no default route), so that nothing a pod sends leaves this machine.
    network = {
        "cniVersion": "0.4.0",
        "name": "storage-driver-operator-local",
        "plugins": [
            {
                "type": "bridge",
                "bridge": cfg.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(base / "ipam"),
                    "ranges": [[{"subnet": str(cfg.pod_cidr), "gateway": cfg.gateway_ip}]],
                    "routes": [{"dst": cfg.service_cidr}],
                },
            },
            {"type": "loopback"},
        ],
    }
    # containerd's CNI loader wants a .conflist for a plugin list.
    (base / "cni" / "10-storage-driver-operator.conflist").write_text(json.dumps(network, indent=2))
    return path


def write_kubelet_config(cfg: ClusterConfig, node: str) -> Path:
    pki = cfg.pki
    base = kubelet_dir(cfg)
    base.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": cfg.gateway_ip,
        "port": cfg.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": cfg.kubelet_healthz_port,
        "tlsCertFile": str(pki / f"kubelet-serving-{node}.crt"),
        "tlsPrivateKeyFile": str(pki / f"kubelet-serving-{node}.key"),
        # Only holders of a certificate of the cluster CA (the API server) may call the kubelet,
        # and the API server's authorizer decides what they may do.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        # A shared test machine: no reservations, no evictions, no image garbage collection of
        # the images the harness imported (they cannot be pulled again).
        "enforceNodeAllocatable": [],
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "clusterDomain": "cluster.local",
        "volumeStatsAggPeriod": "0s",
        "serializeImagePulls": False,
    }
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_kube_proxy_config(cfg: ClusterConfig, node: str) -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(cfg.root / "kube-proxy.kubeconfig")},
        "mode": "iptables",
        "hostnameOverride": node,
        "clusterCIDR": str(cfg.pod_cidr),
        "metricsBindAddress": f"127.0.0.1:{cfg.proxy_metrics_port}",
        "healthzBindAddress": f"127.0.0.1:{cfg.proxy_healthz_port}",
        # Leave the machine's conntrack settings alone (0 = do not change).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"masqueradeAll": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
    }
    path = cfg.root / "kube-proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- the pod network's bridge ----------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def bridge_exists(cfg: ClusterConfig) -> bool:
    return _ip("link", "show", cfg.bridge, check=False).returncode == 0


def ensure_bridge(cfg: ClusterConfig) -> None:
    """The bridge exists before the API server starts: its address is the one it advertises."""
    if not bridge_exists(cfg):
        log(f"creating bridge {cfg.bridge} with {cfg.gateway_ip}/{cfg.pod_cidr.prefixlen}")
        _ip("link", "add", cfg.bridge, "type", "bridge")
    addresses = _ip("-o", "-4", "addr", "show", "dev", cfg.bridge).stdout
    if f" {cfg.gateway_ip}/" not in addresses:
        _ip("addr", "add", f"{cfg.gateway_ip}/{cfg.pod_cidr.prefixlen}", "dev", cfg.bridge)
    _ip("link", "set", cfg.bridge, "up")


# --- processes -------------------------------------------------------------------------------


def start_containerd(cfg: ClusterConfig) -> None:
    config = write_containerd_config(cfg)
    log(f"starting containerd (socket {containerd_socket(cfg)})")
    start(cfg, "containerd", "containerd", [f"--config={config}"])
    wait_for("containerd's socket", lambda: ctr(cfg, "version", timeout=5), 30, "containerd", cfg)


def ensure_pause_image(cfg: ClusterConfig) -> None:
    """The sandbox image, built here and imported once into this containerd."""
    if PAUSE_IMAGE in ctr(cfg, "images", "list", "--quiet").split():
        return
    result = subprocess.run(
        [str(NODE_IMAGES_SCRIPT), "pause"],
        capture_output=True,
        text=True,
        env={**os.environ, "SDO_CLUSTER_DIR": str(cfg.root)},
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"could not build or import the pause image:\n{result.stdout}{result.stderr}")


def start_kube_proxy(cfg: ClusterConfig, node: str) -> None:
    config = write_kube_proxy_config(cfg, node)
    log("starting kube-proxy (iptables mode)")
    start(cfg, "kube-proxy", str(cfg.bin_dir / "kube-proxy"), [f"--config={config}", "--v=1"])


def start_kubelet(cfg: ClusterConfig, node: str) -> None:
    config = write_kubelet_config(cfg, node)
    base = kubelet_dir(cfg)
    log(f"starting kubelet for Node {node!r} (node IP {cfg.gateway_ip}, port {cfg.kubelet_port})")
    start(
        cfg,
        "kubelet",
        str(cfg.bin_dir / "kubelet"),
        [
            f"--config={config}",
            f"--kubeconfig={cfg.root / 'kubelet.kubeconfig'}",
            f"--root-dir={base / 'root'}",
            f"--cert-dir={base / 'pki'}",
            "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{containerd_socket(cfg)}",
            f"--pod-infra-container-image={PAUSE_IMAGE}",
            f"--hostname-override={node}",
            f"--node-ip={cfg.gateway_ip}",
            "--v=1",
        ],
    )


def wait_node_healthy(cfg: ClusterConfig) -> None:
    kubelet, proxy = (
        f"http://127.0.0.1:{p}/healthz" for p in (cfg.kubelet_healthz_port, cfg.proxy_healthz_port)
    )
    wait_for("kubelet /healthz", lambda: http_ok(kubelet), 90, "kubelet", cfg)
    wait_for("kube-proxy /healthz", lambda: http_ok(proxy), 60, "kube-proxy", cfg)


def other_kubelets(cfg: ClusterConfig) -> list[int]:
    """Kubelets on this machine that are not this cluster's: a machine has room for one node
    (kubelets share the kubepods cgroups and clean up pods they do not know)."""
    ours = running_pid(cfg, "kubelet")
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            is_kubelet = proc.name.isdigit() and (proc / "comm").read_text().strip() == "kubelet"
            # An exited kubelet its parent has not reaped yet is no kubelet.
            if is_kubelet and int(proc.name) != ours and not _zombie(int(proc.name)):
                found.append(int(proc.name))
    return found


# --- teardown --------------------------------------------------------------------------------


def _sandboxes(cfg: ClusterConfig) -> list[str]:
    if running_pid(cfg, "containerd") is None:
        return []
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        return ctr(cfg, "tasks", "list", "--quiet", timeout=15).split()
    return []


def kill_containers(cfg: ClusterConfig) -> None:
    """Every container of the node, through containerd (the kubelet is already stopped)."""
    for task in _sandboxes(cfg):
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            ctr(cfg, "tasks", "kill", "--signal=SIGKILL", task, check=False, timeout=15)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listing = ctr(cfg, "tasks", "list", check=False, timeout=15) if running_pid(cfg, "containerd") else ""
        if "RUNNING" not in listing:
            break
        time.sleep(0.2)
    for task in _sandboxes(cfg):
        ctr(cfg, "tasks", "delete", "--force", task, check=False, timeout=15)
    for container in ctr(cfg, "containers", "list", "--quiet", check=False, timeout=15).split():
        ctr(cfg, "containers", "delete", container, check=False, timeout=15)


def _processes_of(cfg: ClusterConfig) -> list[int]:
    """Shims of our containerd and anything still in a kubepods cgroup."""
    address = str(containerd_socket(cfg)).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if (b"containerd-shim" in cmdline and address in cmdline) or "/kubepods" in cgroups:
            found.append(int(proc.name))
    return found


def kill_leftover_processes(cfg: ClusterConfig) -> list[int]:
    pids = _processes_of(cfg)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return pids


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def mounts_under(*roots: Path) -> list[Path]:
    """Mount points below any of `roots`, deepest first (the order to unmount them in)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if any(point == root or root in point.parents for root in roots):
            points.append(point)
    return sorted(set(points), key=lambda p: len(p.parts), reverse=True)


def pod_netns() -> list[Path]:
    return sorted(NETNS_DIR.glob("cni-*")) if NETNS_DIR.is_dir() else []


def kube_cgroups() -> list[Path]:
    """The kubelet's QoS and pod cgroups in every hierarchy, deepest first."""
    found: list[Path] = []
    for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else []:
        top = hierarchy / "kubepods"
        if top.is_dir():
            found.extend(p for p in top.rglob("*") if p.is_dir())
            found.append(top)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


IPTABLES_CHAIN = re.compile(r"^:(KUBE-\S+) ")


def kube_iptables_rules(binary: str = "iptables") -> list[str]:
    """Every chain and rule of Kubernetes' (KUBE-*) in `binary`'s tables."""
    if shutil.which(f"{binary}-save") is None:
        return []
    saved = subprocess.run([f"{binary}-save"], capture_output=True, text=True).stdout
    return [
        line
        for line in saved.splitlines()
        if IPTABLES_CHAIN.match(line) or (line.startswith("-A") and "KUBE-" in line)
    ]


def remove_kube_iptables(binary: str = "iptables") -> None:
    """Drop every KUBE-* chain and every rule that jumps to one; other rules stay as they are."""
    if not kube_iptables_rules(binary):
        return
    saved = subprocess.run([f"{binary}-save"], capture_output=True, text=True, check=True).stdout
    kept = [
        line
        for line in saved.splitlines()
        if not IPTABLES_CHAIN.match(line) and not (line.startswith("-A") and "KUBE-" in line)
    ]
    subprocess.run([f"{binary}-restore"], input="\n".join(kept) + "\n", text=True, check=True)


def teardown(cfg: ClusterConfig, *, quiet: bool = False) -> list[str]:
    """Stop the node and remove everything it made; returns what had to be swept up by force."""
    swept: list[str] = []
    stop(cfg, "kubelet", quiet=quiet)
    stop(cfg, "kube-proxy", quiet=quiet)
    kill_containers(cfg)
    stop(cfg, "containerd", quiet=quiet)
    if pids := kill_leftover_processes(cfg):
        swept.append(f"processes {pids}")
    for point in mounts_under(cfg.root, *POD_LOG_DIRS):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True)
    for netns in pod_netns():
        subprocess.run(["ip", "netns", "delete", netns.name], capture_output=True)
        swept.append(f"netns {netns.name}")
    if (cfg.bin_dir / "kube-proxy").exists():
        subprocess.run([str(cfg.bin_dir / "kube-proxy"), "--cleanup"], capture_output=True, timeout=60)
    # The kubelet's own chains (KUBE-FIREWALL, KUBE-MARK-*, canaries), which --cleanup keeps.
    for binary in ("iptables", "ip6tables"):
        remove_kube_iptables(binary)
    for cgroup in kube_cgroups():
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    for directory in POD_LOG_DIRS:
        if directory.is_dir():
            for entry in directory.iterdir():
                if entry.is_symlink() or entry.is_file():
                    entry.unlink()
                else:
                    shutil.rmtree(entry, ignore_errors=True)
    if bridge_exists(cfg):
        _ip("link", "delete", cfg.bridge, check=False)
    # Reserved addresses of pods that no longer exist; a new node starts from an empty range.
    shutil.rmtree(containerd_dir(cfg) / "ipam", ignore_errors=True)
    return swept


def leftovers(cfg: ClusterConfig) -> list[str]:
    """What of the node is still there: empty after `teardown`."""
    found = [f"process {pid}" for pid in _processes_of(cfg) if not _zombie(pid)]
    found += [f"process {c}" for c in ("containerd", "kubelet", "kube-proxy") if running_pid(cfg, c)]
    found += [f"mount {p}" for p in mounts_under(cfg.root, *POD_LOG_DIRS)]
    found += [f"netns {p.name}" for p in pod_netns()]
    found += [f"cgroup {p}" for p in kube_cgroups()]
    found += [f"iptables {r}" for b in ("iptables", "ip6tables") for r in kube_iptables_rules(b)]
    if bridge_exists(cfg):
        found.append(f"bridge {cfg.bridge}")
    return found
