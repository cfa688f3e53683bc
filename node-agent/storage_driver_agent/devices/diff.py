"""What to write so that the node's NodeDevices match its devices (pure).

`desired` turns described devices into the specs the node should publish, by NodeDevice name;
`plan` compares them with the NodeDevices that exist for the node and returns the writes:

| device        | NodeDevice                          | action                               |
|---------------|-------------------------------------|--------------------------------------|
| present       | missing                             | create, then Present=True            |
| present       | spec, labels or owner differ        | merge-patch only what differs        |
| present       | Present is not True                 | Present=True (status)                |
| gone          | Present is True or unset            | Present=False (status)               |
| gone          | Present=False for >= retention      | delete (uid and version preconditions)|
| present       | owned by an earlier Node of the name| delete, then create anew (never reused)|
| anything else |                                     | nothing: no write                    |

Only fields the agent owns are written (spec, three labels, the Node ownerReference, the
Present condition); `status.boundDrivers` and other conditions are left as they are.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from storage_driver_api.constants import (
    DEVICE_TYPE_LABEL,
    MANAGED_BY_LABEL,
    NODE_DEVICES,
    NODE_LABEL,
    node_label_value,
)
from storage_driver_api.meta import Condition, ConditionStatus, find_condition, set_condition
from storage_driver_api.nodedevice import NodeDeviceSpec, node_device_name

from storage_driver_agent.devices.describe import DescribedDevice
from storage_driver_agent.devices.filters import DeviceFilter
from storage_driver_agent.devices.identity import Candidate, claims_from, resolve_duplicates

Obj = Mapping[str, Any]

MANAGED_BY = "storage-agent"
PRESENT = "Present"
REASON_PRESENT = "Detected"
REASON_GONE = "Removed"


@dataclass(frozen=True)
class Owner:
    """The Node that owns this agent's NodeDevices (its uid makes the ownerReference)."""

    node_name: str
    uid: str


@dataclass(frozen=True)
class Create:
    name: str
    body: dict[str, Any]
    conditions: list[dict[str, Any]]  # written to the status subresource right after
    spec: NodeDeviceSpec


@dataclass(frozen=True)
class UpdateSpec:
    name: str
    patch: dict[str, Any]  # merge patch: metadata (labels, ownerReferences) and spec fields
    changed: tuple[str, ...]


@dataclass(frozen=True)
class SetPresence:
    name: str
    present: bool
    conditions: list[dict[str, Any]]  # the whole list; other writers' conditions kept
    kernel_name: str


@dataclass(frozen=True)
class Delete:
    name: str
    uid: str
    resource_version: str
    kernel_name: str
    earlier_node: bool = False  # it belonged to an earlier Node of this name (not retention)


Action = Create | UpdateSpec | SetPresence | Delete


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    wake_at: dt.datetime | None  # when the next absent NodeDevice's retention ends
    waiting_for_deletion: tuple[str, ...] = ()  # present devices whose old object is being deleted

    @property
    def empty(self) -> bool:
        return not self.actions


def desired(
    devices: Iterable[DescribedDevice],
    existing: Mapping[str, Obj],
    node_name: str,
    device_filter: DeviceFilter,
) -> dict[str, NodeDeviceSpec]:
    """The specs the node should publish, by NodeDevice name (filters applied, duplicates resolved)."""
    allowed = [d for d in devices if device_filter.allows(d.spec)]
    identities = resolve_duplicates(
        [Candidate(d.spec.kernel_name, d.spec.identity, d.location) for d in allowed], claims_from(existing)
    )
    result: dict[str, NodeDeviceSpec] = {}
    for device in allowed:
        ident = identities[device.spec.kernel_name]
        spec = (
            device.spec
            if ident == device.spec.identity
            else device.spec.model_copy(update={"identity": ident})
        )
        result[node_device_name(node_name, ident)] = spec
    return result


def labels(node_name: str, spec: NodeDeviceSpec) -> dict[str, str]:
    return {
        NODE_LABEL: node_label_value(node_name),
        DEVICE_TYPE_LABEL: str(spec.type),
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "name": owner.node_name, "uid": owner.uid}


def new_object(name: str, spec: NodeDeviceSpec, owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": NODE_DEVICES.api_version,
        "kind": NODE_DEVICES.kind,
        "metadata": {
            "name": name,
            "labels": labels(owner.node_name, spec),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec.to_api(),
    }


def plan(
    want: Mapping[str, NodeDeviceSpec],
    existing: Mapping[str, Obj],
    owner: Owner,
    *,
    now: dt.datetime,
    retention: dt.timedelta,
    transitions: Mapping[str, dt.datetime] | None = None,
) -> Plan:
    """The writes that make `existing` match `want`; none when they already match.

    `transitions` holds when the agent saw each device arrive or go (kept across an API outage,
    so that lastTransitionTime records the real moment); `now` is used otherwise.
    """
    seen = transitions or {}
    actions: list[Action] = []
    waiting: list[str] = []
    for name, spec in sorted(want.items()):
        obj = existing.get(name)
        if obj is not None and obj.get("metadata", {}).get("deletionTimestamp"):
            waiting.append(name)
            continue
        if obj is not None and owned_by_earlier_node(obj, owner):
            # The Node was deleted and created again: what its predecessor owned is garbage (the
            # collector deletes it too); a new object starts a new history.
            metadata = obj.get("metadata") or {}
            uid, version = str(metadata.get("uid", "")), str(metadata.get("resourceVersion", ""))
            actions.append(Delete(name, uid, version, spec.kernel_name, earlier_node=True))
            waiting.append(name)
            continue
        present = _presence(spec.kernel_name, True)
        if obj is None:
            initial = set_condition([], PRESENT, *present, at=seen.get(name, now))
            actions.append(Create(name, new_object(name, spec, owner), _dump(initial), spec))
            continue
        patch, changed = spec_patch(obj, spec, owner)
        if patch:
            actions.append(UpdateSpec(name, patch, changed))
        if (conditions := _presence_update(obj, present, seen.get(name, now))) is not None:
            actions.append(SetPresence(name, True, conditions, spec.kernel_name))
    wake_at: dt.datetime | None = None
    for name, obj in sorted(existing.items()):
        if name in want or obj.get("metadata", {}).get("deletionTimestamp"):
            continue
        kernel_name = str((obj.get("spec") or {}).get("kernelName", "?"))
        current = present_condition(obj)
        if current is None or current.status != ConditionStatus.FALSE:
            update = _presence_update(obj, _presence(kernel_name, False), seen.get(name, now))
            if update is not None:
                actions.append(SetPresence(name, False, update, kernel_name))
            expiry = seen.get(name, now) + retention
        else:
            expiry = current.last_transition_time + retention
            if expiry <= now:
                metadata = obj.get("metadata") or {}
                actions.append(
                    Delete(
                        name,
                        str(metadata.get("uid", "")),
                        str(metadata.get("resourceVersion", "")),
                        kernel_name,
                    )
                )
                continue
        wake_at = expiry if wake_at is None else min(wake_at, expiry)
    return Plan(tuple(actions), wake_at, tuple(waiting))


def owned_by_earlier_node(obj: Obj, owner: Owner) -> bool:
    """The object names a Node of this name as its owner, but with another uid."""
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    nodes = [r for r in references if r.get("kind") == "Node" and r.get("name") == owner.node_name]
    return bool(nodes) and not any(r.get("uid") == owner.uid for r in nodes)


def spec_patch(obj: Obj, spec: NodeDeviceSpec, owner: Owner) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A merge patch with only what differs from the object (empty when nothing does)."""
    patch: dict[str, Any] = {}
    changed: list[str] = []
    metadata = obj.get("metadata") or {}
    current_labels = metadata.get("labels") or {}
    label_patch = {k: v for k, v in labels(owner.node_name, spec).items() if current_labels.get(k) != v}
    if label_patch:
        patch.setdefault("metadata", {})["labels"] = label_patch
        changed.append("labels")
    references = list(metadata.get("ownerReferences") or [])
    if not any(r.get("kind") == "Node" and r.get("uid") == owner.uid for r in references):
        others = [r for r in references if r.get("kind") != "Node"]
        patch.setdefault("metadata", {})["ownerReferences"] = [*others, owner_reference(owner)]
        changed.append("ownerReferences")
    want = spec.to_api()
    have = obj.get("spec") or {}
    spec_changes: dict[str, Any] = {k: v for k, v in want.items() if have.get(k) != v}
    spec_changes.update({k: None for k in have if k not in want})
    if spec_changes:
        patch["spec"] = spec_changes
        changed.extend(f"spec.{k}" for k in sorted(spec_changes))
    return patch, tuple(changed)


def _presence(kernel_name: str, present: bool) -> tuple[ConditionStatus, str, str]:
    if present:
        return ConditionStatus.TRUE, REASON_PRESENT, f"{kernel_name} is present on the node"
    return ConditionStatus.FALSE, REASON_GONE, f"{kernel_name} is gone from the node"


def _presence_update(
    obj: Obj, presence: tuple[ConditionStatus, str, str], at: dt.datetime
) -> list[dict[str, Any]] | None:
    """The new condition list, or None when Present already says this."""
    conditions = _conditions(obj)
    status, reason, message = presence
    current = find_condition(conditions, PRESENT)
    if current is not None and (current.status, current.reason, current.message) == (status, reason, message):
        return None
    return _dump(set_condition(conditions, PRESENT, status, reason, message, at=at))


def _conditions(obj: Obj) -> list[Condition]:
    raw = (obj.get("status") or {}).get("conditions") or []
    result: list[Condition] = []
    for item in raw if isinstance(raw, list) else []:
        try:
            result.append(Condition.model_validate(item))
        except ValidationError:
            continue  # not ours to repair; Present is rewritten below if it was the broken one
    return result


def _dump(conditions: list[Condition]) -> list[dict[str, Any]]:
    return [c.to_api() for c in conditions]


def present_condition(obj: Obj) -> Condition | None:
    return find_condition(_conditions(obj), PRESENT)
