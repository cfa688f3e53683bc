"""The webhook configuration: which requests reach the webhook, and which fail closed."""

from __future__ import annotations

from typing import Any

import pytest
from storage_driver_operator import webhookconfig
from storage_driver_operator.options import Options
from storage_driver_operator.webhookconfig import LEASE_NAMESPACE_LABEL, ServiceRef, configuration, webhooks

SERVED = {"url": "https://127.0.0.1:9443", "caBundle": "Q0E="}


def by_handler(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["name"].split(".")[0]: entry for entry in entries}


def routed(entry: dict[str, Any]) -> set[tuple[str, str]]:
    return {(res, op) for rule in entry["rules"] for res in rule["resources"] for op in rule["operations"]}


def test_agents_writes_fail_closed_and_storage_drivers_fail_open() -> None:
    entries = by_handler(webhooks(SERVED))
    assert set(entries) == set(webhookconfig.HANDLER_IDS)
    assert {name: e["failurePolicy"] for name, e in entries.items()} == {
        "agent-nodedevices": "Fail",
        "agent-nodedriverconfigs": "Fail",
        "agent-leases": "Fail",
        "operator-leases": "Ignore",
        "storagedrivers": "Ignore",
    }


def test_the_operators_own_writes_never_reach_a_closed_entry() -> None:
    """The operator writes NodeDriverConfig specs (UPDATE of the main resource) and StorageDriver
    status; neither is routed to a fail-closed entry, so a webhook outage cannot stop them."""
    closed = set().union(*(routed(e) for e in webhooks(SERVED) if e["failurePolicy"] == "Fail"))
    assert ("nodedriverconfigs", "UPDATE") not in closed
    assert not any(res.startswith("storagedrivers") for res, _ in closed)
    assert ("nodedriverconfigs/status", "UPDATE") in closed
    assert {("nodedevices", op) for op in ("CREATE", "UPDATE", "DELETE")} <= closed


def test_only_leases_in_the_labelled_namespace_reach_the_webhook() -> None:
    entries = by_handler(webhooks(SERVED))
    for name in ("agent-leases", "operator-leases"):
        assert entries[name]["namespaceSelector"] == {"matchLabels": {LEASE_NAMESPACE_LABEL: "true"}}


def test_every_lease_there_reaches_one_entry_and_only_the_leader_lease_fails_open() -> None:
    """An objectSelector matches the old or the new object: a Lease with the operator's label
    goes to the open entry, any other (an agent's, or one an agent strips of the label) to the
    closed one."""
    entries = by_handler(webhooks(SERVED))

    def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
        (expression,) = selector["matchExpressions"]
        inside = labels.get(expression["key"]) in expression["values"]
        return inside if expression["operator"] == "In" else not inside

    for labels, entry in (
        ({}, "agent-leases"),
        ({"app.kubernetes.io/component": "operator"}, "operator-leases"),
    ):
        assert [
            n for n in ("agent-leases", "operator-leases") if matches(entries[n]["objectSelector"], labels)
        ] == [entry]
    assert entries["agent-leases"]["failurePolicy"] == "Fail"


def test_each_entry_reaches_its_kopf_handler_by_id() -> None:
    for name, entry in by_handler(webhooks(SERVED)).items():
        assert entry["clientConfig"] == {"caBundle": "Q0E=", "url": f"https://127.0.0.1:9443/{name}"}
    service = ServiceRef("sdo", "sdo-webhook", 443)
    for name, entry in by_handler(webhooks(SERVED, service=service)).items():
        assert entry["clientConfig"]["service"] == {
            "namespace": "sdo",
            "name": "sdo-webhook",
            "port": 443,
            "path": f"/{name}",
        }
        assert "url" not in entry["clientConfig"]


def test_configuration_is_named() -> None:
    config = configuration("sdo", SERVED)
    assert config["kind"] == "ValidatingWebhookConfiguration"
    assert config["metadata"]["name"] == "sdo"


def test_service_references_parse_or_say_what_is_expected() -> None:
    assert ServiceRef.parse("sdo/sdo-webhook") == ServiceRef("sdo", "sdo-webhook", 443)
    assert ServiceRef.parse("sdo/sdo-webhook:8443") == ServiceRef("sdo", "sdo-webhook", 8443)
    with pytest.raises(ValueError, match="namespace/name"):
        ServiceRef.parse("sdo-webhook")
    with pytest.raises(ValueError, match="port must be a number"):
        ServiceRef.parse("sdo/sdo-webhook:https")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (Options(webhook_address="9443"), "HOST:PORT"),
        (Options(webhook_address="0.0.0.0:9443"), "--webhook-cert"),
        (
            Options(webhook_address="0.0.0.0:9443", webhook_cert="c", webhook_key="k"),
            "--agent-service-account",
        ),
    ],
)
def test_webhook_options_that_cannot_work_are_refused(options: Options, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        options.check()
    Options().check()  # no webhook: nothing to check


def test_agent_service_accounts_become_usernames() -> None:
    assert Options(agent_service_accounts=("sdo:sdo-agent",)).agent_usernames == (
        "system:serviceaccount:sdo:sdo-agent",
    )
