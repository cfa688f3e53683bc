"""`make demo`: the whole project on this machine, one explained step at a time.

    python -m tests.harness.demo up            # what `make demo` runs (again: starts over)
    python -m tests.harness.demo down [--cluster]   # `make demo-down`: stop what `up` started
    python -m tests.harness.demo status

`up` brings up the local cluster (the control plane and this machine as its node), builds the
project's images and imports them into the node's containerd, installs the Helm chart, waits for
the operator, agent and supervisor pods to be Ready, applies the example StorageDriver for loop
devices, attaches a loop device, shows the driver being loaded in the supervisor's pod, detaches
the device and shows the unload. The release keeps running afterwards so that you can look
around; `down` uninstalls it and detaches the demo's own loop devices (the ones backed by a file
in `.local-cluster/demo/`), nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from storage_driver_api.constants import NODE_DEVICES, NODE_DRIVER_CONFIGS, NODE_LABEL, STORAGE_DRIVERS
from storage_driver_api.constants import node_label_value as label_value
from storage_driver_api.kube import EVENTS, LEASES, ApiError, KubeClient, load_kubeconfig

from tests.harness import helm, localcluster
from tests.harness.loopdev import loop_devices_available
from tests.harness.processes import console_script

RELEASE = "storage-driver-operator"
NAMESPACE = "storage-driver-operator"
EXAMPLE = localcluster.REPO_ROOT / "examples" / "storagedriver-loop.yaml"
DRIVER_FILE = localcluster.REPO_ROOT / "examples" / "drivers" / "loop_info.py"
DRIVER = "loop-info"  # metadata.name of the example
STEPS = 6
# The demo's loop device gets a size no other loop device on this machine has (24 MiB plus a few
# pages), and the example is narrowed to that size: other loop devices (another checkout's tests,
# say) then cannot keep the driver loaded after the demo detaches its own.
BASE_SIZE = 24 * 2**20
PAGE = 4096
WAIT = 120.0  # seconds for any one state to be reached; far above what it takes here
COMPONENTS = ("operator", "agent", "supervisor")  # the chart's pods

T = TypeVar("T")


class DemoError(Exception):
    """A step did not reach its state; the message says which and where to look."""


@dataclass(frozen=True)
class Layout:
    """Everything the demo writes lives under `.local-cluster/demo/` (git-ignored)."""

    root: Path

    @classmethod
    def of(cls, cluster: localcluster.ClusterConfig) -> Layout:
        return cls(cluster.root / "demo")

    @property
    def driver_dir(self) -> Path:
        """The node's driver directory (the chart's hostPaths.driverDir)."""
        return self.root / "drivers"

    @property
    def state_dir(self) -> Path:
        """The agent's and supervisor's state directory (the chart's hostPaths.stateDir)."""
        return self.root / "agent-state"

    @property
    def backing_file(self) -> Path:
        return self.root / "loop-device.img"

    @property
    def manifest(self) -> Path:
        return self.root / "storagedriver-loop.yaml"


def rel(path: Path) -> str:
    """Paths inside the checkout as the user types them from its top directory."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(localcluster.REPO_ROOT))
    return str(path)


# --- output -------------------------------------------------------------------------------------


class Narrator:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.step_number = 0

    def step(self, text: str) -> None:
        self.step_number += 1
        elapsed = time.monotonic() - self.started
        print(f"\n==> [{self.step_number}/{STEPS}] {text}  ({elapsed:.1f}s)", flush=True)

    @staticmethod
    def say(text: str) -> None:
        print(f"    {text}", flush=True)

    @staticmethod
    def show(command: str, output: str) -> None:
        print(f"    $ {command}", flush=True)
        for line in output.rstrip("\n").splitlines():
            print(f"      {line}", flush=True)


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, input: str | None = None) -> str:
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=env,
        input=input,
        timeout=180,
        cwd=localcluster.REPO_ROOT,
    )
    if result.returncode != 0:
        raise DemoError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr.strip()}")
    return result.stdout


def kubectl(cluster: localcluster.ClusterConfig, *args: str) -> str:
    return run([str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", *args])


# --- the release's pods -----------------------------------------------------------------------


def release_pods(cluster: localcluster.ClusterConfig) -> dict[str, dict[str, Any]]:
    """The release's live pods by component (a terminating pod is not the component any more)."""
    out = kubectl(
        cluster, "-n", NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"
    )
    pods: dict[str, dict[str, Any]] = {}
    for pod in json.loads(out)["items"]:
        if not pod["metadata"].get("deletionTimestamp"):
            pods[pod["metadata"]["labels"].get("app.kubernetes.io/component", "?")] = pod
    return pods


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def crash_looping(pod: dict[str, Any]) -> str | None:
    """Why the pod's container cannot run, if the kubelet says it cannot (else None)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in (
            "CrashLoopBackOff",
            "ErrImagePull",
            "ImagePullBackOff",
            "CreateContainerError",
        ):
            return f"{waiting['reason']}: {waiting.get('message', '')}".strip()
    return None


def pod_logs(cluster: localcluster.ClusterConfig, component: str, lines: int = 15) -> str:
    try:
        out = kubectl(
            cluster, "-n", NAMESPACE, "logs", f"--tail={lines}", "-l",
            f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}",
        )  # fmt: skip
    except DemoError as exc:
        return f"  (no logs: {exc})"
    return "\n".join(f"  {line}" for line in out.splitlines())


def release_installed(cluster: localcluster.ClusterConfig) -> bool:
    out = run(
        [str(helm.helm_binary()), "list", "-n", NAMESPACE, "-q"], env=helm.environment(cluster.kubeconfig)
    )
    return RELEASE in out.split()


def uninstall(cluster: localcluster.ClusterConfig) -> None:
    """helm uninstall, then wait until the pods are gone (the supervisor stops its driver hosts)."""
    env = helm.environment(cluster.kubeconfig)
    run([str(helm.helm_binary()), "uninstall", RELEASE, "-n", NAMESPACE, "--wait"], env=env)
    selector = f"app.kubernetes.io/instance={RELEASE}"
    with contextlib.suppress(DemoError):  # none left: kubectl says so with an error
        kubectl(cluster, "-n", NAMESPACE, "wait", "--for=delete", "pods", "-l", selector, "--timeout=120s")


# --- loop devices ---------------------------------------------------------------------------------


def attached_loop_devices() -> dict[str, tuple[str, int]]:
    """Every attached loop device: kernel name -> (backing file, size in bytes)."""
    found = {}
    for block in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError, ValueError):
            backing = (block / "loop" / "backing_file").read_text().strip()
            found[block.name] = (backing, int((block / "size").read_text()) * 512)
    return found


def demo_loop_devices(layout: Layout) -> list[str]:
    """Loop devices backed by a file of the demo (also ones a user attached by hand)."""
    prefix = f"{layout.root}/"
    return sorted(
        name for name, (backing, _) in attached_loop_devices().items() if backing.startswith(prefix)
    )


def unused_size() -> int:
    taken = {size for _, size in attached_loop_devices().values()}
    choices = [BASE_SIZE + PAGE * k for k in range(1, 256) if BASE_SIZE + PAGE * k not in taken]
    return random.choice(choices)


def attach_loop_device(backing: Path, size: int) -> str:
    with backing.open("wb") as handle:
        handle.truncate(size)
    return run(["losetup", "--find", "--show", str(backing)]).strip()


def detach_loop_device(device: str) -> None:
    run(["losetup", "--detach", device])


# --- waiting for the cluster --------------------------------------------------------------------


async def wait_for(
    what: str,
    check: Callable[[], Awaitable[T | None]],
    cluster: localcluster.ClusterConfig,
    timeout: float = WAIT,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ApiError):
            result = await check()
            if result:
                return result
        pods = await asyncio.to_thread(release_pods, cluster)
        for component, pod in pods.items():
            if reason := crash_looping(pod):
                raise DemoError(
                    f"the {component} pod cannot run while waiting for {what} ({reason}); its log ends "
                    f"with:\n{pod_logs(cluster, component)}"
                )
        if time.monotonic() > deadline:
            tails = "\n".join(f"{c}:\n{pod_logs(cluster, c)}" for c in COMPONENTS)
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")
        await asyncio.sleep(0.2)


def driver_entries(config: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """This node's wanted (spec) and running (status) entry of the demo's driver."""
    config = config or {}
    wanted = {d["name"]: d for d in (config.get("spec") or {}).get("drivers") or []}
    running = {d["name"]: d for d in (config.get("status") or {}).get("drivers") or []}
    return wanted.get(DRIVER) or {}, running.get(DRIVER) or {}


async def event_names(kube: KubeClient) -> set[str]:
    events, _ = await kube.list(EVENTS, namespace="default")
    return {str(e["metadata"]["name"]) for e in events}


async def new_events(kube: KubeClient, old: set[str], names: set[str]) -> list[list[str]]:
    """Events posted since `old` were listed about the objects named `names`, as table rows."""
    events, _ = await kube.list(EVENTS, namespace="default")
    rows = []
    for event in events:
        involved = event.get("involvedObject") or {}
        if event["metadata"]["name"] in old or involved.get("name") not in names:
            continue
        stamp = event.get("lastTimestamp") or event["metadata"].get("creationTimestamp")
        when = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        source = (event.get("source") or {}).get("component") or event.get("reportingComponent") or ""
        rows.append(
            [
                when.astimezone().strftime("%H:%M:%S"),
                source,
                f"{involved.get('kind', '')}/{involved.get('name', '')}",
                str(event.get("reason", "")),
                str(event.get("message", ""))[:90],
            ]
        )
    return sorted(rows)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )


# --- the demo --------------------------------------------------------------------------------------


def check_prerequisites(cluster: localcluster.ClusterConfig) -> None:
    missing = loop_devices_available()
    if missing:
        raise DemoError(
            f"the demo attaches a real loop device, which {missing}: run it as root (sudo make demo)"
        )
    if not (cluster.bin_dir / "kubelet").exists():
        raise DemoError(f"no Kubernetes binaries in {cluster.bin_dir}: run 'make kube-binaries'")
    if helm.missing():
        raise DemoError(str(helm.missing()))


class Demo:
    """The steps of `make demo`, in order; each says in one line what it does and shows the result."""

    def __init__(self, cluster: localcluster.ClusterConfig, kube: KubeClient, narrator: Narrator):
        self.cluster = cluster
        self.kube = kube
        self.narrator = narrator
        self.layout = Layout.of(cluster)
        self.node = localcluster.local_node_name()
        self.old_events: set[str] = set()  # the Events before this run's StorageDriver

    async def wait(self, what: str, check: Callable[[], Awaitable[T | None]]) -> T:
        return await wait_for(what, check, self.cluster)

    def images(self) -> None:
        self.narrator.step(
            "Build the project's images (make images: buildah, no registry needed; skipped when this "
            "tree's are built) and import them into the node's containerd, as a registry mirror would."
        )
        for script, name in (("build-images.sh", "make images"), ("node-images.sh", "make node-images")):
            argv = [
                str(localcluster.REPO_ROOT / "hack" / script),
                *(["import"] if script == "node-images.sh" else []),
            ]
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=1800,
                cwd=localcluster.REPO_ROOT,
                env={**os.environ, "SDO_CLUSTER_DIR": str(self.cluster.root)},
            )
            if result.returncode != 0:
                raise DemoError(f"{name} failed:\n{(result.stdout + result.stderr).strip()[-2000:]}")
            lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("[")]
            self.narrator.show(name, "\n".join(lines[-3:]))

    async def install_chart(self) -> None:
        self.narrator.step(
            "Install the project with its own Helm chart: CRDs, RBAC, the operator Deployment, the agent "
            "and supervisor DaemonSets. The kubelet runs their pods from the imported images."
        )
        self.layout.driver_dir.mkdir(parents=True, exist_ok=True)
        target = self.layout.driver_dir / DRIVER_FILE.name
        if not target.exists() or target.read_bytes() != DRIVER_FILE.read_bytes():
            shutil.copyfile(DRIVER_FILE, target)
        argv = [
            "upgrade", "--install", RELEASE, rel(helm.CHART), "--namespace", NAMESPACE,
            "--create-namespace", "--take-ownership",
            "--set-string", f"hostPaths.driverDir={self.layout.driver_dir}",
            "--set-string", f"hostPaths.stateDir={self.layout.state_dir}",
            "--set-string", "logging.format=text",
        ]  # fmt: skip
        out = run([str(helm.helm_binary()), *argv], env=helm.environment(self.cluster.kubeconfig))
        self.narrator.show("helm " + " ".join(argv), "\n".join(out.splitlines()[:6]))
        started = time.monotonic()

        async def all_ready() -> bool:
            pods = await asyncio.to_thread(release_pods, self.cluster)
            return set(pods) == set(COMPONENTS) and all(pod_ready(p) for p in pods.values())

        await self.wait("the operator, agent and supervisor pods to be Ready", all_ready)
        self.narrator.say(f"every pod Ready {time.monotonic() - started:.1f}s after the install")
        self.kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide")
        self.narrator.say(
            f"the node's driver directory {rel(self.layout.driver_dir)}/ holds {rel(DRIVER_FILE)} "
            "(hostPaths.driverDir)"
        )
        await self.wait("the agent to scan its driver directory", self.driver_file_scanned)
        lease = f"storage-agent-{self.node}"
        await self.wait("the agent's Lease", lambda: self.kube.get_or_none(LEASES, lease, NAMESPACE))

    async def apply_storage_driver(self, size: int) -> None:
        self.narrator.step(
            f"Apply {rel(EXAMPLE)}, narrowed to loop devices of {size} bytes (the demo's own), so that "
            "other loop devices on this machine cannot keep the driver loaded."
        )
        if await self.kube.get_or_none(STORAGE_DRIVERS, DRIVER):
            # Deleted with the operator running, which unloads it first: this run starts from
            # nothing loaded, whatever state an earlier run ended in.
            self.narrator.say(
                f"an earlier run's {DRIVER} goes first (the operator unloads it before it goes)"
            )
            self.kubectl("delete", "storagedriver", DRIVER, "--wait=true", f"--timeout={WAIT:.0f}s")
        self.old_events = await event_names(self.kube)
        manifest = yaml.safe_load(EXAMPLE.read_text())
        manifest["spec"]["deviceSelector"] = [{"key": "sizeBytes", "operator": "In", "values": [str(size)]}]
        self.layout.manifest.write_text(yaml.safe_dump(manifest, sort_keys=False))
        self.kubectl("apply", "-f", rel(self.layout.manifest))
        await self.wait("the operator to observe the StorageDriver", lambda: storage_driver_status(self.kube))
        self.kubectl("get", "storagedriver", DRIVER)

    async def attach_and_load(self, size: int) -> str:
        self.narrator.step(
            "Attach a loop device: its kernel uevent reaches the agent's pod, which publishes a NodeDevice; "
            f"the operator writes {DRIVER} into this node's NodeDriverConfig; the agent has the supervisor "
            "start a driver host in the supervisor's pod."
        )
        device = attach_loop_device(self.layout.backing_file, size)
        self.narrator.show(f"losetup --find --show {rel(self.layout.backing_file)}", device)
        attached_at = time.monotonic()
        published = await self.wait(f"a NodeDevice for {device}", lambda: self.node_device_name(device))
        await self.wait(f"{DRIVER} Loaded with {published} bound", lambda: self.loaded(published))
        await self.wait("the StorageDriver status to count the load", lambda: loaded_nodes(self.kube, 1))
        self.narrator.say(f"loaded {time.monotonic() - attached_at:.1f}s after the attach")
        self.kubectl("get", "sd,nd,ndc")
        sdctl = [console_script("sdctl"), "drivers", "--kubeconfig", str(self.cluster.kubeconfig)]
        self.narrator.show("sdctl drivers", run(sdctl))
        await self.show_events("Loaded")
        return device

    async def detach_and_unload(self, device: str) -> None:
        delay = yaml.safe_load(self.layout.manifest.read_text())["spec"]["unloadDelaySeconds"]
        self.narrator.step(
            f"Detach it: the NodeDevice turns Present=False; after unloadDelaySeconds ({delay}s) without a "
            f"matching device the operator drops {DRIVER} from the node, and the agent unloads it (the "
            "driver host stops and exits)."
        )
        detach_loop_device(device)
        self.narrator.show(f"losetup --detach {device}", "")
        detached_at = time.monotonic()
        await self.wait(f"{DRIVER} unloaded", self.unloaded)
        await self.wait("the StorageDriver status to count the unload", lambda: loaded_nodes(self.kube, 0))
        self.narrator.say(f"unloaded {time.monotonic() - detached_at:.1f}s after the detach")
        self.kubectl("get", "sd,nd,ndc")
        await self.show_events("Unloaded")

    # --- what the steps show and wait for ---

    def kubectl(self, *args: str) -> None:
        self.narrator.show("kubectl " + " ".join(args), kubectl(self.cluster, *args))

    async def show_events(self, reason: str) -> None:
        """This run's Events about the driver and the node, once both components posted `reason`."""

        async def posted() -> list[list[str]] | None:
            rows = await new_events(self.kube, self.old_events, {DRIVER, self.node})
            sources = {row[1] for row in rows if row[3] == reason}
            return rows if {"storage-agent", "storage-operator"} <= sources else None

        rows = await self.wait(f"the {reason} Events of the agent and the operator", posted)
        self.narrator.show(
            f"kubectl get events -n default   # this run's, about {DRIVER} and node {self.node}",
            table(rows, ["TIME", "FROM", "OBJECT", "REASON", "MESSAGE"]),
        )

    async def driver_file_scanned(self) -> bool:
        config = await self.kube.get_or_none(NODE_DRIVER_CONFIGS, self.node)
        available = ((config or {}).get("status") or {}).get("available") or []
        return any(a.get("file") == DRIVER_FILE.name and not a.get("error") for a in available)

    async def node_device_name(self, device: str) -> str | None:
        """The present NodeDevice of this attachment. /dev/loopN names are reused, and NodeDevices
        of earlier attachments stay a while (not present), so the path alone is not enough."""
        selector = f"{NODE_LABEL}={label_value(self.node)}"
        for item in (await self.kube.list(NODE_DEVICES, label_selector=selector))[0]:
            spec = item.get("spec") or {}
            conditions = (item.get("status") or {}).get("conditions") or []
            present = [c.get("status") for c in conditions if c.get("type") == "Present"] == ["True"]
            ours = spec.get("devPath") == device and spec.get("backingFile") == str(self.layout.backing_file)
            if ours and present:
                return str(item["metadata"]["name"])
        return None

    async def loaded(self, device: str) -> bool:
        wanted, running = driver_entries(await self.kube.get(NODE_DRIVER_CONFIGS, self.node))
        return (
            device in wanted.get("devices", [])
            and running.get("phase") == "Loaded"
            and device in running.get("boundDevices", [])
        )

    async def unloaded(self) -> bool:
        wanted, running = driver_entries(await self.kube.get(NODE_DRIVER_CONFIGS, self.node))
        return not wanted and running.get("phase") not in ("Loading", "Loaded", "Unloading")


async def up(cluster: localcluster.ClusterConfig) -> None:
    narrator = Narrator()
    check_prerequisites(cluster)
    layout = Layout.of(cluster)
    narrator.step(
        f"Start the local cluster: etcd, kube-apiserver, kube-controller-manager and kube-scheduler "
        f"{localcluster.KUBE_VERSION} on {cluster.server}, and this machine as its node: containerd, "
        "the kubelet and kube-proxy (nothing happens if it is up)."
    )
    try:
        await asyncio.to_thread(localcluster.up, cluster)
    except RuntimeError as exc:
        localcluster.stop_processes(cluster, quiet=True)
        raise DemoError(f"the local cluster did not start: {exc}") from exc
    kubectl_out = kubectl(cluster, "get", "nodes", "-o", "wide")
    Narrator.show("kubectl get nodes -o wide", kubectl_out)
    previous = await asyncio.to_thread(release_installed, cluster)
    if previous or demo_loop_devices(layout):
        print("A previous demo is still running: stopping it first (make demo starts over).", flush=True)
        await asyncio.to_thread(stop, cluster, quiet=True)
    layout.root.mkdir(parents=True, exist_ok=True)
    async with KubeClient(load_kubeconfig(cluster.kubeconfig)) as kube:
        demo = Demo(cluster, kube, narrator)
        await asyncio.to_thread(demo.images)
        await demo.install_chart()
        size = unused_size()
        await demo.apply_storage_driver(size)
        device = await demo.attach_and_load(size)
        await demo.detach_and_unload(device)
    print(f"\nDone in {time.monotonic() - narrator.started:.1f}s. {epilogue(cluster, layout)}", flush=True)


async def storage_driver_status(kube: KubeClient) -> dict[str, Any]:
    """The example's status once the operator has seen its current generation, else {}."""
    driver = await kube.get(STORAGE_DRIVERS, DRIVER)
    status = driver.get("status") or {}
    return status if status.get("observedGeneration") == driver["metadata"]["generation"] else {}


async def loaded_nodes(kube: KubeClient, count: int) -> bool:
    status = await storage_driver_status(kube)
    return bool(status) and status.get("loadedNodes") == count


def epilogue(cluster: localcluster.ClusterConfig, layout: Layout) -> str:
    return f"""The release keeps running: the operator, agent and supervisor pods in namespace {NAMESPACE}.

Look around:
  export KUBECONFIG=$PWD/{rel(cluster.kubeconfig)} PATH=$PWD/.venv/bin:{cluster.bin_dir}:$PATH
  kubectl -n {NAMESPACE} get pods -o wide
  kubectl get sd,nd,ndc
  kubectl describe storagedriver {DRIVER}
  sdctl drivers
  kubectl -n {NAMESPACE} logs daemonset/{RELEASE}-agent   # also deployment/{RELEASE}-operator
  losetup --find --show {rel(layout.backing_file)}   # attach again: {DRIVER} loads again

Stop:
  make demo-down             # helm uninstall, and detach the demo's loop devices
  make demo-down CLUSTER=1   # ... and stop the local cluster
"""


def stop(cluster: localcluster.ClusterConfig, *, quiet: bool = False) -> None:
    """Uninstall the demo's release (its pods gone, their driver hosts with them) and detach the
    demo's loop devices."""
    layout = Layout.of(cluster)
    if localcluster.is_up(cluster) and release_installed(cluster):
        uninstall(cluster)
        if not quiet:
            print(
                f"[demo] uninstalled release {RELEASE} (namespace {NAMESPACE}); its pods are gone", flush=True
            )
    for device in demo_loop_devices(layout):
        detach_loop_device(f"/dev/{device}")
        if not quiet:
            print(f"[demo] detached /dev/{device}", flush=True)


def down(cluster: localcluster.ClusterConfig, *, with_cluster: bool) -> None:
    stop(cluster)
    if with_cluster:
        localcluster.down(cluster)
    else:
        print("[demo] stopped; the local cluster keeps running ('make cluster-down' stops it)", flush=True)


def status(cluster: localcluster.ClusterConfig) -> int:
    pods = release_pods(cluster) if localcluster.is_up(cluster) else {}
    for component in COMPONENTS:
        pod = pods.get(component)
        state = (
            f"pod {pod['metadata']['name']} {'Ready' if pod_ready(pod) else 'not ready'}" if pod else "none"
        )
        print(f"{component:12} {state}")
    devices = demo_loop_devices(Layout.of(cluster))
    print(f"{'loop devices':12} {', '.join('/dev/' + d for d in devices) or 'none'}")
    return (
        0 if all(pod_ready(pods[c]) for c in COMPONENTS if c in pods) and len(pods) == len(COMPONENTS) else 1
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--cluster", action="store_true", help="down: stop the local control plane too")
    args = parser.parse_args(argv)
    cluster = localcluster.ClusterConfig.from_env()
    if args.command == "down":
        down(cluster, with_cluster=args.cluster)
        return 0
    if args.command == "status":
        return status(cluster)
    if not cluster.with_node:
        print("The demo runs the chart's pods, which need the node: unset SDO_NODE=off.", file=sys.stderr)
        return 2
    with only_run(Layout.of(cluster)) as alone:
        if not alone:
            print("Another 'make demo' runs in this checkout: wait for it, or stop it.", file=sys.stderr)
            return 1
        return run_up(cluster)


@contextlib.contextmanager
def only_run(layout: Layout) -> Iterator[bool]:
    """Whether this is the only `up` in this checkout (a second one would stop the first's processes)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with (layout.root / "lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_up(cluster: localcluster.ClusterConfig) -> int:
    # Stopped from outside (a CI timeout, kill): clean up as after Ctrl-C.
    signal.signal(signal.SIGTERM, interrupt)
    # Ctrl-C stops it even when it was started with SIGINT ignored, as a shell without job
    # control starts a background job's commands: asyncio.run then handles it as usual.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        asyncio.run(up(cluster))
    except (DemoError, KeyboardInterrupt) as exc:
        print(f"\nThe demo stopped: {str(exc) or 'interrupted'}", file=sys.stderr, flush=True)
        with contextlib.suppress(DemoError):
            stop(cluster, quiet=True)
        print(
            "Its release was uninstalled and its loop devices detached; the local cluster keeps running.",
            file=sys.stderr,
        )
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
