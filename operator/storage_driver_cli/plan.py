"""`sdctl plan -f FILE`: what applying a StorageDriver manifest would do on every node, and why.

It reads the cluster once and runs the operator's own pure planners on it with the manifest in
place of (or next to) the StorageDrivers there; it changes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from storage_driver_api.kube import KubeClient
from storage_driver_operator.desired import Action, NodePlan, Snapshot, plan_cluster
from storage_driver_operator.views import StorageDriverView, storage_driver_view

from storage_driver_cli.cluster import (
    add_cluster_arguments,
    listing,
    print_json,
    read_snapshot,
    run_with_cluster,
    table,
)

VERBS = {
    Action.LOAD: "load",
    Action.KEEP: "keep",
    Action.UPDATE: "update",
    Action.HOLD: "hold",
    Action.UNLOAD: "unload",
    Action.NONE: "-",
}


class ManifestError(Exception):
    """The file cannot be planned; the message names the document and field."""


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "plan",
        help="show which nodes would load, keep or unload a StorageDriver, and why (changes nothing)",
        description=__doc__,
    )
    parser.add_argument(
        "-f", "--filename", required=True, help="StorageDriver manifest (YAML; '-' for stdin)"
    )
    parser.add_argument(
        "--directory-autoload",
        action="store_true",
        help="plan as an operator running with --directory-autoload does (autoloaded driver files)",
    )
    add_cluster_arguments(parser, leases=True)
    parser.set_defaults(handler=run)


def load_manifests(path: str) -> list[dict[str, Any]]:
    """The StorageDriver documents of a YAML file, checked enough to plan them."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        documents = [d for d in yaml.safe_load_all(text) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    drivers = []
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            raise ManifestError(f"{path}: document {index + 1} is not a mapping")
        if document.get("kind") != "StorageDriver":
            continue
        if not (document.get("metadata") or {}).get("name"):
            raise ManifestError(f"{path}: document {index + 1}: metadata.name is missing")
        drivers.append(document)
    if not drivers:
        raise ManifestError(f"{path}: no StorageDriver in the file (kind: StorageDriver)")
    return drivers


def as_applied(manifest: dict[str, Any], existing: StorageDriverView | None) -> StorageDriverView:
    """The manifest as the operator would see it once applied over `existing`."""
    view = storage_driver_view(
        {"metadata": {"name": manifest["metadata"]["name"]}, "spec": manifest.get("spec") or {}}
    )
    if existing is None:
        return dataclasses.replace(view, generation=1)
    same = (view.spec, view.invalid) == (existing.spec, existing.invalid)
    return dataclasses.replace(
        view,
        uid=existing.uid,
        status=existing.status,
        generation=existing.generation if same else existing.generation + 1,
    )


def side_effects(name: str, before: dict[str, NodePlan], after: dict[str, NodePlan]) -> list[str]:
    """Other drivers whose place on a node would change (a higher priority displacing them)."""
    notes = []
    for node, plan in sorted(after.items()):
        old = before.get(node)
        if old is None:
            continue
        for driver, decision in plan.decisions.items():
            previous = old.decisions.get(driver)
            if driver == name or previous is None or previous.in_spec == decision.in_spec:
                continue
            verb = "would be added to" if decision.in_spec else "would leave"
            notes.append(f"{driver} {verb} {node} ({decision.reason}: {decision.message})")
    return notes


def plan_rows(name: str, plans: dict[str, NodePlan]) -> list[dict[str, Any]]:
    rows = []
    for node, plan in sorted(plans.items()):
        decision = plan.decisions[name]
        entry = next((d for d in plan.drivers if d.name == name), None)
        rows.append(
            {
                "node": node,
                "action": VERBS[Action(decision.action)],
                "reason": str(decision.reason),
                "message": decision.message,
                "version": entry.version if entry else None,
                "devices": list(entry.devices) if entry else [],
            }
        )
    return rows


def summary(name: str, state: str, rows: list[dict[str, Any]]) -> str:
    counts = Counter(row["action"] for row in rows)
    acting = ", ".join(
        f"{verb} on {counts[verb]}" for verb in ("load", "keep", "update", "hold", "unload") if counts[verb]
    )
    idle = Counter(row["reason"] for row in rows if row["action"] == "-")
    rest = ""
    if idle:
        rest = f"; not on {sum(idle.values())} node(s): " + ", ".join(
            f"{r} {c}" for r, c in sorted(idle.items())
        )
    return f"StorageDriver {name} ({state}): {acting or 'runs nowhere'}{rest}"


async def plan_manifests(kube: KubeClient, args: argparse.Namespace, manifests: list[dict[str, Any]]) -> int:
    snapshot, _ = await read_snapshot(kube, args.lease_namespace)
    now = time.time()
    before = plan_cluster(snapshot, now, args.directory_autoload)
    results = []
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        existing = snapshot.drivers.get(name)
        view = as_applied(manifest, existing)
        if view.spec is None:
            print(
                f"sdctl plan: StorageDriver {name}: {view.invalid}\n"
                "The operator would report Ready=False (InvalidSpec) and change nothing on the nodes.",
                file=sys.stderr,
            )
            return 2
        world = Snapshot(
            snapshot.nodes,
            snapshot.devices,
            snapshot.configs,
            snapshot.leases,
            {**snapshot.drivers, name: view},
        )
        after = plan_cluster(world, now, args.directory_autoload)
        state = (
            "new"
            if existing is None
            else ("changed" if view.generation != existing.generation else "unchanged")
        )
        results.append((name, state, plan_rows(name, after), side_effects(name, before, after)))

    if args.output == "json":
        print_json(
            [
                {"storageDriver": name, "state": state, "nodes": rows, "sideEffects": notes}
                for name, state, rows, notes in results
            ]
        )
        return 0
    for name, state, rows, notes in results:
        print(summary(name, state, rows))
        table(
            ["NODE", "ACTION", "VERSION", "DEVICES", "REASON", "DETAIL"],
            [
                [
                    r["node"],
                    r["action"],
                    r["version"] or "-",
                    listing(r["devices"]),
                    r["reason"],
                    r["message"],
                ]
                for r in rows
            ],
        )
        for note in notes:
            print(f"also: {note}")
        print()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        manifests = load_manifests(args.filename)
    except ManifestError as exc:
        print(f"sdctl plan: {exc}", file=sys.stderr)
        return 2
    return run_with_cluster(args, lambda kube: plan_manifests(kube, args, manifests))
