"""Scenario 8, names at the length limits: a Node name may have 253 characters (a DNS
subdomain); every per-node name derived from it must still be a valid name of its kind, and
distinct for two nodes that differ only past the cut."""

from __future__ import annotations

import datetime as dt
import re

from hypothesis import given
from hypothesis import strategies as st
from storage_driver_api.constants import LEASE_PREFIX, lease_name, node_label_value
from storage_driver_api.events import event_body
from storage_driver_api.nodedevice import DeviceIdentity, IdentityKind, node_device_name
from storage_driver_operator.views import lease_node, lease_view

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LONGEST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
node_names = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", fullmatch=True).filter(
    lambda n: DNS_SUBDOMAIN.match(n) is not None
)


def valid_name(name: str) -> bool:
    return len(name) <= 253 and DNS_SUBDOMAIN.match(name) is not None


def test_a_253_character_node_name_yields_valid_names_of_every_kind() -> None:
    assert len(LONGEST) == 253 and valid_name(LONGEST)
    device = node_device_name(LONGEST, DeviceIdentity(kind=IdentityKind.VIRTUAL, value=f"{LONGEST}/loop0/f"))
    assert valid_name(device)
    assert valid_name(lease_name(LONGEST))
    label = node_label_value(LONGEST)
    assert len(label) <= 63 and LABEL_VALUE.match(label)


def test_a_long_node_names_lease_is_found_again_by_its_holder() -> None:
    """Found broken: the agent named its Lease `storage-agent-<node>`, 267 characters for a
    253-character node name, which the API server refuses: the agent never had a Lease, and the
    operator took it for gone (a StorageDriver's deletion did not wait for it)."""
    name = lease_name(LONGEST)
    lease = {"metadata": {"name": name}, "spec": {"holderIdentity": LONGEST, "leaseDurationSeconds": 40}}
    assert lease_node(lease) == LONGEST
    view = lease_view(lease)
    assert view is not None and view.node == LONGEST
    # A holder that does not give this name back is not believed: the Lease is then the one a
    # node named like the Lease (without its prefix) would have.
    assert (
        lease_node({"metadata": {"name": name}, "spec": {"holderIdentity": "other"}})
        == name[len(LEASE_PREFIX) :]
    )


def test_short_node_names_keep_the_plain_lease_name() -> None:
    assert lease_name("node-1") == LEASE_PREFIX + "node-1"
    assert lease_node({"metadata": {"name": LEASE_PREFIX + "node-1"}, "spec": {}}) == "node-1"
    # Another node's holderIdentity in my Lease does not make it that node's.
    assert lease_node({"metadata": {"name": LEASE_PREFIX + "a"}, "spec": {"holderIdentity": "b"}}) == "a"
    assert lease_node({"metadata": {"name": "unrelated"}, "spec": {}}) is None


@given(node_names, node_names)
def test_derived_names_are_valid_and_tell_nodes_apart(a: str, b: str) -> None:
    for node in (a, b):
        assert valid_name(lease_name(node))
        assert lease_node({"metadata": {"name": lease_name(node)}, "spec": {"holderIdentity": node}}) == node
        identity = DeviceIdentity(kind=IdentityKind.SERIAL_MODEL, value="S1")
        assert valid_name(node_device_name(node, identity))
    if a != b:
        assert lease_name(a) != lease_name(b)
        assert node_label_value(a) != node_label_value(b)


@given(node_names)
def test_event_names_about_a_node_are_valid_whatever_its_length(node: str) -> None:
    assert valid_name(event_name(node))


def test_an_event_name_cut_at_a_dash_is_still_valid() -> None:
    """Found broken: the cut at 200 characters could end in '-' or '.', and the API server
    refused the Event (a name's labels end in a letter or digit)."""
    node = "a" * 199 + "-" + "b" * 53
    assert valid_name(event_name(node))


def event_name(node: str) -> str:
    body = event_body(
        {"kind": "NodeDriverConfig", "name": node},
        reason="Loaded",
        message="m",
        warning=False,
        component="storage-agent",
        host=node,
        instance="i",
        at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    return str(body["metadata"]["name"])
