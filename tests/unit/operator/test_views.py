"""Projections of API objects into the slim views the operator keeps."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from storage_driver_operator.views import (
    DriverRun,
    config_view,
    device_view,
    lease_view,
    parse_spec,
    parse_time,
    rollout_key,
    storage_driver_view,
)

from tests.unit.operator.builders import device, driver, entry, lease, node


def test_parse_time() -> None:
    assert parse_time("1970-01-01T00:01:40Z") == 100.0
    assert parse_time("1970-01-01T00:01:40.500000Z") == 100.5
    assert parse_time(None) is None
    assert parse_time("yesterday") is None


def test_device_view_keeps_only_what_matching_reads() -> None:
    view = device_view(
        {
            "metadata": {"name": "n1-abc", "labels": {"x": "y"}, "managedFields": [{"big": "thing"}]},
            "spec": {
                "nodeName": "n1",
                "type": "nvme-namespace",
                "model": "Samsung SSD 980",
                "sizeBytes": 1000,
                "removable": False,
                "byId": ["/dev/disk/by-id/x"],
                "udev": {"ID_BUS": "nvme"},
            },
            "status": {
                "conditions": [
                    {"type": "Present", "status": "False", "lastTransitionTime": "1970-01-01T00:00:10Z"}
                ]
            },
        }
    )
    assert view is not None
    assert (view.name, view.node, view.type, view.present, view.since) == (
        "n1-abc",
        "n1",
        "nvme-namespace",
        False,
        10.0,
    )
    assert view.attributes == {
        "model": "Samsung SSD 980",
        "sizeBytes": "1000",
        "removable": "false",
        "udev.ID_BUS": "nvme",
    }


def test_a_device_without_node_or_type_is_ignored() -> None:
    assert device_view({"metadata": {"name": "x"}, "spec": {"type": "loop"}}) is None
    assert device_view({"metadata": {"name": "x"}, "spec": {"nodeName": "n1"}}) is None


def test_config_view() -> None:
    drv = driver()
    view = config_view(
        {
            "metadata": {"name": "n1", "uid": "u", "generation": 4},
            "spec": {"drivers": [entry(drv, ["d1"]).to_api()]},
            "status": {
                "observedGeneration": 3,
                "capacity": {"maxLoadedDrivers": 7},
                "drivers": [
                    {"name": "drv", "phase": "Failed", "lastError": {"reason": "Crashed", "message": "x"}}
                ],
                "available": [{"file": "loop_info.py", "sha256": "a" * 64, "error": "bad"}],
            },
        }
    )
    assert view.max_loaded_drivers == 7
    assert not view.settled
    assert view.runs["drv"].failed and view.runs["drv"].stopped
    assert view.runs["drv"].error_reason == "Crashed"
    assert view.runs["drv"].unhealthy is None
    sick = config_view(
        {
            "metadata": {"name": "n1", "uid": "u", "generation": 4},
            "status": {"drivers": [{"name": "drv", "phase": "Loaded", "pid": 9, "unhealthy": "no answer"}]},
        }
    )
    assert sick.runs["drv"].unhealthy == "no answer"
    assert view.available["loop_info.py"].error == "bad"
    assert view.rollout_keys["drv"] == drv.rollout_key
    assert view.entry("drv") == entry(drv, ["d1"])


def test_a_config_without_status_has_default_capacity_and_nothing_available() -> None:
    view = config_view({"metadata": {"name": "n1", "generation": 1}, "spec": {}})
    assert not view.has_status
    assert view.max_loaded_drivers == 100
    assert view.available == {}


def test_an_unreadable_spec_entry_is_reported_not_fatal() -> None:
    view = config_view({"metadata": {"name": "n1"}, "spec": {"drivers": [{"name": "x"}]}})
    assert view.spec_drivers == ()
    assert view.spec_error and "spec.drivers[0]" in view.spec_error


def test_lease_view() -> None:
    lease = lease_view(
        {
            "metadata": {"name": "storage-agent-n1"},
            "spec": {"renewTime": "1970-01-01T00:01:40.000000Z", "leaseDurationSeconds": 40},
        }
    )
    assert lease is not None and lease.node == "n1"
    assert lease.fresh(139.0) and not lease.fresh(140.0)
    assert lease_view({"metadata": {"name": "kube-controller-manager"}, "spec": {}}) is None
    never = lease_view({"metadata": {"name": "storage-agent-n2"}, "spec": {}})
    assert never is not None and not never.fresh(0)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {"deviceSelector": [{"key": "model", "operator": "Regex", "values": ["(["]}]},
            "spec.deviceSelector[0].values",
        ),
        ({"maxUnavailable": "lots"}, "spec.maxUnavailable"),
        (
            {"minimumPlatform": {"kernelVersion": {"atLeast": "6.1", "below": "5.0"}}},
            "spec.minimumPlatform.kernelVersion.below",
        ),
        ({"supportedDevices": ["loop", "loop"]}, "spec.supportedDevices"),
        ({"config": {"blob": "x" * 20000}}, "spec.config"),
        ({"source": {}}, "spec.source"),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    body = {
        "driverName": "D",
        "version": "1.0.0",
        "supportedDevices": ["loop"],
        "source": {"hostPath": {"path": "d.py"}},
    }
    parsed, message = parse_spec({**body, **spec})
    assert parsed is None
    assert message is not None and message.startswith(field + ":"), message


def test_storage_driver_view_and_its_entry() -> None:
    view = storage_driver_view(
        {
            "metadata": {"name": "qs", "uid": "u", "generation": 2, "finalizers": ["f"]},
            "spec": {
                "driverName": "Queue Settings",
                "version": "1.2.0",
                "supportedDevices": ["virtio-block"],
                "source": {"hostPath": {"path": "queue.py", "sha256": "f" * 64}},
                "config": {"read_ahead_kb": 256},
                "priority": 5,
            },
            "status": {"observedGeneration": 1},
        }
    )
    assert view.template is not None
    assert view.template.to_api() == {
        "name": "qs",
        "driverName": "Queue Settings",
        "version": "1.2.0",
        "source": {"kind": "hostPath", "path": "queue.py", "sha256": "f" * 64},
        "config": {"read_ahead_kb": 256},
        "unloadGracePeriodSeconds": 5,
        "devices": [],
        "priority": 5,
        "forceUnload": False,
    }
    assert view.rollout_key == rollout_key(view.template)
    assert view.status.observed_generation == 1
    assert view.finalizers == ("f",)


def test_rollout_key_ignores_devices_priority_grace_and_unload_policy() -> None:
    base = driver()
    assert base.template is not None
    changed = base.template.model_copy(
        update={"devices": ["x"], "priority": 9, "unload_grace_period_seconds": 1, "force_unload": True}
    )
    assert rollout_key(changed) == base.rollout_key
    assert driver(config={"a": 1}).rollout_key != base.rollout_key
    assert driver(version="1.0.1").rollout_key != base.rollout_key


def test_a_report_from_before_the_nodes_last_boot_counts_for_nothing() -> None:
    from storage_driver_operator.views import config_view, node_view, reported_runs

    node = node_view({"metadata": {"name": "n"}, "status": {"nodeInfo": {"bootID": "boot-2"}}})
    status = {"bootId": "boot-1", "drivers": [{"name": "d", "phase": "Loaded", "pid": 7}]}
    stale = config_view({"metadata": {"name": "n"}, "spec": {}, "status": status})
    assert reported_runs(stale, node) == {}
    fresh = config_view({"metadata": {"name": "n"}, "spec": {}, "status": {**status, "bootId": "boot-2"}})
    assert reported_runs(fresh, node)["d"].loaded
    # A Node without a boot id (no kubelet), or a report without one, is taken as it is.
    unknown = node_view({"metadata": {"name": "n"}})
    assert reported_runs(stale, unknown)["d"].loaded
    assert reported_runs(None, node) == {}


def from_the_api(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` as the API server sends it: parsed from JSON, so no string is a source literal."""
    parsed: dict[str, Any] = json.loads(json.dumps(obj))
    return parsed


def test_views_of_parsed_objects_read_like_views_of_literals() -> None:
    present = {"type": "Present", "status": "False", "lastTransitionTime": "1970-01-01T00:00:10Z"}
    device = device_view(
        from_the_api(
            {
                "metadata": {"name": "d"},
                "spec": {"nodeName": "n1", "type": "loop"},
                "status": {"conditions": [present]},
            }
        )
    )
    assert device is not None
    assert (device.present, device.since) == (False, 10.0)
    config = config_view(
        from_the_api(
            {
                "metadata": {"name": "n1", "generation": 2},
                "spec": {"drivers": [entry(driver(), ["d1"]).to_api()]},
                "status": {
                    "observedGeneration": 2,
                    "drivers": [{"name": "drv", "phase": "Loaded", "pid": 7}],
                },
            }
        )
    )
    assert config.settled
    assert config.entry("".join(["d", "rv"])) == entry(driver(), ["d1"])
    assert config.runs["drv"].loaded and not config.runs["drv"].failed and not config.runs["drv"].stopped


def test_an_object_the_api_server_has_not_numbered_yet_is_settled_by_any_report() -> None:
    view = config_view({"metadata": {"name": "n1"}, "spec": {}, "status": {"observedGeneration": 0}})
    assert view.generation == 0
    assert view.settled


@pytest.mark.parametrize(
    ("view", "field"),
    [
        (node(), "name"),
        (DriverRun(phase="Loaded", pid=7), "phase"),
        (device("n1-dev"), "present"),
        (driver(), "generation"),
        (lease(), "renew_time"),
    ],
)
def test_views_are_values_the_planner_can_share(view: object, field: str) -> None:
    """Views of API objects are shared by every plan of a round and kept between rounds: none
    can change under another."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(view, field, "other")
