"""What `sdctl plan`, `sdctl drivers` and `sdctl driver` share: cluster options, one read of
the cluster into the operator's views, and plain-text tables."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from storage_driver_api.constants import (
    LEASE_NAMESPACE_DEFAULT,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    STORAGE_DRIVERS,
)
from storage_driver_api.kube import LEASES, NODES, ApiError, KubeClient, KubeConfigError, load_credentials
from storage_driver_operator.desired import Snapshot
from storage_driver_operator.views import (
    config_view,
    device_view,
    lease_view,
    node_view,
    storage_driver_view,
)

T = TypeVar("T")


def add_cluster_arguments(parser: argparse.ArgumentParser, *, leases: bool = False) -> None:
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    parser.add_argument("--context", default=None, help="kubeconfig context")
    if leases:
        parser.add_argument(
            "--lease-namespace",
            default=LEASE_NAMESPACE_DEFAULT,
            help="namespace of the agents' Leases (default: %(default)s)",
        )
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")


def run_with_cluster(args: argparse.Namespace, work: Callable[[KubeClient], Awaitable[int]]) -> int:
    """Run `work` with a client for the cluster; connection problems become a message and exit 2."""
    try:
        credentials = load_credentials(args.kubeconfig, args.context)
    except KubeConfigError as exc:
        print(f"sdctl: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        async with KubeClient(credentials, user_agent="sdctl") as kube:
            return await work(kube)

    try:
        return asyncio.run(main())
    except ApiError as exc:
        print(f"sdctl: the API server refused: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (sdctl ... | head)
        return 0
    except (OSError, TimeoutError) as exc:
        print(f"sdctl: cannot reach {credentials.server}: {exc}", file=sys.stderr)
        return 2


async def read_snapshot(kube: KubeClient, lease_namespace: str) -> tuple[Snapshot, dict[str, dict[str, Any]]]:
    """The cluster as the operator sees it (one list per kind), and the raw StorageDrivers."""
    nodes, devices, configs, leases, drivers = await asyncio.gather(
        kube.list(NODES),
        kube.list(NODE_DEVICES),
        kube.list(NODE_DRIVER_CONFIGS),
        kube.list(LEASES, namespace=lease_namespace),
        kube.list(STORAGE_DRIVERS),
    )
    lease_views = [v for v in (lease_view(o) for o in leases[0]) if v is not None]
    snapshot = Snapshot(
        nodes={v.name: v for v in (node_view(o) for o in nodes[0])},
        devices=[v for v in (device_view(o) for o in devices[0]) if v is not None],
        configs={v.name: v for v in (config_view(o) for o in configs[0])},
        leases={v.node: v for v in lease_views},
        drivers={v.name: v for v in (storage_driver_view(o) for o in drivers[0])},
    )
    return snapshot, {o["metadata"]["name"]: o for o in drivers[0]}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: Any = None) -> None:
    """Columns padded to their widest cell, as kubectl prints them; the last column runs free."""
    out = out or sys.stdout
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "   ".join(cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row))
        print(line.rstrip(), file=out)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, default=str))


def listing(names: Sequence[str], limit: int = 4) -> str:
    if not names:
        return "-"
    shown = ",".join(names[:limit])
    return shown + (f",+{len(names) - limit}" if len(names) > limit else "")
