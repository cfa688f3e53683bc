"""Admission decisions (pure): may this caller make this write?

Two questions, both answered without I/O:

- An agent's write (NodeDevices, its NodeDriverConfig, its Lease) is admitted only for the node
  the agent's pod runs on. The caller's node comes from its token: `userInfo.extra` carries the
  node name on 1.30+, and on older clusters the pod name and uid of a projected token, which the
  webhook resolves to the Pod's `spec.nodeName` (the Pod is handed in here; this module reads
  nothing). Every refusal names the caller's node and the node the object belongs to.
- A StorageDriver is admitted only when the models parse its spec (what the 1.20 schema cannot
  check) and its source obeys the chart's source policy.

Callers other than the agents are not judged here: RBAC decides for them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from storage_driver_api.constants import NODE_LABEL, lease_name, node_label_value
from storage_driver_api.nodedevice import node_device_name_prefix
from storage_driver_api.storagedriver import StorageDriverSpec

from storage_driver_operator.views import parse_spec

NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"  # 1.30+
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"

NODE_DEVICE = "nodedevices"
NODE_DRIVER_CONFIG = "nodedriverconfigs"
LEASE = "leases"
KINDS = {NODE_DEVICE: "NodeDevice", NODE_DRIVER_CONFIG: "NodeDriverConfig", LEASE: "Lease"}

_HASH_SUFFIX = re.compile(r"^[0-9a-f]{10}$")
WHICH = "<which>"  # replaced by "existing", "new", or both


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str = ""


ALLOWED = Verdict(True)


def refused(message: str) -> Verdict:
    return Verdict(False, message)


# --- who is calling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """The identity an admission request names: enough to find the caller's node."""

    username: str
    is_agent: bool
    node_name: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None


def _first(extra: Mapping[str, Any], key: str) -> str | None:
    values = extra.get(key) or []
    if isinstance(values, str):
        return values or None
    return str(values[0]) if values else None


def caller_from(userinfo: Mapping[str, Any], agent_usernames: Collection[str]) -> Caller:
    """The caller of an admission request (`request.userInfo`); an agent when its username is one
    of the agents' ServiceAccounts (`system:serviceaccount:<namespace>:<name>`)."""
    username = str(userinfo.get("username") or "")
    extra = userinfo.get("extra") or {}
    return Caller(
        username=username,
        is_agent=username in agent_usernames,
        node_name=_first(extra, NODE_NAME_EXTRA),
        pod_name=_first(extra, POD_NAME_EXTRA),
        pod_uid=_first(extra, POD_UID_EXTRA),
    )


def node_of(caller: Caller, pod: Mapping[str, Any] | None) -> str | Verdict:
    """The agent's node: from the token when it names one, else from its (bound) Pod, whose uid
    must be the token's. A refusal when the token does not tie the caller to a node."""
    if caller.node_name:
        return caller.node_name
    if not caller.pod_name or not caller.pod_uid:
        return refused(
            f"{caller.username} sent a token that is not bound to a pod (no {POD_NAME_EXTRA} in its "
            "user info): an agent must use the projected ServiceAccount token of its pod, as the chart "
            "mounts it, so that its writes can be confined to its node"
        )
    if pod is None:
        return refused(
            f"{caller.username}: its token is bound to pod {caller.pod_name}, which does not exist "
            "(any more); a token outliving its pod grants no node"
        )
    uid = (pod.get("metadata") or {}).get("uid")
    if uid != caller.pod_uid:
        return refused(
            f"{caller.username}: its token is bound to pod {caller.pod_name} with uid {caller.pod_uid}, "
            f"but that pod now has uid {uid}: a token of a deleted pod grants no node"
        )
    node = (pod.get("spec") or {}).get("nodeName")
    if not node:
        return refused(
            f"{caller.username}: its pod {caller.pod_name} is not scheduled to a node (no spec.nodeName)"
        )
    return str(node)


# --- what is written --------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One admission request, as far as the decision reads it."""

    resource: str  # plural: nodedevices, nodedriverconfigs, leases, storagedrivers
    operation: str  # CREATE, UPDATE, DELETE (CONNECT is never routed here)
    name: str
    namespace: str | None = None
    subresource: str | None = None
    old: Mapping[str, Any] | None = None
    new: Mapping[str, Any] | None = None

    @property
    def objects(self) -> list[tuple[str, Mapping[str, Any]]]:
        """The objects the write touches: the old one (update, delete) and the new one (create,
        update); an agent must own both, so that it can neither take over nor give away."""
        found = [("existing", self.old), ("new", self.new)]
        return [(which, obj) for which, obj in found if obj is not None]

    def describe(self) -> str:
        what = KINDS.get(self.resource, self.resource)
        where = f"{self.namespace}/" if self.namespace else ""
        sub = f" {self.subresource}" if self.subresource else ""
        return f"{self.operation.lower()}{sub} of {what} {where}{self.name}"


def judge_agent_write(
    write: Write, caller: Caller, pod: Mapping[str, Any] | None, lease_namespace: str
) -> Verdict:
    """Admit an agent's write only for the node its pod runs on; anyone else is RBAC's to judge."""
    if not caller.is_agent:
        return ALLOWED
    node = node_of(caller, pod)
    if isinstance(node, Verdict):
        return refused(f"{write.describe()} refused: {node.message}")
    problems = _ownership_problems(write, node, lease_namespace)
    if not problems:
        return ALLOWED
    return refused(f"{write.describe()} refused for the agent on node {node}: " + "; ".join(problems))


def _ownership_problems(write: Write, node: str, lease_namespace: str) -> list[str]:
    if write.resource == NODE_DEVICE:
        return _node_device_problems(write, node)
    if write.resource == NODE_DRIVER_CONFIG:
        return _node_driver_config_problems(write, node)
    if write.resource == LEASE:
        return _lease_problems(write, node, lease_namespace)
    return [f"agents do not write {write.resource}"]


def _node_device_problems(write: Write, node: str) -> list[str]:
    # Each check reads "the <which> object's ...": said once when the old and the new object fail it alike.
    found: dict[str, list[str]] = {}
    for which, obj in write.objects:
        for template in _device_fields(obj, node):
            found.setdefault(template, []).append(which)
    problems = [template.replace(WHICH, " and ".join(whiches)) for template, whiches in found.items()]
    prefix = node_device_name_prefix(node) + "-"
    if not (write.name.startswith(prefix) and _HASH_SUFFIX.match(write.name.removeprefix(prefix))):
        problems.append(f"the name is not <node>-<hash> for node {node} ({prefix}<10 hex digits>)")
    return problems


def _device_fields(obj: Mapping[str, Any], node: str) -> list[str]:
    meta = obj.get("metadata") or {}
    problems = []
    owner = (obj.get("spec") or {}).get("nodeName")
    if owner != node:
        problems.append(f"the {WHICH} object's spec.nodeName is node {owner!r}, not {node}")
    label = (meta.get("labels") or {}).get(NODE_LABEL)
    if label != node_label_value(node):
        problems.append(
            f"the {WHICH} object's label {NODE_LABEL} is {label!r}, not {node_label_value(node)!r} (node {node})"
        )
    return problems + _owner_problems(WHICH, meta, node)


def _owner_problems(which: str, meta: Mapping[str, Any], node: str) -> list[str]:
    return [
        f"the {which} object is owned by node {ref.get('name')!r}, not {node}"
        for ref in meta.get("ownerReferences") or []
        if ref.get("kind") == "Node" and ref.get("name") != node
    ]


def _node_driver_config_problems(write: Write, node: str) -> list[str]:
    # Its name is its node's (immutable), so the name decides whose it is.
    problems = (
        [] if write.name == node else [f"it is the NodeDriverConfig of node {write.name}, not of {node}"]
    )
    if write.operation == "CREATE" and write.subresource is None:
        spec = (write.new or {}).get("spec") or {}
        if spec.get("drivers") or set(spec) - {"drivers"}:
            problems.append(
                "an agent may create its NodeDriverConfig only without a spec (the operator writes it)"
            )
        problems += _owner_problems("new", (write.new or {}).get("metadata") or {}, node)
    elif write.subresource != "status":
        problems.append(
            "an agent writes only the status of its NodeDriverConfig (the operator writes the spec)"
        )
    return problems


def _lease_problems(write: Write, node: str, lease_namespace: str) -> list[str]:
    own = lease_name(node)
    problems = []
    if write.name != own or write.namespace != lease_namespace:
        problems.append(f"it is not the Lease of node {node} ({lease_namespace}/{own})")
    holder = ((write.new or {}).get("spec") or {}).get("holderIdentity")
    if holder not in (None, node):
        problems.append(f"spec.holderIdentity names node {holder!r}, not {node}")
    return problems


# --- StorageDrivers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SourcePolicy:
    """What the chart allows as driver sources (values `driverSources`)."""

    config_map_namespaces: frozenset[str] | None = None  # None: any namespace
    require_sha256: bool = False  # for configMap and url sources


def source_problems(spec: StorageDriverSpec, policy: SourcePolicy) -> list[str]:
    """Breaches of the source policy, each naming the field and the fix (also checked on the node)."""
    problems = []
    config_map = spec.source.config_map
    allowed = policy.config_map_namespaces
    if config_map is not None and allowed is not None and config_map.namespace not in allowed:
        problems.append(
            f"spec.source.configMap.namespace: {config_map.namespace!r} is not an allowed namespace for "
            f"driver sources ({', '.join(sorted(allowed)) or 'none'}); move the ConfigMap there or ask an "
            "administrator to allow the namespace (chart value driverSources.configMapNamespaces)"
        )
    if config_map is not None and policy.require_sha256 and not config_map.sha256:
        problems.append(
            "spec.source.configMap.sha256: required by this cluster (chart value driverSources.requireSha256); "
            "set it to the sha256 (lowercase hex) of the key's content"
        )
    return problems


def judge_storage_driver(write: Write, policy: SourcePolicy) -> Verdict:
    """Admit a StorageDriver whose spec the models accept. An update that leaves the spec as it was
    (finalizers, annotations, deletion) is always admitted: the operator must be able to finish
    with a StorageDriver that was stored while the webhook was down."""
    if write.operation == "DELETE" or write.new is None:
        return ALLOWED
    spec_obj = write.new.get("spec")
    if write.operation == "UPDATE" and write.old is not None and write.old.get("spec") == spec_obj:
        return ALLOWED
    spec, invalid = parse_spec(spec_obj)
    if spec is None:
        return refused(f"StorageDriver {write.name} is invalid: {invalid}")
    problems = source_problems(spec, policy)
    if problems:
        return refused(f"StorageDriver {write.name} is invalid: " + "; ".join(problems))
    return ALLOWED
