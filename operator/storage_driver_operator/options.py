"""The operator's options: each has a flag and an environment variable, and a default that
works with no arguments at all (current kubeconfig, one replica)."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from storage_driver_api.constants import LEASE_NAMESPACE_DEFAULT

from storage_driver_operator.leadership import Timing


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_switch(name: str) -> bool:
    """A switch that is off unless the environment sets it to 1 or true."""
    return _env(name, "") in ("1", "true")


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
    webhook_address: str = ""
    webhook_host: str = ""
    webhook_service: str = ""
    webhook_cert: str = ""
    webhook_key: str = ""
    webhook_ca: str = ""
    webhook_configuration: str = "storage-driver-operator"
    webhook_owner: str = ""
    agent_service_accounts: tuple[str, ...] = ()
    config_map_namespaces: tuple[str, ...] = ()
    require_sha256: bool = False
    directory_autoload: bool = False
    leader_election: bool = False
    leader_lease: str = "storage-operator-leader"
    leader_identity: str = ""
    leader_lease_duration: float = 15.0
    leader_renew_deadline: float = 10.0
    leader_retry: float = 2.0

    @property
    def identity(self) -> str:
        """This replica in the leader Lease: its pod name in a cluster, else host and pid."""
        return self.leader_identity or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def agent_usernames(self) -> tuple[str, ...]:
        """`namespace:name` of each agent ServiceAccount, as the API server names its tokens' users."""
        return tuple(f"system:serviceaccount:{account}" for account in self.agent_service_accounts)

    def check(self) -> None:
        """Refuse combinations that cannot work, naming the flag and the fix."""
        if self.leader_election:
            Timing(self.leader_lease_duration, self.leader_renew_deadline, self.leader_retry).check()
        if not self.webhook_address:
            return
        _, sep, port = self.webhook_address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(
                f"--webhook-address {self.webhook_address!r}: expected HOST:PORT, e.g. 0.0.0.0:9443"
            )
        if not (self.webhook_cert and self.webhook_key):
            raise ValueError(
                "--webhook-address needs --webhook-cert and --webhook-key (the API server requires HTTPS)"
            )
        if not self.agent_service_accounts:
            raise ValueError(
                "--webhook-address needs --agent-service-account NAMESPACE:NAME, so that agents' writes are "
                "confined to their nodes"
            )

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
            help="after a plan, how long to gather a burst of changes before planning again; a change after a quiet "
            "spell is planned at once (default: %(default)s)",
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
            default=_env_switch("LIST_PAGES"),
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
        add(
            "--webhook-address",
            default=_env("WEBHOOK_ADDRESS", ""),
            help="HOST:PORT to serve the admission webhook on (HTTPS); empty: no webhook (default: %(default)r)",
        )
        add(
            "--webhook-host",
            default=_env("WEBHOOK_HOST", ""),
            help="host name the API server reaches the webhook at when there is no --webhook-service "
            "(default: the listening address)",
        )
        add(
            "--webhook-service",
            default=_env("WEBHOOK_SERVICE", ""),
            help="NAMESPACE/NAME[:PORT] of the Service in front of the webhook (in a cluster)",
        )
        add(
            "--webhook-cert",
            default=_env("WEBHOOK_CERT", ""),
            help="the webhook's TLS certificate (PEM file)",
        )
        add("--webhook-key", default=_env("WEBHOOK_KEY", ""), help="the webhook's TLS private key (PEM file)")
        add(
            "--webhook-ca",
            default=_env("WEBHOOK_CA", ""),
            help="CA bundle the API server verifies the webhook with (default: the certificate itself)",
        )
        add(
            "--webhook-configuration",
            default=_env("WEBHOOK_CONFIGURATION", "storage-driver-operator"),
            help="name of the ValidatingWebhookConfiguration the operator keeps (default: %(default)s)",
        )
        add(
            "--webhook-owner",
            default=_env("WEBHOOK_OWNER", ""),
            help="a ClusterRole the webhook configuration belongs to: deleting it (helm uninstall does) "
            "lets the garbage collector delete the configuration, which would otherwise refuse every "
            "agent's writes once the operator is gone (default: $WEBHOOK_OWNER, else none)",
        )
        add(
            "--agent-service-account",
            dest="agent_service_accounts",
            action="append",
            default=[a for a in _env("AGENT_SERVICE_ACCOUNT", "").split(",") if a],
            help="NAMESPACE:NAME of the agents' ServiceAccount, whose writes the webhook confines to their "
            "nodes (repeatable; default: $AGENT_SERVICE_ACCOUNT)",
        )
        add(
            "--config-map-namespaces",
            default=_env("CONFIG_MAP_NAMESPACES", ""),
            help="comma-separated namespaces configMap driver sources may come from; empty: any",
        )
        add(
            "--leader-election",
            action="store_true",
            default=_env_switch("LEADER_ELECTION"),
            help="run with other replicas: only the holder of the leader Lease (in --lease-namespace) "
            "reconciles; every replica serves the webhook",
        )
        add(
            "--leader-lease",
            default=_env("LEADER_LEASE", "storage-operator-leader"),
            help="name of the leader Lease",
        )
        add(
            "--leader-identity",
            default=_env("POD_NAME", ""),
            help="this replica's name in the Lease (default: $POD_NAME, else host-pid)",
        )
        add(
            "--leader-lease-duration",
            type=float,
            default=float(_env("LEADER_LEASE_DURATION", "15")),
            help="another replica takes over a Lease unchanged this long, seconds (default: %(default)s)",
        )
        add(
            "--leader-renew-deadline",
            type=float,
            default=float(_env("LEADER_RENEW_DEADLINE", "10")),
            help="a leader that could not renew for this long exits, seconds (default: %(default)s)",
        )
        add(
            "--leader-retry",
            type=float,
            default=float(_env("LEADER_RETRY", "2")),
            help="between renewals and attempts to acquire, seconds (default: %(default)s)",
        )
        add(
            "--require-sha256",
            action="store_true",
            default=_env_switch("REQUIRE_SHA256"),
            help="refuse configMap and url driver sources without a sha256 pin",
        )
        add(
            "--directory-autoload",
            action="store_true",
            default=_env_switch("DIRECTORY_AUTOLOAD"),
            help="load a driver file that declares auto_load=True on its node's matching devices without a "
            "StorageDriver (default: off; $DIRECTORY_AUTOLOAD=true turns it on)",
        )

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
            webhook_address=args.webhook_address,
            webhook_host=args.webhook_host,
            webhook_service=args.webhook_service,
            webhook_cert=args.webhook_cert,
            webhook_key=args.webhook_key,
            webhook_ca=args.webhook_ca,
            webhook_configuration=args.webhook_configuration,
            webhook_owner=args.webhook_owner,
            agent_service_accounts=tuple(args.agent_service_accounts),
            config_map_namespaces=tuple(n for n in args.config_map_namespaces.split(",") if n),
            require_sha256=args.require_sha256,
            directory_autoload=args.directory_autoload,
            leader_election=args.leader_election,
            leader_lease=args.leader_lease,
            leader_identity=args.leader_identity,
            leader_lease_duration=args.leader_lease_duration,
            leader_renew_deadline=args.leader_renew_deadline,
            leader_retry=args.leader_retry,
        )
