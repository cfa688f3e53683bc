"""Settings every part of the agent shares; each part adds its own options next to its code
(`devices/options.py`, `drivers/service.py`)."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from storage_driver_api.constants import LEASE_NAMESPACE_DEFAULT


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port), or a ValueError that says what is expected."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r}: expected HOST:PORT, for example 0.0.0.0:8090")
    return host.strip("[]"), int(port)


def health_address(value: str) -> str:
    """argparse type of --health and --metrics: empty, or a valid HOST:PORT."""
    if value:
        try:
            parse_address(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def default_node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname().split(".")[0].lower()


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    kubeconfig: str | None
    context: str | None
    state_dir: Path
    namespace: str
    log_level: str
    log_format: str
    health_address: str = ""
    metrics_address: str = ""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--node-name",
            default=None,
            help="this node's name (default: $NODE_NAME, else the host name)",
        )
        parser.add_argument(
            "--kubeconfig",
            default=None,
            help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)",
        )
        parser.add_argument("--context", default=None, help="kubeconfig context")
        parser.add_argument(
            "--state-dir",
            type=Path,
            default=Path(os.environ.get("STORAGE_AGENT_STATE_DIR", "/var/lib/storage-agent")),
            help="where the agent keeps state that must survive its restart (default: %(default)s)",
        )
        parser.add_argument(
            "--namespace",
            default=os.environ.get("POD_NAMESPACE", LEASE_NAMESPACE_DEFAULT),
            help="namespace of the agent's Lease; its Events go to 'default' with the objects they are about "
            "(default: $POD_NAMESPACE, else %(default)s)",
        )
        parser.add_argument(
            "--health",
            dest="health_address",
            type=health_address,
            default=os.environ.get("HEALTH_ADDRESS", ""),
            help="HOST:PORT to serve /healthz and /readyz on, for probes; empty to disable "
            "(default: $HEALTH_ADDRESS, else disabled)",
        )
        parser.add_argument(
            "--metrics",
            dest="metrics_address",
            type=health_address,
            default=os.environ.get("METRICS_ADDRESS", ""),
            help="HOST:PORT to serve Prometheus metrics on, at /metrics; empty to disable "
            "(default: $METRICS_ADDRESS, else disabled)",
        )
        parser.add_argument(
            "--log-level", default=os.environ.get("LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING"
        )
        parser.add_argument(
            "--log-format", choices=["json", "text"], default=os.environ.get("LOG_FORMAT", "json")
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AgentConfig:
        return cls(
            node_name=args.node_name or default_node_name(),
            kubeconfig=args.kubeconfig,
            context=args.context,
            state_dir=args.state_dir,
            namespace=args.namespace,
            log_level=args.log_level,
            log_format=args.log_format,
            health_address=args.health_address,
            metrics_address=args.metrics_address,
        )
