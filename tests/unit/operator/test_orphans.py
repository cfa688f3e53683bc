"""Which per-node objects the sweep deletes: those whose Node is gone, once old enough."""

from __future__ import annotations

from storage_driver_operator.orphans import PerNodeObject, orphans

NOW = 1_800_000_000.0


def obj(kind: str, name: str, node: str, created: float | None = NOW - 3600) -> PerNodeObject:
    return PerNodeObject(kind, name, None, f"uid-{name}", node, created)


def test_only_objects_of_missing_nodes_are_orphans() -> None:
    objects = [
        obj("nodedevices", "a-1", "a"),
        obj("nodedevices", "gone-1", "gone"),
        obj("nodedriverconfigs", "gone", "gone"),
        obj("leases", "storage-agent-a", "a"),
    ]
    assert sorted(o.name for o in orphans(objects, {"a"}, NOW, 60)) == ["gone", "gone-1"]


def test_a_young_object_waits_its_node_may_be_newer_than_the_node_list() -> None:
    young = obj("nodedevices", "new-1", "new", created=NOW - 5)
    assert orphans([young], set(), NOW, 60) == []
    assert orphans([young], set(), NOW + 60, 60) == [young]
    assert orphans([obj("leases", "x", "x", created=None)], set(), NOW, 60)  # no time: by node only
