"""The operator's options: each has a flag and an environment variable, and a default that
works with no arguments at all (current kubeconfig, one replica)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from storage_driver_api.constants import LEASE_NAMESPACE_DEFAULT


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Options:
    kubeconfig: str | None = None
    context: str | None = None
    lease_namespace: str = LEASE_NAMESPACE_DEFAULT
    event_namespace: str = "default"
    liveness: str = "http://0.0.0.0:8080/healthz"
    metrics: str = "http://0.0.0.0:8081/metrics"
    coalesce_seconds: float = 0.05
    status_interval: float = 1.0
    write_concurrency: int = 16
    watch_timeout: float = 300.0
    inactivity_timeout: float = 70.0
    deletion_wait: float = 30.0
    list_pages: bool = False
    gc_interval: float = 600.0
    log_level: str = "INFO"
    log_format: str = "json"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add(
            "--kubeconfig",
            default=None,
            help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)",
        )
        add("--context", default=None, help="kubeconfig context (default: the current one)")
        add(
            "--lease-namespace",
            default=_env("AGENT_NAMESPACE", _env("POD_NAMESPACE", LEASE_NAMESPACE_DEFAULT)),
            help="namespace of the agents' liveness Leases (default: $AGENT_NAMESPACE, else $POD_NAMESPACE, "
            "else %(default)s)",
        )
        add(
            "--event-namespace",
            default=_env("EVENT_NAMESPACE", "default"),
            help="namespace for Events about StorageDrivers, which are cluster-scoped (default: %(default)s)",
        )
        add(
            "--liveness",
            default=_env("LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz"),
            help="liveness endpoint URL; empty to disable (default: %(default)s)",
        )
        add(
            "--metrics",
            default=_env("METRICS_ENDPOINT", "http://0.0.0.0:8081/metrics"),
            help="Prometheus metrics endpoint URL; empty to disable (default: %(default)s)",
        )
        add(
            "--coalesce-seconds",
            type=float,
            default=float(_env("COALESCE_SECONDS", "0.05")),
            help="how long to gather a burst of changes before planning the nodes it touches (default: %(default)s)",
        )
        add(
            "--status-interval",
            type=float,
            default=float(_env("STATUS_INTERVAL", "1.0")),
            help="least time between two StorageDriver status updates (default: %(default)s)",
        )
        add(
            "--write-concurrency",
            type=int,
            default=int(_env("WRITE_CONCURRENCY", "16")),
            help="NodeDriverConfig writes in flight at once (default: %(default)s)",
        )
        add(
            "--watch-timeout",
            type=float,
            default=float(_env("WATCH_TIMEOUT", "300")),
            help="server-side timeout of one watch request, seconds (default: %(default)s)",
        )
        add(
            "--inactivity-timeout",
            type=float,
            default=float(_env("INACTIVITY_TIMEOUT", "70")),
            help="reconnect a watch that delivered nothing (not even a bookmark) for this long (default: %(default)s)",
        )
        add(
            "--deletion-wait",
            type=float,
            default=float(_env("DELETION_WAIT", "30")),
            help="how long one run of the deletion handler waits for nodes to unload before kopf retries it "
            "(default: %(default)s)",
        )
        add(
            "--list-pages",
            action="store_true",
            default=_env("LIST_PAGES", "") in ("1", "true"),
            help="list page by page from etcd (consistent at once, several times slower at scale) "
            "instead of whole from the API server's watch cache",
        )
        add(
            "--gc-interval",
            type=float,
            default=float(_env("GC_INTERVAL", "600")),
            help="seconds between sweeps that delete NodeDevices, NodeDriverConfigs and agent Leases "
            "whose Node is gone; 0 to turn them off (default: %(default)s)",
        )
        add(
            "--log-level",
            default=_env("LOG_LEVEL", "INFO"),
            help="DEBUG, INFO, WARNING (default: %(default)s)",
        )
        add("--log-format", choices=["json", "text"], default=_env("LOG_FORMAT", "json"))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        return cls(
            kubeconfig=args.kubeconfig,
            context=args.context,
            lease_namespace=args.lease_namespace,
            event_namespace=args.event_namespace,
            liveness=args.liveness,
            metrics=args.metrics,
            coalesce_seconds=args.coalesce_seconds,
            status_interval=args.status_interval,
            write_concurrency=args.write_concurrency,
            watch_timeout=args.watch_timeout,
            inactivity_timeout=args.inactivity_timeout,
            deletion_wait=args.deletion_wait,
            gc_interval=args.gc_interval,
            list_pages=args.list_pages,
            log_level=args.log_level,
            log_format=args.log_format,
        )
