"""What the agent writes for a node: nothing when nothing changed, only what changed otherwise."""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import FrozenInstanceError
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_driver_agent.devices.describe import DescribedDevice
from storage_driver_agent.devices.diff import (
    Create,
    Delete,
    Owner,
    Plan,
    SetPresence,
    UpdateSpec,
    desired,
    plan,
    present_condition,
)
from storage_driver_agent.devices.filters import DeviceFilter
from storage_driver_api.constants import DEVICE_TYPE_LABEL, MANAGED_BY_LABEL, NODE_LABEL
from storage_driver_api.nodedevice import DeviceIdentity, IdentityKind, NodeDeviceSpec, node_device_name

from tests.unit.devices.hosts import described

NODE = "worker-1"
OWNER = Owner(NODE, "uid-node-1")
T0 = dt.datetime(2026, 11, 25, 10, 0, 0, tzinfo=dt.UTC)
RETENTION = dt.timedelta(minutes=10)


def loop_spec(
    name: str = "loop3", size: int = 8 * 1024 * 1024, backing: str = "/images/a.img"
) -> NodeDeviceSpec:
    return NodeDeviceSpec(
        node_name=NODE,
        type="loop",
        identity=DeviceIdentity(kind=IdentityKind.VIRTUAL, value=f"{NODE}/{name}/{backing}@1:2"),
        kernel_name=name,
        dev_path=f"/dev/{name}",
        sys_path=f"/sys/devices/virtual/block/{name}",
        size_bytes=size,
        backing_file=backing,
        kernel_driver="loop",
    )


class FakeApi:
    """A store that applies plans the way the API server would, counting writes."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self.version = 0

    def _bump(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    def apply(self, outcome: Plan) -> None:
        for action in outcome.actions:
            self.writes += 1
            if isinstance(action, Create):
                obj = copy.deepcopy(action.body)
                obj["metadata"]["uid"] = f"uid-{action.name}"
                obj["status"] = {"conditions": copy.deepcopy(action.conditions)}
                self.writes += 1  # the status write that follows the create
                self._bump(obj)
                self.objects[action.name] = obj
            elif isinstance(action, UpdateSpec):
                obj = self.objects[action.name]
                merge(obj, copy.deepcopy(action.patch))
                self._bump(obj)
            elif isinstance(action, SetPresence):
                obj = self.objects[action.name]
                obj.setdefault("status", {})["conditions"] = copy.deepcopy(action.conditions)
                self._bump(obj)
            elif isinstance(action, Delete):
                assert self.objects[action.name]["metadata"]["uid"] == action.uid
                del self.objects[action.name]


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value


def want(*specs: NodeDeviceSpec) -> dict[str, NodeDeviceSpec]:
    return {node_device_name(NODE, s.identity): s for s in specs}


def run(api: FakeApi, wanted: dict[str, NodeDeviceSpec], now: dt.datetime = T0, **kwargs: Any) -> Plan:
    outcome = plan(wanted, api.objects, OWNER, now=now, retention=RETENTION, **kwargs)
    api.apply(outcome)
    return outcome


def test_a_new_device_is_created_with_labels_owner_and_present() -> None:
    api = FakeApi()
    outcome = run(api, want(loop_spec()))
    assert [type(a) for a in outcome.actions] == [Create]
    (obj,) = api.objects.values()
    assert obj["metadata"]["labels"] == {
        NODE_LABEL: NODE,
        DEVICE_TYPE_LABEL: "loop",
        MANAGED_BY_LABEL: "storage-agent",
    }
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "uid-node-1"}
    ]
    assert obj["spec"]["sizeBytes"] == 8 * 1024 * 1024
    condition = present_condition(obj)
    assert condition is not None and condition.status == "True" and condition.last_transition_time == T0


def test_nothing_changed_means_no_write() -> None:
    api = FakeApi()
    run(api, want(loop_spec()))
    writes = api.writes
    for minute in range(1, 30):
        outcome = run(api, want(loop_spec()), now=T0 + dt.timedelta(minutes=minute))
        assert outcome.empty
    assert api.writes == writes


def test_a_changed_attribute_is_patched_alone() -> None:
    api = FakeApi()
    run(api, want(loop_spec(size=8 << 20)))
    outcome = run(api, want(loop_spec(size=16 << 20)))
    (action,) = outcome.actions
    assert isinstance(action, UpdateSpec)
    assert action.patch == {"spec": {"sizeBytes": 16 << 20}}
    assert action.changed == ("spec.sizeBytes",)


def test_a_field_that_disappears_is_removed_with_null() -> None:
    api = FakeApi()
    spec = loop_spec()
    run(api, want(spec))
    without = spec.model_copy(update={"kernel_driver": None})
    (action,) = run(api, want(without)).actions
    assert isinstance(action, UpdateSpec) and action.patch == {"spec": {"kernelDriver": None}}
    assert "kernelDriver" not in next(iter(api.objects.values()))["spec"]


def test_bound_drivers_and_other_conditions_are_left_alone() -> None:
    api = FakeApi()
    run(api, want(loop_spec()))
    obj = next(iter(api.objects.values()))
    obj["status"]["boundDrivers"] = ["loop-info"]
    obj["status"]["conditions"].append(
        {
            "type": "Bound",
            "status": "True",
            "reason": "Attached",
            "message": "",
            "lastTransitionTime": "2026-11-25T10:00:00Z",
        }
    )
    assert run(api, want(loop_spec())).empty
    outcome = run(api, {}, now=T0 + dt.timedelta(minutes=1))
    (action,) = outcome.actions
    assert isinstance(action, SetPresence) and not action.present
    assert [c["type"] for c in action.conditions] == ["Present", "Bound"]
    assert obj["status"]["boundDrivers"] == ["loop-info"]


def test_a_gone_device_is_marked_absent_then_deleted_after_retention() -> None:
    api = FakeApi()
    run(api, want(loop_spec()))
    gone_at = T0 + dt.timedelta(minutes=1)
    outcome = run(api, {}, now=gone_at)
    assert [type(a) for a in outcome.actions] == [SetPresence]
    assert outcome.wake_at == gone_at + RETENTION
    obj = next(iter(api.objects.values()))
    condition = present_condition(obj)
    assert condition is not None and condition.status == "False" and condition.last_transition_time == gone_at
    assert condition.reason == "Removed" and "loop3" in condition.message
    # Within the retention: nothing, and the wake-up time stays.
    later = run(api, {}, now=gone_at + RETENTION - dt.timedelta(seconds=1))
    assert later.empty and later.wake_at == gone_at + RETENTION
    expired = run(api, {}, now=gone_at + RETENTION)
    assert [type(a) for a in expired.actions] == [Delete]
    assert api.objects == {} and expired.wake_at is None
    # Deleted for its retention, and logged so: not as an earlier Node's object.
    [deleted] = expired.actions
    assert isinstance(deleted, Delete) and not deleted.earlier_node


def test_a_device_that_comes_back_is_present_again_without_being_recreated() -> None:
    api = FakeApi()
    run(api, want(loop_spec()))
    uid = next(iter(api.objects.values()))["metadata"]["uid"]
    run(api, {}, now=T0 + dt.timedelta(minutes=1))
    back = run(api, want(loop_spec()), now=T0 + dt.timedelta(minutes=2))
    assert [type(a) for a in back.actions] == [SetPresence]
    obj = next(iter(api.objects.values()))
    assert obj["metadata"]["uid"] == uid
    condition = present_condition(obj)
    assert condition is not None and condition.status == "True"
    assert condition.last_transition_time == T0 + dt.timedelta(minutes=2)


def test_transition_times_seen_by_the_agent_win_over_now() -> None:
    """After an API outage the condition records when the device really went."""
    api = FakeApi()
    spec = loop_spec()
    run(api, want(spec))
    name = node_device_name(NODE, spec.identity)
    really_gone = T0 + dt.timedelta(minutes=1)
    run(api, {}, now=T0 + dt.timedelta(minutes=5), transitions={name: really_gone})
    condition = present_condition(api.objects[name])
    assert condition is not None and condition.last_transition_time == really_gone


def test_a_recreated_nodes_devices_are_new_objects_not_the_old_ones() -> None:
    """A Node deleted and created again (same name, new uid): the NodeDevice its predecessor
    owned is deleted (uid and version preconditions) and waited for, then created anew."""
    api = FakeApi()
    run(api, want(loop_spec()))
    (old,) = api.objects.values()
    new_owner = Owner(NODE, "uid-node-2")
    outcome = plan(want(loop_spec()), api.objects, new_owner, now=T0, retention=RETENTION)
    (action,) = outcome.actions
    assert isinstance(action, Delete) and action.earlier_node
    assert (action.uid, action.resource_version) == (
        old["metadata"]["uid"],
        old["metadata"]["resourceVersion"],
    )
    assert outcome.waiting_for_deletion == (action.name,)
    api.apply(outcome)
    created = plan(want(loop_spec()), api.objects, new_owner, now=T0, retention=RETENTION)
    assert [type(a) for a in created.actions] == [Create]
    api.apply(created)
    (new,) = api.objects.values()
    assert new["metadata"]["ownerReferences"][0]["uid"] == "uid-node-2"


def test_an_object_without_a_node_owner_is_adopted() -> None:
    api = FakeApi()
    run(api, want(loop_spec()))
    next(iter(api.objects.values()))["metadata"]["ownerReferences"] = []
    outcome = plan(want(loop_spec()), api.objects, OWNER, now=T0, retention=RETENTION)
    (action,) = outcome.actions
    assert isinstance(action, UpdateSpec)
    assert action.patch == {
        "metadata": {
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "uid-node-1"}]
        }
    }


def test_an_object_being_deleted_is_waited_for() -> None:
    api = FakeApi()
    run(api, want(loop_spec()))
    next(iter(api.objects.values()))["metadata"]["deletionTimestamp"] = "2026-11-25T10:00:00Z"
    outcome = plan(want(loop_spec()), api.objects, OWNER, now=T0, retention=RETENTION)
    assert outcome.empty and len(outcome.waiting_for_deletion) == 1


def test_a_broken_condition_written_by_someone_else_is_replaced() -> None:
    api = FakeApi()
    run(api, want(loop_spec()))
    obj = next(iter(api.objects.values()))
    obj["status"]["conditions"] = [{"type": "Present", "status": "maybe"}]
    (action,) = run(api, want(loop_spec())).actions
    assert isinstance(action, SetPresence) and action.present
    assert [c["status"] for c in action.conditions] == ["True"]


def test_desired_applies_filters_and_resolves_duplicates_from_a_real_tree() -> None:
    devices: list[DescribedDevice] = list(described("usb-laptop").values())
    everything = desired(devices, {}, NODE, DeviceFilter())
    assert len(everything) == 4
    assert {s.kernel_name for s in everything.values()} == {"sdb", "sdb1", "sdc", "sdd"}
    only_disks = desired(devices, {}, NODE, DeviceFilter(exclude_paths=("/dev/sd*[0-9]",)))
    assert {s.kernel_name for s in only_disks.values()} == {"sdb", "sdc", "sdd"}
    # Each name is the hash of the (resolved) identity it carries.
    for name, spec in everything.items():
        assert name == node_device_name(NODE, spec.identity)


# --- property: one round converges; repeats and event storms write nothing --------------------

sizes = st.sampled_from([0, 8 << 20, 16 << 20])
populations = st.dictionaries(st.sampled_from([f"loop{i}" for i in range(6)]), sizes, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(populations, min_size=1, max_size=6), st.integers(0, 5))
def test_any_sequence_of_states_converges_in_one_round_and_repeats_write_nothing(
    states: list[dict[str, int]], repeats: int
) -> None:
    api = FakeApi()
    now = T0
    for state in states:
        now += dt.timedelta(seconds=30)
        wanted = want(*(loop_spec(name, size) for name, size in state.items()))
        run(api, wanted, now=now)
        # Converged: every wanted device exists with its spec and Present=True; others are absent.
        for name, spec in wanted.items():
            obj = api.objects[name]
            assert obj["spec"] == spec.to_api()
            condition = present_condition(obj)
            assert condition is not None and condition.status == "True"
        for name, obj in api.objects.items():
            if name not in wanted:
                condition = present_condition(obj)
                assert condition is not None and condition.status == "False"
        # The same state again (an event storm without a real change): no write at all.
        writes = api.writes
        for _ in range(repeats):
            assert run(api, wanted, now=now).empty
        assert api.writes == writes


# --- what the full mutation run found unpinned -------------------------------------------------


def from_api(objects: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The objects as the agent reads them: parsed from the API server's JSON."""
    parsed: dict[str, dict[str, Any]] = json.loads(json.dumps(objects))
    return parsed


def test_plans_and_their_actions_cannot_change_after_they_are_made() -> None:
    api = FakeApi()
    created = run(api, want(loop_spec(size=8 << 20)))
    (create,) = created.actions
    (update,) = run(api, want(loop_spec(size=16 << 20))).actions
    gone = run(api, {}, now=T0)
    (presence,) = gone.actions
    (delete,) = plan({}, api.objects, OWNER, now=T0 + RETENTION, retention=RETENTION).actions
    assert not created.empty and not gone.empty  # each has a write to make
    changes: list[tuple[object, str, object]] = [
        (OWNER, "uid", "uid-node-2"),
        (created, "actions", ()),
        (create, "name", "other"),
        (update, "changed", ()),
        (presence, "present", True),
        (delete, "uid", "someone-else"),
    ]
    for target, attribute, value in changes:
        with pytest.raises(FrozenInstanceError):
            setattr(target, attribute, value)


def test_a_device_whose_old_object_is_being_deleted_does_not_hold_up_the_others() -> None:
    api = FakeApi()
    # The one being deleted is the first by name, so the other comes after it.
    first, second = sorted(
        (loop_spec("loop1"), loop_spec("loop2")), key=lambda s: node_device_name(NODE, s.identity)
    )
    run(api, want(first))
    deleting = node_device_name(NODE, first.identity)
    api.objects[deleting]["metadata"]["deletionTimestamp"] = "2026-11-25T10:00:00Z"
    outcome = plan(want(first, second), api.objects, OWNER, now=T0, retention=RETENTION)
    assert outcome.waiting_for_deletion == (deleting,)
    assert [(type(a), a.name) for a in outcome.actions] == [(Create, node_device_name(NODE, second.identity))]


def test_every_device_of_a_recreated_node_is_deleted_at_once_whatever_its_new_uid() -> None:
    """Read from the API (JSON), each object the earlier Node owned is deleted in the same round;
    uids are random, so the new one may sort before or after the old one."""
    specs = [loop_spec(f"loop{i}") for i in range(3)]
    for new_uid in ("uid-node-0", "uid-node-2"):
        api = FakeApi()
        run(api, want(*specs))
        outcome = plan(want(*specs), from_api(api.objects), Owner(NODE, new_uid), now=T0, retention=RETENTION)
        assert [type(a) for a in outcome.actions] == [Delete] * 3
        assert all(isinstance(a, Delete) and a.earlier_node for a in outcome.actions)
        assert sorted(outcome.waiting_for_deletion) == sorted(want(*specs))


def test_absent_devices_whose_retention_ended_while_the_agent_was_away_are_all_deleted() -> None:
    api = FakeApi()
    run(api, want(loop_spec("loop1"), loop_spec("loop2")))
    run(api, {}, now=T0)
    # The agent was down when the retention ended; it looks again an hour later.
    outcome = plan({}, api.objects, OWNER, now=T0 + RETENTION + dt.timedelta(hours=1), retention=RETENTION)
    assert [type(a) for a in outcome.actions] == [Delete, Delete]
    assert outcome.wake_at is None


def test_an_object_read_back_from_the_api_unchanged_needs_no_write() -> None:
    api = FakeApi()
    run(api, want(loop_spec("loop1"), loop_spec("loop2")))
    assert plan(
        want(loop_spec("loop1"), loop_spec("loop2")),
        from_api(api.objects),
        OWNER,
        now=T0,
        retention=RETENTION,
    ).empty


def test_labels_someone_else_changed_are_put_back() -> None:
    api = FakeApi()
    spec = loop_spec()
    run(api, want(spec))
    obj = next(iter(api.objects.values()))
    # One value that sorts after the agent's, one before, one removed.
    obj["metadata"]["labels"].update({MANAGED_BY_LABEL: "zz-someone", DEVICE_TYPE_LABEL: "a-disk"})
    del obj["metadata"]["labels"][NODE_LABEL]
    (action,) = plan(want(spec), from_api(api.objects), OWNER, now=T0, retention=RETENTION).actions
    assert isinstance(action, UpdateSpec)
    assert action.patch["metadata"]["labels"] == {
        NODE_LABEL: NODE,
        DEVICE_TYPE_LABEL: "loop",
        MANAGED_BY_LABEL: "storage-agent",
    }


def test_an_object_owned_by_another_node_is_given_to_this_one_keeping_its_other_owners() -> None:
    """An ownerReference to another Node (a NodeDevice copied from elsewhere) is replaced by this
    Node's; owners of other kinds stay, even when they are named after the node, whichever way
    their kind, the other Node's name and its uid sort."""
    ours = {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": OWNER.uid}
    others = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": NODE, "uid": "uid-cm"},
        {"apiVersion": "v1", "kind": "Pod", "name": NODE, "uid": "uid-pod"},
    ]
    for foreign_name, foreign_uid in (("worker-0", "uid-node-0"), ("worker-2", "uid-node-9")):
        api = FakeApi()
        spec = loop_spec()
        run(api, want(spec))
        obj = next(iter(api.objects.values()))
        foreign = {"apiVersion": "v1", "kind": "Node", "name": foreign_name, "uid": foreign_uid}
        obj["metadata"]["ownerReferences"] = [others[0], foreign, others[1]]
        (action,) = plan(want(spec), from_api(api.objects), OWNER, now=T0, retention=RETENTION).actions
        assert isinstance(action, UpdateSpec) and action.changed == ("ownerReferences",)
        assert action.patch["metadata"]["ownerReferences"] == [*others, ours]


def test_a_gone_device_whose_present_condition_is_unset_or_unknown_is_marked_absent() -> None:
    for conditions in ([], [{"type": "Present", "status": "Unknown", "reason": "Probing", "message": ""}]):
        api = FakeApi()
        run(api, want(loop_spec()))
        obj = next(iter(api.objects.values()))
        obj["status"]["conditions"] = [
            {**c, "lastTransitionTime": "2026-11-25T09:00:00Z"} for c in conditions
        ]
        outcome = plan({}, from_api(api.objects), OWNER, now=T0, retention=RETENTION)
        (action,) = outcome.actions
        assert isinstance(action, SetPresence) and not action.present
        assert outcome.wake_at == T0 + RETENTION  # the retention starts now, not at the old time


def test_an_absent_object_being_deleted_is_left_to_its_deletion() -> None:
    api = FakeApi()
    run(api, want(loop_spec()))
    next(iter(api.objects.values()))["metadata"]["deletionTimestamp"] = "2026-11-25T10:00:00Z"
    outcome = plan({}, from_api(api.objects), OWNER, now=T0 + 2 * RETENTION, retention=RETENTION)
    assert outcome.empty and outcome.wake_at is None


def test_a_broken_condition_does_not_take_the_conditions_after_it_with_it() -> None:
    api = FakeApi()
    run(api, want(loop_spec()))
    obj = next(iter(api.objects.values()))
    bound = {
        "type": "Bound",
        "status": "True",
        "reason": "Attached",
        "message": "",
        "lastTransitionTime": "2026-11-25T10:00:00Z",
    }
    obj["status"]["conditions"] = [{"type": "Broken", "status": "maybe"}, *obj["status"]["conditions"], bound]
    outcome = plan({}, from_api(api.objects), OWNER, now=T0, retention=RETENTION)
    (action,) = outcome.actions
    assert isinstance(action, SetPresence) and not action.present
    assert [c["type"] for c in action.conditions] == ["Present", "Bound"]
