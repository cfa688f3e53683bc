"""Own-node admission and StorageDriver validation: the pure decisions of the webhook."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from storage_driver_api.constants import LEASE_PREFIX, NODE_LABEL, node_label_value
from storage_driver_operator.admission import (
    NODE_NAME_EXTRA,
    POD_NAME_EXTRA,
    POD_UID_EXTRA,
    Caller,
    SourcePolicy,
    Verdict,
    Write,
    caller_from,
    judge_agent_write,
    judge_storage_driver,
    node_of,
)

from tests.api_cases import INVALID_CASES, apply_changes, valid_storage_driver

AGENT = "system:serviceaccount:sdo:sdo-agent"
NAMESPACE = "sdo"
HASH = "0123456789"
POD = {"metadata": {"uid": "uid-a"}, "spec": {"nodeName": "node-a"}}


def agent(pod: str = "agent-a", uid: str = "uid-a", node: str | None = None) -> Caller:
    extra: dict[str, list[str]] = {POD_NAME_EXTRA: [pod], POD_UID_EXTRA: [uid]}
    if node:
        extra[NODE_NAME_EXTRA] = [node]
    return caller_from({"username": AGENT, "groups": ["system:serviceaccounts"], "extra": extra}, [AGENT])


def device(
    node: str, name: str | None = None, label: str | None = None, owner: str | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name or f"{node}-{HASH}",
            "labels": {NODE_LABEL: label if label is not None else node_label_value(node)},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": owner or node, "uid": "x"}],
        },
        "spec": {"nodeName": node, "type": "loop"},
    }


def device_write(operation: str, old: dict[str, Any] | None, new: dict[str, Any] | None, **kw: Any) -> Write:
    name = ((new or old) or {})["metadata"]["name"]
    return Write("nodedevices", operation, name, old=old, new=new, **kw)


def judge(write: Write, caller: Caller | None = None, pod: dict[str, Any] | None = POD) -> Verdict:
    return judge_agent_write(write, caller or agent(), pod, NAMESPACE)


def assert_refused_naming(verdict: Verdict, *words: str) -> None:
    assert not verdict.allowed
    for word in words:
        assert word in verdict.message, f"{word!r} not in {verdict.message!r}"


# --- the caller's node ------------------------------------------------------------------------


def test_a_caller_is_an_agent_only_by_its_service_account() -> None:
    assert agent().is_agent
    other = caller_from({"username": "system:serviceaccount:sdo:sdo-operator", "extra": {}}, [AGENT])
    assert not other.is_agent
    assert caller_from({"username": "admin"}, [AGENT]) == Caller("admin", False)


def test_the_node_comes_from_the_bound_pod_with_its_uid_checked() -> None:
    assert node_of(agent(), POD) == "node-a"
    replaced = {"metadata": {"uid": "uid-new"}, "spec": {"nodeName": "node-a"}}
    assert_refused_naming(node_of(agent(), replaced), "uid-a", "uid-new")  # type: ignore[arg-type]
    assert_refused_naming(node_of(agent(), None), "agent-a", "does not exist")  # type: ignore[arg-type]
    unscheduled = {"metadata": {"uid": "uid-a"}, "spec": {}}
    assert_refused_naming(node_of(agent(), unscheduled), "not scheduled")  # type: ignore[arg-type]


def test_the_node_name_in_the_token_wins_when_present() -> None:
    # 1.30+ put the node into the token: no Pod lookup needed.
    assert node_of(agent(node="node-z"), None) == "node-z"


def test_a_token_bound_to_no_pod_grants_no_node() -> None:
    legacy = caller_from({"username": AGENT, "extra": {}}, [AGENT])
    verdict = judge(device_write("CREATE", None, device("node-a")), legacy, pod=None)
    assert_refused_naming(verdict, "not bound to a pod", POD_NAME_EXTRA, "projected")


# --- NodeDevices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "old", "new"),
    [
        ("CREATE", None, device("node-a")),
        ("UPDATE", device("node-a"), device("node-a")),
        ("DELETE", device("node-a"), None),
    ],
)
def test_an_agent_writes_its_own_nodes_devices(operation: str, old: Any, new: Any) -> None:
    assert judge(device_write(operation, old, new)).allowed
    assert judge(device_write(operation, old, new, subresource="status")).allowed


@pytest.mark.parametrize(
    ("operation", "old", "new"),
    [
        ("CREATE", None, device("node-b")),
        ("UPDATE", device("node-b"), device("node-b")),
        ("DELETE", device("node-b"), None),
    ],
)
def test_an_agent_cannot_write_another_nodes_devices(operation: str, old: Any, new: Any) -> None:
    verdict = judge(device_write(operation, old, new))
    assert_refused_naming(verdict, "node-a", "node-b", f"node-b-{HASH}")
    assert_refused_naming(judge(device_write(operation, old, new, subresource="status")), "node-a", "node-b")


def test_an_agent_can_neither_take_over_nor_give_away_a_device() -> None:
    mine, theirs = device("node-a"), device("node-b", name=f"node-a-{HASH}")
    assert_refused_naming(judge(device_write("UPDATE", mine, theirs)), "new object", "node-b")
    assert_refused_naming(judge(device_write("UPDATE", theirs, mine)), "existing object", "node-b")


def test_every_field_that_names_the_node_must_name_the_callers() -> None:
    wrong_label = device("node-a", label="node-b")
    assert_refused_naming(judge(device_write("CREATE", None, wrong_label)), NODE_LABEL, "'node-b'", "node-a")
    wrong_node = device("node-a")
    wrong_node["spec"]["nodeName"] = "node-b"
    assert_refused_naming(
        judge(device_write("CREATE", None, wrong_node)), "spec.nodeName", "'node-b'", "node-a"
    )
    wrong_owner = device("node-a", owner="node-b")
    assert_refused_naming(judge(device_write("CREATE", None, wrong_owner)), "owned by node 'node-b'")


def test_an_agent_cannot_take_a_name_another_node_would_use() -> None:
    # Node "node-a" must not create "node-a-b-<hash>", the name pattern of node "node-a-b".
    squat = device("node-a", name=f"node-a-b-{HASH}")
    assert_refused_naming(judge(device_write("CREATE", None, squat)), "<node>-<hash>", "node-a")


def test_long_node_names_use_the_cut_prefix_and_label() -> None:
    node = "n" * 250
    pod = {"metadata": {"uid": "uid-a"}, "spec": {"nodeName": node}}
    own = device(node, name=f"{'n' * 242}-{HASH}")
    assert judge(device_write("CREATE", None, own), pod=pod).allowed


# --- NodeDriverConfigs ------------------------------------------------------------------------


def config(node: str, drivers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": node}, "spec": {"drivers": drivers or []}, "status": {}}


def config_write(operation: str, node: str, subresource: str | None = None, **objects: Any) -> Write:
    return Write("nodedriverconfigs", operation, node, subresource=subresource, **objects)


def test_an_agent_creates_its_nodedriverconfig_without_a_spec() -> None:
    assert judge(config_write("CREATE", "node-a", new=config("node-a"))).allowed
    bare = {"metadata": {"name": "node-a"}}
    assert judge(config_write("CREATE", "node-a", new=bare)).allowed


def test_an_agent_cannot_create_a_nodedriverconfig_with_drivers() -> None:
    loaded = config("node-a", [{"name": "evil", "version": "1.0.0"}])
    assert_refused_naming(judge(config_write("CREATE", "node-a", new=loaded)), "without a spec", "node-a")


def test_an_agent_cannot_create_another_nodes_nodedriverconfig() -> None:
    verdict = judge(config_write("CREATE", "node-b", new=config("node-b")))
    assert_refused_naming(verdict, "node-a", "node-b")


def test_an_agent_writes_only_its_own_nodedriverconfig_status() -> None:
    own = config_write("UPDATE", "node-a", "status", old=config("node-a"), new=config("node-a"))
    assert judge(own).allowed
    other = config_write("UPDATE", "node-b", "status", old=config("node-b"), new=config("node-b"))
    assert_refused_naming(judge(other), "node-a", "node-b")


def test_an_agent_never_writes_a_nodedriverconfig_spec() -> None:
    spec = config_write("UPDATE", "node-a", old=config("node-a"), new=config("node-a", [{"name": "x"}]))
    assert_refused_naming(judge(spec), "only the status")
    assert_refused_naming(judge(config_write("DELETE", "node-a", old=config("node-a"))), "only the status")


# --- Leases -----------------------------------------------------------------------------------


def lease(node: str, holder: str | None = None) -> dict[str, Any]:
    return {"metadata": {"name": LEASE_PREFIX + node}, "spec": {"holderIdentity": holder or node}}


def lease_write(operation: str, node: str, namespace: str = NAMESPACE, **objects: Any) -> Write:
    return Write("leases", operation, LEASE_PREFIX + node, namespace=namespace, **objects)


def test_an_agent_renews_only_its_own_lease() -> None:
    assert judge(lease_write("CREATE", "node-a", new=lease("node-a"))).allowed
    assert judge(lease_write("UPDATE", "node-a", old=lease("node-a"), new=lease("node-a"))).allowed
    other = lease_write("UPDATE", "node-b", old=lease("node-b"), new=lease("node-b"))
    assert_refused_naming(judge(other), "node-a", "storage-agent-node-b")
    assert_refused_naming(judge(lease_write("DELETE", "node-b", old=lease("node-b"))), "node-a", "node-b")


def test_an_agents_lease_must_hold_its_own_node_in_its_namespace() -> None:
    elsewhere = lease_write("CREATE", "node-a", namespace="kube-node-lease", new=lease("node-a"))
    assert_refused_naming(judge(elsewhere), f"{NAMESPACE}/storage-agent-node-a")
    impostor = lease_write("UPDATE", "node-a", old=lease("node-a"), new=lease("node-a", holder="node-b"))
    assert_refused_naming(judge(impostor), "holderIdentity", "node-b", "node-a")


def test_agents_write_nothing_else() -> None:
    assert_refused_naming(judge(Write("secrets", "CREATE", "x", new={})), "agents do not write secrets")


# --- everyone else ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "userinfo",
    [
        {
            "username": "system:serviceaccount:sdo:sdo-operator",
            "extra": {POD_NAME_EXTRA: ["op"], POD_UID_EXTRA: ["u"]},
        },
        {"username": "kubernetes-admin", "groups": ["system:masters"]},
        {"username": "system:serviceaccount:kube-system:generic-garbage-collector"},
    ],
)
def test_the_operator_admins_and_controllers_are_never_judged(userinfo: dict[str, Any]) -> None:
    caller = caller_from(userinfo, [AGENT])
    for write in (
        device_write("CREATE", None, device("node-b")),
        device_write("DELETE", device("node-b"), None),
        config_write("CREATE", "node-b", new=config("node-b", [{"name": "x"}])),
        lease_write("UPDATE", "node-b", old=lease("node-b"), new=lease("node-b")),
    ):
        assert judge(write, caller, pod=None).allowed


# --- StorageDrivers ---------------------------------------------------------------------------


def sd(spec: dict[str, Any]) -> dict[str, Any]:
    body = valid_storage_driver()
    body["spec"] = spec
    return body


def sd_write(operation: str, new: dict[str, Any] | None, old: dict[str, Any] | None = None) -> Write:
    return Write("storagedrivers", operation, "queue-settings", old=old, new=new)


ONLY_MODELS = [case for case in INVALID_CASES if not case.schema_rejects]


def test_a_valid_storage_driver_is_admitted() -> None:
    assert judge_storage_driver(sd_write("CREATE", valid_storage_driver()), SourcePolicy()).allowed


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c.id for c in INVALID_CASES])
def test_each_invalid_storage_driver_is_refused_naming_the_field(case: Any) -> None:
    spec = apply_changes(valid_storage_driver()["spec"], case.spec_changes)
    verdict = judge_storage_driver(sd_write("CREATE", sd(spec)), SourcePolicy())
    assert_refused_naming(verdict, case.field, "queue-settings")
    # An update that brings the invalid spec in is refused too.
    update = judge_storage_driver(sd_write("UPDATE", sd(spec), old=valid_storage_driver()), SourcePolicy())
    assert_refused_naming(update, case.field)


def test_an_update_leaving_the_spec_alone_is_admitted_even_when_invalid() -> None:
    # Stored while the webhook was down: the operator must still add and drop its finalizer.
    case = ONLY_MODELS[0]
    bad = sd(apply_changes(valid_storage_driver()["spec"], case.spec_changes))
    finalized = copy.deepcopy(bad)
    finalized["metadata"]["finalizers"] = ["storage.datawarehouse.io/unload"]
    assert judge_storage_driver(sd_write("UPDATE", finalized, old=bad), SourcePolicy()).allowed
    assert judge_storage_driver(sd_write("DELETE", None, old=bad), SourcePolicy()).allowed


def config_map_driver(namespace: str, sha256: str | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"name": "drivers", "namespace": namespace, "key": "d.py"}
    if sha256:
        source["sha256"] = sha256
    return sd(apply_changes(valid_storage_driver()["spec"], {"source": {"configMap": source}}))


def test_config_map_sources_only_from_allowed_namespaces() -> None:
    policy = SourcePolicy(config_map_namespaces=frozenset({"sdo"}))
    assert judge_storage_driver(sd_write("CREATE", config_map_driver("sdo")), policy).allowed
    verdict = judge_storage_driver(sd_write("CREATE", config_map_driver("kube-system")), policy)
    assert_refused_naming(verdict, "spec.source.configMap.namespace", "'kube-system'", "sdo")
    assert judge_storage_driver(sd_write("CREATE", config_map_driver("kube-system")), SourcePolicy()).allowed


def test_a_sha256_pin_is_required_when_the_cluster_says_so() -> None:
    policy = SourcePolicy(require_sha256=True)
    verdict = judge_storage_driver(sd_write("CREATE", config_map_driver("sdo")), policy)
    assert_refused_naming(verdict, "spec.source.configMap.sha256", "requireSha256")
    assert judge_storage_driver(sd_write("CREATE", config_map_driver("sdo", "a" * 64)), policy).allowed
    assert judge_storage_driver(sd_write("CREATE", config_map_driver("sdo")), SourcePolicy()).allowed
