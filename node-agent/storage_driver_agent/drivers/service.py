"""The driver runtime of the agent: follows the node's NodeDriverConfig and NodeDevices, watches
the driver directory, runs the reconcile loop, and reports status, bindings, Events and the Lease.

The driver hosts outlive this service: on shutdown it stops talking to them and leaves them
running for the next agent to adopt (see docs/driver-runtime.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from storage_driver_api.constants import (
    API_VERSION,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    node_label_value,
)
from storage_driver_api.kube import NODES, TRANSPORT_ERRORS, ApiError, KubeClient
from storage_driver_api.logs import fields
from storage_driver_api.meta import describe_validation_error
from storage_driver_api.nodedevice import is_present
from storage_driver_api.nodedriverconfig import (
    MAX_DRIVERS_PER_NODE,
    NodeDriverConfigSpec,
    NodeDriverConfigStatus,
)
from storage_driver_sdk.devices import ALL_DEVICE_TYPES

from storage_driver_agent import metrics
from storage_driver_agent.config import AgentConfig
from storage_driver_agent.drivers import proctree
from storage_driver_agent.drivers.inventory import Inventory
from storage_driver_agent.drivers.launcher import make_launcher
from storage_driver_agent.drivers.liveness import LivenessPolicy
from storage_driver_agent.drivers.reconcile import NodeReconciler, RuntimeSettings
from storage_driver_agent.drivers.report import BindingWriter, EventRecorder, LeaseKeeper, StatusWriter
from storage_driver_agent.drivers.sources import FetchLimits, SourceFetcher
from storage_driver_agent.drivers.statemachine import BackoffPolicy
from storage_driver_agent.drivers.status import (
    NodeReport,
    bound_drivers_by_device,
    build_status,
    desired_from_api,
    settling,
)
from storage_driver_agent.drivers.usage import UsageReader
from storage_driver_agent.drivers.watch import DirectoryWatcher
from storage_driver_agent.kubewatch import list_watch
from storage_driver_agent.stopping import wait_or_stop

log = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*([0-9]+)\s*(|k|Ki|M|Mi|G|Gi|T|Ti)\s*$")
_UNITS = {
    "": 1,
    "k": 10**3,
    "Ki": 2**10,
    "M": 10**6,
    "Mi": 2**20,
    "G": 10**9,
    "Gi": 2**30,
    "T": 10**12,
    "Ti": 2**40,
}


def parse_size(text: str) -> int:
    """'512Mi' -> 536870912; plain numbers are bytes (Kubernetes quantity suffixes)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write bytes or e.g. 512Mi, 2Gi")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Options:
    driver_dir: Path = Path("/var/lib/storage-drivers")
    launcher: str = "direct"
    max_loaded_drivers: int = 100
    memory_limit: int = 512 * 2**20
    adoption_window: float = 300.0
    restart_backoff: float = 1.0
    restart_backoff_max: float = 300.0
    load_timeout: float = 60.0
    terminate_timeout: float = 5.0
    health_interval: float = 30.0
    max_driver_bytes: int = 16 * 2**20
    config_map_namespaces: tuple[str, ...] = ()
    require_sha256: bool = False
    debounce: float = 0.5
    lease_duration: int = 40
    lease_renew: float = 10.0
    host_cgroup: str = "auto"
    call_timeout: float = 30.0
    unhealthy_restarts: int = 3
    mountinfo: Path = Path("/proc/self/mountinfo")
    in_use_recheck: float = 2.0
    host_root: Path = Path("/")  # the device options' --host-root: sysfs is read below it

    @staticmethod
    def add_arguments(parser: argparse._ArgumentGroup) -> None:
        parser.add_argument(
            "--driver-dir",
            type=Path,
            default=Path(_env("STORAGE_DRIVER_DIR", "/var/lib/storage-drivers")),
            help="the node's driver directory, watched for driver files (default: $STORAGE_DRIVER_DIR, else %(default)s)",
        )
        parser.add_argument(
            "--launcher",
            choices=["direct", "supervisor"],
            default=_env("STORAGE_AGENT_LAUNCHER", "direct"),
            help="who starts driver hosts: the agent itself (direct), or 'storage-agent supervise' over "
            "<state-dir>/supervisor.sock (supervisor; use it in containers) (default: %(default)s)",
        )
        parser.add_argument(
            "--max-loaded-drivers",
            type=int,
            default=100,
            help="drivers this node runs at most; beyond it a driver is Failed with CapacityExceeded (default: %(default)s)",
        )
        parser.add_argument(
            "--driver-memory-limit",
            type=parse_size,
            default=parse_size(_env("STORAGE_DRIVER_MEMORY_LIMIT", "512Mi")),
            help="address-space limit (RLIMIT_AS) of each driver host, e.g. 256Mi; 0 for none (default: 512Mi)",
        )
        parser.add_argument(
            "--adoption-window",
            type=float,
            default=300.0,
            help="seconds a driver host waits for a restarted agent before it stops its driver and exits (default: %(default)s)",
        )
        parser.add_argument(
            "--restart-backoff",
            type=float,
            default=1.0,
            help="first delay before restarting a crashed driver, doubling (default: %(default)s s)",
        )
        parser.add_argument(
            "--restart-backoff-max",
            type=float,
            default=300.0,
            help="longest delay between restarts (default: %(default)s s)",
        )
        parser.add_argument(
            "--load-timeout",
            type=float,
            default=60.0,
            help="seconds a driver may take to import, start and attach (default: %(default)s)",
        )
        parser.add_argument(
            "--terminate-timeout",
            type=float,
            default=5.0,
            help="after the grace period, seconds between SIGTERM and SIGKILL (default: %(default)s)",
        )
        parser.add_argument(
            "--health-interval",
            type=float,
            default=30.0,
            help="seconds between health() checks of each driver (default: %(default)s)",
        )
        parser.add_argument(
            "--max-driver-bytes",
            type=parse_size,
            default=16 * 2**20,
            help="largest driver file fetched from a configMap or url source (default: 16Mi)",
        )
        parser.add_argument(
            "--config-map-namespaces",
            default=_env("CONFIG_MAP_NAMESPACES", ""),
            help="comma-separated namespaces configMap driver sources may come from; empty: any "
            "(default: $CONFIG_MAP_NAMESPACES)",
        )
        parser.add_argument(
            "--require-sha256",
            action="store_true",
            default=_env("REQUIRE_SHA256", "") in ("1", "true"),
            help="refuse configMap and url driver sources without a sha256 pin (default: $REQUIRE_SHA256)",
        )
        parser.add_argument(
            "--driver-dir-debounce",
            type=float,
            default=0.5,
            help="seconds the driver directory must be quiet before a rescan (default: %(default)s)",
        )
        parser.add_argument(
            "--lease-duration",
            type=int,
            default=40,
            help="the agent Lease's duration in seconds (default: %(default)s)",
        )
        parser.add_argument(
            "--lease-renew",
            type=float,
            default=10.0,
            help="seconds between Lease renewals (default: %(default)s)",
        )
        proctree.add_argument(parser)
        parser.add_argument(
            "--call-timeout",
            type=float,
            default=30.0,
            help="seconds attach(), detach() and health() may take; a driver that takes longer is killed and "
            "restarted with backoff (default: %(default)s)",
        )
        parser.add_argument(
            "--unhealthy-restarts",
            type=int,
            default=3,
            help="consecutive unhealthy health() checks after which a driver is restarted (default: %(default)s)",
        )
        parser.add_argument(
            "--mountinfo",
            type=Path,
            default=Path(_env("STORAGE_AGENT_MOUNTINFO", "/proc/self/mountinfo")),
            help="the mount table that tells whether a device is mounted before it is detached; "
            "/proc/1/mountinfo is the host's for an agent in a container with the host's PID namespace "
            "(default: $STORAGE_AGENT_MOUNTINFO, else %(default)s)",
        )
        parser.add_argument(
            "--in-use-recheck",
            type=float,
            default=2.0,
            help="seconds between checks of a device in use whose detach or unload waits (default: %(default)s)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        if not 0 <= args.max_loaded_drivers <= MAX_DRIVERS_PER_NODE:
            raise SystemExit(f"--max-loaded-drivers must be between 0 and {MAX_DRIVERS_PER_NODE}")
        return cls(
            driver_dir=args.driver_dir,
            launcher=args.launcher,
            max_loaded_drivers=args.max_loaded_drivers,
            memory_limit=args.driver_memory_limit,
            adoption_window=args.adoption_window,
            restart_backoff=args.restart_backoff,
            restart_backoff_max=args.restart_backoff_max,
            load_timeout=args.load_timeout,
            terminate_timeout=args.terminate_timeout,
            health_interval=args.health_interval,
            max_driver_bytes=args.max_driver_bytes,
            config_map_namespaces=tuple(n for n in args.config_map_namespaces.split(",") if n),
            require_sha256=args.require_sha256,
            debounce=args.driver_dir_debounce,
            lease_duration=args.lease_duration,
            lease_renew=args.lease_renew,
            host_cgroup=args.host_cgroup,
            call_timeout=args.call_timeout,
            unhealthy_restarts=args.unhealthy_restarts,
            mountinfo=args.mountinfo,
            in_use_recheck=args.in_use_recheck,
            host_root=getattr(args, "host_root", Path("/")),
        )


def read_boot_id() -> str:
    """The kernel's boot id; $STORAGE_AGENT_BOOT_ID overrides it (tests simulate a reboot)."""
    if override := os.environ.get("STORAGE_AGENT_BOOT_ID"):
        return override
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def agent_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("storage-driver-operator")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def device_present(obj: Mapping[str, Any]) -> bool:
    spec = obj.get("spec") or {}
    return spec.get("type") in ALL_DEVICE_TYPES and is_present(obj)


class DriverRuntime:
    def __init__(
        self, config: AgentConfig, options: Options, kube: KubeClient, ready: asyncio.Event | None = None
    ):
        self.config = config
        self.options = options
        self.kube = kube
        self.node = config.node_name
        self.settings = RuntimeSettings(
            state_dir=config.state_dir,
            driver_dir=options.driver_dir,
            boot_id=read_boot_id(),
            max_loaded_drivers=options.max_loaded_drivers,
            memory_limit=options.memory_limit,
            adoption_window=options.adoption_window,
            backoff=BackoffPolicy(options.restart_backoff, options.restart_backoff_max),
            load_timeout=options.load_timeout,
            terminate_timeout=options.terminate_timeout,
            health_interval=options.health_interval,
            liveness=LivenessPolicy(options.call_timeout, options.unhealthy_restarts),
            in_use_recheck=options.in_use_recheck,
        )
        self.inventory = Inventory(options.driver_dir)
        self.ready = (
            ready or asyncio.Event()
        )  # set once the spec and the devices are read and adoption is done
        trees = None
        if options.launcher == "direct":  # the supervisor holds the trees of the hosts it starts
            try:
                trees = proctree.choose(options.host_cgroup)
            except ValueError as exc:
                raise SystemExit(str(exc)) from exc
            log.log(logging.INFO if trees.base is not None else logging.WARNING, proctree.describe(trees))
            trees.remove_empty(self.settings.hosts_dir)
        self.launcher = make_launcher(options.launcher, config.state_dir, trees)
        self.status_writer = StatusWriter(kube, self.node)
        # The status first: the operator and users wait for it; Events and boundDrivers follow.
        self.events = EventRecorder(kube, self.node, lambda: self.config_uid, self.status_writer.first)
        self.fetcher = SourceFetcher(
            options.driver_dir,
            kube,
            self.inventory,
            FetchLimits(
                max_bytes=options.max_driver_bytes,
                config_map_namespaces=frozenset(options.config_map_namespaces) or None,
                require_sha256=options.require_sha256,
            ),
            asyncio.get_running_loop().time,
        )
        self.reconciler = NodeReconciler(
            self.settings,
            self.launcher,
            self.inventory,
            self.fetcher,
            self.events,
            on_change=self.publish,
            usage=UsageReader(options.mountinfo, options.host_root),
        )
        self.binding_writer = BindingWriter(kube, self.status_writer.first)
        self.lease = LeaseKeeper(
            kube, self.node, config.namespace, options.lease_duration, options.lease_renew
        )
        self.config_uid: str | None = None
        self.previous_status: NodeDriverConfigStatus | None = None
        self.device_objects: dict[str, dict[str, Any]] = {}
        self.spec_synced = asyncio.Event()
        self.devices_synced = asyncio.Event()
        self.config_missing = asyncio.Event()
        self.agent_version = agent_version()

    # --- NodeDriverConfig --------------------------------------------------------------------

    def _config_sync(self, items: list[dict[str, Any]]) -> None:
        if items:
            self._config_event("ADDED", items[0])
        else:
            self.config_missing.set()

    def _config_event(self, kind: str, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        if kind == "DELETED":
            log.warning(
                "the node's NodeDriverConfig was deleted; creating it again", extra=fields(node=self.node)
            )
            self.config_uid = None
            self.config_missing.set()
            return
        new_object = metadata.get("uid") != self.config_uid
        if new_object:
            # First sight, or recreated: write status relative to what it holds.
            if self.previous_status is None:
                with contextlib.suppress(ValidationError):
                    self.previous_status = NodeDriverConfigStatus.model_validate(obj.get("status") or {})
            self.config_uid = metadata.get("uid")
            self.status_writer.server_has(dict(obj.get("status") or {}))
        try:
            spec = NodeDriverConfigSpec.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            log.error(
                "NodeDriverConfig spec is invalid; keeping the drivers as they are",
                extra=fields(node=self.node, error=describe_validation_error(exc, "spec")),
            )
            return
        desired = [desired_from_api(d) for d in spec.drivers]
        generation = metadata.get("generation")
        if generation != self.reconciler.generation or not self.spec_synced.is_set():
            log.info(
                "spec received",
                extra=fields(node=self.node, generation=generation, drivers=[d.name for d in desired]),
            )
        self.reconciler.set_spec(desired, generation)
        self.spec_synced.set()
        if new_object and self.ready.is_set():
            # A recreated object gets a status computed from its own spec (the writer dropped
            # the old one's), even when the reconciler finds nothing to do.
            self.publish()

    async def ensure_config(self, stop: asyncio.Event) -> None:
        """Create the node's NodeDriverConfig (empty spec, owned by the Node) whenever it is missing."""
        warned = False
        while not stop.is_set():
            if not await wait_or_stop(self.config_missing, stop):
                return
            try:
                node = await self.kube.get_or_none(NODES, self.node)
                if node is None:
                    if not warned:
                        log.warning(
                            "Node object not found; its NodeDriverConfig is created once it exists",
                            extra=fields(node=self.node),
                        )
                    warned = True
                    raise _Retry()
                body = {
                    "apiVersion": API_VERSION,
                    "kind": "NodeDriverConfig",
                    "metadata": {
                        "name": self.node,
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": self.node,
                                "uid": node["metadata"]["uid"],
                            }
                        ],
                    },
                    "spec": {"drivers": []},
                }
                try:
                    await self.kube.create(NODE_DRIVER_CONFIGS, body)
                    log.info("created the node's NodeDriverConfig", extra=fields(node=self.node))
                except ApiError as exc:
                    if not exc.conflict:  # 409: the operator created it meanwhile
                        raise
                self.config_missing.clear()
            except (_Retry, ApiError, *TRANSPORT_ERRORS) as exc:
                if not isinstance(exc, _Retry):
                    log.warning(
                        "cannot create the NodeDriverConfig", extra=fields(node=self.node, error=str(exc))
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5.0)

    # --- NodeDevices -------------------------------------------------------------------------

    def _devices_sync(self, items: list[dict[str, Any]]) -> None:
        self.device_objects = {item["metadata"]["name"]: item for item in items}
        self._devices_changed()
        self.devices_synced.set()

    def _device_event(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.device_objects.pop(name, None)
            self.binding_writer.sent.pop(name, None)
        else:
            self.device_objects[name] = obj
        self._devices_changed()

    def _devices_changed(self) -> None:
        present = {
            name: obj.get("spec") or {} for name, obj in self.device_objects.items() if device_present(obj)
        }
        if present.keys() != self.reconciler.devices.keys() or present != self.reconciler.devices:
            self.reconciler.set_devices(present)
        else:
            self.publish()

    # --- driver directory --------------------------------------------------------------------

    async def rescan(self) -> None:
        if await self.inventory.rescan():
            scanned = self.inventory.scanned()
            log.info(
                "driver directory changed",
                extra=fields(
                    directory=str(self.options.driver_dir),
                    drivers=sum(1 for s in scanned if s.ok),
                    broken=[s.file for s in scanned if not s.ok],
                ),
            )
            self.reconciler.inventory_changed()

    # --- reporting ---------------------------------------------------------------------------

    def publish(self) -> None:
        if not self.spec_synced.is_set():
            return
        reports = self.reconciler.reports()
        status = build_status(
            NodeReport(
                generation=self.reconciler.generation,
                boot_id=self.settings.boot_id,
                agent_version=self.agent_version,
                max_loaded_drivers=self.options.max_loaded_drivers,
                drivers=reports,
                available=self.inventory.scanned(),
                previous=self.previous_status,
            ),
            self.reconciler.present,
            self.reconciler.clock(),
            dt.datetime.now(dt.UTC).replace(microsecond=0),
        )
        self.previous_status = status
        self.status_writer.submit(status.to_api(), settling=settling(reports))
        known = {
            name: list((obj.get("status") or {}).get("boundDrivers") or [])
            for name, obj in self.device_objects.items()
        }
        self.binding_writer.submit(bound_drivers_by_device(reports), known)

    # --- running -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.options.driver_dir.mkdir(parents=True, exist_ok=True)
        self.settings.hosts_dir.mkdir(parents=True, exist_ok=True)
        # The sockets in it control the drivers: only root (the agent and the supervisor) may enter.
        self.settings.hosts_dir.chmod(0o700)
        log.info(
            "driver runtime starting",
            extra=fields(
                node=self.node,
                driver_dir=str(self.options.driver_dir),
                state_dir=str(self.config.state_dir),
                launcher=self.options.launcher,
                max_loaded_drivers=self.options.max_loaded_drivers,
            ),
        )
        await self.reconciler.adopt()
        await self.inventory.rescan()
        watcher = DirectoryWatcher(self.options.driver_dir, self.rescan, debounce=self.options.debounce)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    list_watch(
                        self.kube,
                        NODE_DRIVER_CONFIGS,
                        field_selector=f"metadata.name={self.node}",
                        on_sync=self._config_sync,
                        on_event=self._config_event,
                        stop=stop,
                    )
                )
                group.create_task(
                    list_watch(
                        self.kube,
                        NODE_DEVICES,
                        label_selector=f"{NODE_LABEL}={node_label_value(self.node)}",
                        on_sync=self._devices_sync,
                        on_event=self._device_event,
                        stop=stop,
                    )
                )
                group.create_task(self.ensure_config(stop))
                group.create_task(watcher.run(stop))
                group.create_task(self.lease.run(stop))
                group.create_task(self.status_writer.run(stop))
                group.create_task(self.binding_writer.run(stop))
                group.create_task(self.events.run(stop))
                group.create_task(self._reconcile_when_synced(stop))
                group.create_task(self.reconciler.health_loop(stop))
        finally:
            await self.reconciler.shutdown()
            await self.fetcher.close()
            await self.launcher.close()
            log.info("driver runtime stopped; driver hosts keep running", extra=fields(node=self.node))

    async def _reconcile_when_synced(self, stop: asyncio.Event) -> None:
        # Acting before both caches are filled would unload drivers whose spec or devices are
        # simply not read yet.
        async def synced_wait() -> None:
            await self.spec_synced.wait()
            await self.devices_synced.wait()

        synced = asyncio.ensure_future(synced_wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({synced, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if stop.is_set():
            synced.cancel()
            return
        self.ready.set()
        log.info(
            "driver runtime ready",
            extra=fields(
                node=self.node, adopted=sum(1 for r in self.reconciler.records.values() if r.state.host)
            ),
        )
        await self.reconciler.run(stop)


class _Retry(Exception):
    pass


async def run(
    config: AgentConfig, options: Options, kube: KubeClient, stop: asyncio.Event, ready: asyncio.Event
) -> None:
    runtime = DriverRuntime(config, options, kube, ready)
    metrics.STATE.phases = lambda: [
        str(d.phase) for d in (runtime.previous_status.drivers if runtime.previous_status else [])
    ]
    await runtime.run(stop)
