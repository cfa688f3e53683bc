"""Which per-node objects outlived their Node (pure).

NodeDevices, the NodeDriverConfig and the agent's Lease each carry an ownerReference to their
Node, so the garbage collector removes them with it. What an ungraceful end leaves (an object
written without its owner, by an older version or by hand; a collector that is not running)
is found here, as node-feature-discovery's nfd-gc does, and deleted by sweep.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class PerNodeObject:
    kind: str  # the resource's plural: nodedevices, nodedriverconfigs, leases
    name: str
    namespace: str | None
    uid: str
    node: str  # the Node it belongs to
    created: float | None = None  # creationTimestamp, epoch seconds

    def describe(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name} (node {self.node})"


def orphans(
    objects: Iterable[PerNodeObject], live_nodes: set[str], now: float, min_age: float
) -> list[PerNodeObject]:
    """The objects whose Node does not exist; an object younger than `min_age` is left alone
    (its Node may be newer than the list of Nodes this was given)."""
    return sorted(
        o for o in objects if o.node not in live_nodes and (o.created is None or now - o.created >= min_age)
    )
