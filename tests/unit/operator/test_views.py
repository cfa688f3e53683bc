"""Projections of API objects into the slim views the operator keeps."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from storage_driver_api.constants import LEASE_PREFIX
from storage_driver_api.storagedriver import KernelVersionRange, MinimumPlatform, StorageDriverStatus
from storage_driver_operator.views import (
    DriverRun,
    config_view,
    device_view,
    lease_node,
    lease_view,
    node_view,
    parse_spec,
    parse_time,
    reported_runs,
    resource_version,
    rollout_key,
    storage_driver_view,
)

from tests.unit.operator.builders import config, device, driver, entry, lease, node


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
        (config_view({"metadata": {"name": "n1"}}), "generation"),
        (config(available=["loop_info.py"]).available["loop_info.py"], "sha256"),
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


def test_times_with_an_offset_or_without_a_zone_read_as_the_same_instant() -> None:
    assert parse_time("1970-01-01T01:01:40+01:00") == 100.0
    assert parse_time("1969-12-31T23:01:40-01:00") == 100.0
    assert parse_time("1970-01-01T00:01:40") == 100.0  # no zone: UTC, as the API means it


def test_a_time_that_is_not_text_reads_as_unknown() -> None:
    assert parse_time(100) is None
    assert parse_time(["1970-01-01T00:01:40Z"]) is None
    assert parse_time("") is None


def test_resource_version_is_the_objects_or_empty() -> None:
    assert resource_version({"metadata": {"resourceVersion": "4711"}}) == "4711"
    assert resource_version({"metadata": {}}) == ""


def test_only_the_present_condition_decides_whether_a_device_is_present() -> None:
    """Conditions of other writers, whichever way their types sort, leave presence alone."""
    at = "1970-01-01T00:00:10Z"
    later = "1970-01-01T00:00:20Z"
    conditions = [
        {"type": "Present", "status": "True", "reason": "Attached", "lastTransitionTime": at},
        {"type": "Healthy", "status": "False", "reason": "Smart", "lastTransitionTime": later},
        {"type": "Scrubbed", "status": "False", "reason": "Never", "lastTransitionTime": later},
    ]
    view = device_view(
        from_the_api(
            {
                "metadata": {"name": "d"},
                "spec": {"nodeName": "n1", "type": "loop"},
                "status": {"conditions": conditions},
            }
        )
    )
    assert view is not None
    assert (view.present, view.since) == (True, 10.0)


def test_a_driver_loading_before_its_process_is_reported_is_not_stopped() -> None:
    view = config_view(
        {"metadata": {"name": "n1"}, "status": {"drivers": [{"name": "drv", "phase": "Loading"}]}}
    )
    assert not view.runs["drv"].stopped
    assert not view.runs["drv"].failed


def test_a_config_at_a_high_generation_parsed_from_the_api_is_settled_when_reported() -> None:
    """Generations are compared by value: 1000 from the metadata and 1000 from the status are
    two objects once parsed."""
    view = config_view(
        from_the_api({"metadata": {"name": "n1", "generation": 1000}, "status": {"observedGeneration": 1000}})
    )
    assert view.settled
    behind = config_view(
        from_the_api({"metadata": {"name": "n1", "generation": 1001}, "status": {"observedGeneration": 1000}})
    )
    assert not behind.settled


def test_each_spec_entry_is_found_by_its_own_name() -> None:
    a, b, c = driver("a"), driver("b"), driver("c")
    view = config_view(
        {"metadata": {"name": "n1"}, "spec": {"drivers": [entry(x, ["d1"]).to_api() for x in (a, b, c)]}}
    )
    assert [view.entry(name) for name in ("a", "b", "c")] == [entry(x, ["d1"]) for x in (a, b, c)]
    assert view.entry("bb") is None


def test_a_report_from_before_a_reboot_counts_for_nothing_whichever_way_the_boot_ids_sort() -> None:
    status = {"bootId": "boot-2", "drivers": [{"name": "d", "phase": "Loaded", "pid": 7}]}
    stale = config_view({"metadata": {"name": "n"}, "spec": {}, "status": status})
    rebooted = node_view({"metadata": {"name": "n"}, "status": {"nodeInfo": {"bootID": "boot-1"}}})
    assert reported_runs(stale, rebooted) == {}


def test_a_report_of_the_current_boot_parsed_from_the_api_counts() -> None:
    """Boot ids are compared by value: the Node's and the report's are different strings."""
    boot = "1f0e9c5e-2b8a-4d6e-9a43-7f3c2d1b0a99"
    node = node_view(from_the_api({"metadata": {"name": "n"}, "status": {"nodeInfo": {"bootID": boot}}}))
    status = {"bootId": boot, "drivers": [{"name": "d", "phase": "Loaded", "pid": 7}]}
    report = config_view(from_the_api({"metadata": {"name": "n"}, "spec": {}, "status": status}))
    assert reported_runs(report, node)["d"].loaded


def test_reordering_a_config_does_not_roll_the_driver() -> None:
    """The API server may give a config's keys back in another order than they were written."""
    assert driver(config={"a": 1, "b": {"x": 1, "y": 2}}).rollout_key == (
        driver(config={"b": {"y": 2, "x": 1}, "a": 1}).rollout_key
    )


def test_a_driver_reported_without_restarts_has_restarted_0_times() -> None:
    view = config_view(
        {"metadata": {"name": "n1"}, "status": {"drivers": [{"name": "drv", "phase": "Loaded", "pid": 7}]}}
    )
    assert view.runs["drv"].restarts == 0
    again = config_view(
        {
            "metadata": {"name": "n1"},
            "status": {"drivers": [{"name": "drv", "phase": "Loaded", "restarts": 3}]},
        }
    )
    assert again.runs["drv"].restarts == 3


def test_an_unload_blocked_list_that_is_not_a_list_blocks_nothing() -> None:
    view = config_view(
        {
            "metadata": {"name": "n1"},
            "status": {"drivers": [{"name": "drv", "phase": "Pending", "unloadBlocked": 3}]},
        }
    )
    assert view.runs["drv"].unload_blocked is None


def available_file(**item: Any) -> Any:
    view = config_view(
        from_the_api({"metadata": {"name": "n1"}, "status": {"available": [{"file": "f.py", **item}]}})
    )
    return view.available["f.py"]


def test_a_files_declared_minimum_platform_is_read() -> None:
    declared = {"kernelVersion": {"atLeast": "5.10"}, "os": "linux", "architectures": ["amd64"]}
    assert available_file(minimumPlatform=declared).minimum_platform == MinimumPlatform(
        kernel_version=KernelVersionRange(at_least="5.10"), os="linux", architectures=["amd64"]
    )
    assert available_file().minimum_platform is None


def test_a_files_unreadable_minimum_platform_counts_as_none_declared() -> None:
    """A range the schema cannot check (its ends the wrong way round): the agent checked the file
    when it scanned it, so the rest of the report still counts."""
    wrong = {"kernelVersion": {"atLeast": "6.1", "below": "5.0"}}
    assert available_file(minimumPlatform=wrong, driverName="D").minimum_platform is None
    assert available_file(minimumPlatform=wrong, driverName="D").driver_name == "D"


def test_a_file_loads_automatically_unless_it_declares_auto_load_false() -> None:
    assert available_file(autoLoad=True).auto_load
    assert not available_file(autoLoad=False).auto_load
    assert available_file().auto_load


def test_a_lease_without_a_duration_or_a_renew_time_is_not_fresh() -> None:
    renewed = lease_view(
        {"metadata": {"name": "storage-agent-n1"}, "spec": {"renewTime": "1970-01-01T00:01:40Z"}}
    )
    assert renewed is not None and not renewed.fresh(100.0)
    timeless = lease_view({"metadata": {"name": "storage-agent-n1"}, "spec": {"leaseDurationSeconds": 40}})
    assert timeless is not None and not timeless.fresh(0.0)
    instant = lease_view(
        {
            "metadata": {"name": "storage-agent-n1"},
            "spec": {"renewTime": "1970-01-01T00:01:40Z", "leaseDurationSeconds": 0},
        }
    )
    assert instant is not None and not instant.fresh(99.0)


def test_a_lease_is_its_names_node_whichever_way_another_holders_name_sorts() -> None:
    for holder in ("a", "z"):
        lease = {"metadata": {"name": LEASE_PREFIX + "m"}, "spec": {"holderIdentity": holder}}
        assert lease_node(lease) == "m"


def test_a_storage_driver_with_an_unreadable_status_is_read_with_an_empty_one() -> None:
    """A status another version of the operator wrote: rewritten by the next status update."""
    view = storage_driver_view(
        {
            "metadata": {"name": "drv", "generation": 2},
            "spec": {
                "driverName": "D",
                "version": "1.0.0",
                "supportedDevices": ["loop"],
                "source": {"hostPath": {"path": "d.py"}},
            },
            "status": {"observedGeneration": 1, "conditions": [{"type": "Ready"}]},
        }
    )
    assert view.status == StorageDriverStatus()
    assert view.spec is not None and view.generation == 2


def test_a_storage_driver_the_api_server_has_not_numbered_yet_has_generation_0() -> None:
    assert storage_driver_view({"metadata": {"name": "drv"}, "spec": {}}).generation == 0
