"""`sdctl drivers [--node N]`: the drivers each node runs (GetLoadedDrivers), from the agents'
NodeDriverConfig status next to what the operator asked for.
`sdctl driver NAME`: one StorageDriver (GetDriverAsync): its spec, status, and its state and
the operator's reason on every node."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from storage_driver_api.kube import KubeClient
from storage_driver_operator.desired import plan_cluster
from storage_driver_operator.views import ConfigView

from storage_driver_cli.cluster import (
    add_cluster_arguments,
    listing,
    print_json,
    read_snapshot,
    run_with_cluster,
    table,
)

UNSET_DEVICES = "(what each node's driver file declares)"


def register(sub: Any) -> None:
    many: argparse.ArgumentParser = sub.add_parser(
        "drivers", help="list the drivers each node runs (from NodeDriverConfig status)", description=__doc__
    )
    many.add_argument("--node", default=None, help="only this node")
    add_cluster_arguments(many, leases=True)
    many.set_defaults(handler=run_drivers)

    one: argparse.ArgumentParser = sub.add_parser(
        "driver", help="show one StorageDriver: spec, status and its state on every node", description=__doc__
    )
    one.add_argument("name", help="name of the StorageDriver")
    add_cluster_arguments(one, leases=True)
    one.set_defaults(handler=run_driver)


def node_rows(config: ConfigView) -> list[dict[str, Any]]:
    """One row per driver the node is asked to run or reports running."""
    rows = []
    wanted = {d.name: d for d in config.spec_drivers}
    for name in sorted(set(wanted) | set(config.runs)):
        entry, run = wanted.get(name), config.runs.get(name)
        phase = run.phase if run else "NotReported"
        if run is not None and entry is None:
            phase += " (not wanted)"
        error = ""
        if run is not None and run.error_reason:
            error = f"{run.error_reason}: {run.error_message or ''}".strip()
        rows.append(
            {
                "node": config.name,
                "driver": name,
                "version": (run.version if run and run.version else None)
                or (entry.version if entry else None),
                "wantedVersion": entry.version if entry else None,
                "phase": phase,
                "pid": run.pid if run else None,
                "restarts": run.restarts if run else 0,
                "devices": list(run.bound_devices) if run else [],
                "wantedDevices": list(entry.devices) if entry else [],
                "error": error or (run.message if run else ""),
            }
        )
    return rows


async def show_drivers(kube: KubeClient, args: argparse.Namespace) -> int:
    snapshot, _ = await read_snapshot(kube, args.lease_namespace)
    configs = [c for name, c in sorted(snapshot.configs.items()) if args.node in (None, name)]
    if args.node and not configs:
        print(f"sdctl drivers: node {args.node} has no NodeDriverConfig", file=sys.stderr)
        return 1
    rows = [row for config in configs for row in node_rows(config)]
    if args.output == "json":
        print_json(rows)
        return 0
    if not rows:
        print("No drivers on any node.")
        return 0
    table(
        ["NODE", "DRIVER", "VERSION", "PHASE", "PID", "RESTARTS", "DEVICES", "MESSAGE"],
        [
            [
                r["node"],
                r["driver"],
                r["version"] or "-",
                r["phase"],
                r["pid"] or "-",
                r["restarts"],
                listing(r["devices"] or r["wantedDevices"]),
                r["error"] or "-",
            ]
            for r in rows
        ],
    )
    return 0


async def show_driver(kube: KubeClient, args: argparse.Namespace) -> int:
    snapshot, raw = await read_snapshot(kube, args.lease_namespace)
    view = snapshot.drivers.get(args.name)
    if view is None:
        print(f"sdctl driver: StorageDriver {args.name} not found", file=sys.stderr)
        return 1
    plans = plan_cluster(snapshot, time.time())
    nodes: list[dict[str, Any]] = []
    for node, plan in sorted(plans.items()):
        decision = plan.decisions[args.name]
        config = snapshot.configs.get(node)
        run = config.runs.get(args.name) if config else None
        entry = config.entry(args.name) if config else None
        nodes.append(
            {
                "node": node,
                "inSpec": entry is not None,
                "version": (run.version if run else None) or (entry.version if entry else None),
                "phase": run.phase if run else None,
                "devices": list(run.bound_devices) if run else (list(entry.devices) if entry else []),
                "decision": str(decision.action),
                "reason": str(decision.reason),
                "message": decision.message,
            }
        )
    if args.output == "json":
        print_json({"storageDriver": raw[args.name], "nodes": nodes})
        return 0
    obj, status = raw[args.name], view.status
    spec = obj.get("spec") or {}
    source: tuple[str, dict[str, Any]] = next(iter((spec.get("source") or {}).items()), ("?", {}))
    print(f"Name:         {args.name}")
    print(f"Driver:       {spec.get('driverName')} {spec.get('version')}")
    print(
        f"Source:       {source[0]} {source[1].get('path') or source[1].get('url') or source[1].get('name', '')}"
    )
    print(
        f"Devices:      {', '.join(spec.get('supportedDevices') or [UNSET_DEVICES])}"
        + (" (with deviceSelector)" if spec.get("deviceSelector") else "")
    )
    if view.invalid:
        print(f"Invalid:      {view.invalid}")
    if view.deleting:
        print("Deleting:     yes (waiting for the nodes to unload)")
    print(
        f"Nodes:        matching {status.matching_nodes}, desired {status.desired_nodes}, "
        f"loaded {status.loaded_nodes}, failed {status.failed_nodes}"
    )
    print("Conditions:")
    table(
        ["  TYPE", "STATUS", "REASON", "MESSAGE"],
        [[f"  {c.type}", c.status, c.reason, c.message] for c in status.conditions]
        or [["  -", "-", "-", "no status yet"]],
    )
    if status.failing_nodes:
        print("Failing nodes:")
        table(
            ["  NODE", "REASON", "MESSAGE"],
            [[f"  {f.node}", f.reason, f.message] for f in status.failing_nodes],
        )
    print("Per node:")
    table(
        ["  NODE", "PHASE", "VERSION", "DEVICES", "DECISION", "REASON", "DETAIL"],
        [
            [
                f"  {n['node']}",
                n["phase"] or "-",
                n["version"] or "-",
                listing(n["devices"]),
                n["decision"],
                n["reason"],
                n["message"],
            ]
            for n in nodes
        ],
    )
    return 0


def run_drivers(args: argparse.Namespace) -> int:
    return run_with_cluster(args, lambda kube: show_drivers(kube, args))


def run_driver(args: argparse.Namespace) -> int:
    return run_with_cluster(args, lambda kube: show_driver(kube, args))
