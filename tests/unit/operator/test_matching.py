"""Matching a StorageDriver against one node: selectors, platform, opt-in, devices, the file."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from storage_driver_api.constants import opt_in_label
from storage_driver_api.meta import LabelSelector
from storage_driver_api.storagedriver import (
    DeviceSelectorRequirement,
    MinimumPlatform,
    StorageDriverSpec,
)
from storage_driver_operator.matching import (
    Reason,
    match_node,
    platform_mismatch,
    requirement_matches,
    selects,
    source_unavailable,
)
from storage_driver_operator.views import AvailableFile, node_view

from tests.unit.operator.builders import device, driver, node


def spec_of(**spec: Any) -> StorageDriverSpec:
    view = driver(**spec)
    assert view.spec is not None, view.invalid
    return view.spec


# --- node selector ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        (None, {}, True),
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"zone": "a"}}, {"zone": "a"}, True),
        ({"matchLabels": {"zone": "a"}}, {"zone": "b"}, False),
        ({"matchLabels": {"zone": "a"}}, {}, False),
        (
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]},
            {"zone": "b"},
            True,
        ),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, {}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, {"zone": "a"}, False),
        ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {"gpu": ""}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {"gpu": "x"}, False),
        (
            {"matchLabels": {"zone": "a"}, "matchExpressions": [{"key": "gpu", "operator": "Exists"}]},
            {"zone": "a"},
            False,
        ),
    ],
)
def test_label_selector_semantics(
    selector: dict[str, Any] | None, labels: dict[str, str], expected: bool
) -> None:
    parsed = None if selector is None else LabelSelector.model_validate(selector)
    assert selects(parsed, labels) is expected


def test_labels_read_from_the_api_select_the_node() -> None:
    # The selector and the node's labels both come parsed from the API's JSON.
    selector = LabelSelector.model_validate(json.loads('{"matchLabels": {"storage-tier": "fast-nvme"}}'))
    assert selects(selector, json.loads('{"storage-tier": "fast-nvme"}'))
    assert not selects(selector, json.loads('{"storage-tier": "slow-disk"}'))


# --- platform --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "range_", "reason"),
    [
        ("6.1.0-18-amd64", {"atLeast": "5.10"}, None),
        ("6.1.0-18-amd64", {"atLeast": "6.1"}, None),
        ("6.1.0-18-amd64", {"atLeast": "6.1.1"}, Reason.PLATFORM_TOO_OLD),
        ("5.4.0-150-generic", {"atLeast": "5.10"}, Reason.PLATFORM_TOO_OLD),
        ("6.1.0-18-amd64", {"below": "6.2"}, None),
        ("6.1.0-18-amd64", {"below": "6.1"}, Reason.PLATFORM_TOO_NEW),
        ("6.8.0", {"below": "6.1"}, Reason.PLATFORM_TOO_NEW),  # well past the bound, not only at it
        ("6.10.3", {"atLeast": "6.9", "below": "6.11"}, None),  # numeric, not string, comparison
        ("v5.15.0", {"atLeast": "5.15"}, None),
        ("weird", {"atLeast": "5.15"}, Reason.PLATFORM_UNKNOWN),
        ("", {"atLeast": "5.15"}, Reason.PLATFORM_UNKNOWN),
    ],
)
def test_kernel_version_range(kernel: str, range_: dict[str, str], reason: Reason | None) -> None:
    minimum = MinimumPlatform.model_validate({"kernelVersion": range_})
    result = platform_mismatch(minimum, node(kernel=kernel))
    assert (result[0] if result else None) == reason
    if result:
        assert kernel in result[1] or "cannot be compared" in result[1]


def test_os_and_architecture() -> None:
    minimum = MinimumPlatform.model_validate({"os": "linux", "architectures": ["arm64", "riscv64"]})
    assert platform_mismatch(minimum, node(arch="arm64")) is None
    mismatch = platform_mismatch(minimum, node(arch="amd64"))
    assert mismatch is not None and mismatch[0] == Reason.UNSUPPORTED_ARCHITECTURE
    assert "amd64" in mismatch[1]
    mismatch = platform_mismatch(minimum, node(os_name="windows", arch="arm64"))
    assert mismatch is not None and mismatch[0] == Reason.UNSUPPORTED_OS
    assert platform_mismatch(None, node(os_name="plan9")) is None


def test_an_os_mismatch_says_what_the_node_runs_or_that_it_reports_none() -> None:
    minimum = MinimumPlatform.model_validate({"os": "linux"})
    assert platform_mismatch(minimum, node(os_name="windows")) == (
        Reason.UNSUPPORTED_OS,
        "node runs windows; the driver needs linux",
    )
    assert platform_mismatch(minimum, node(os_name="")) == (
        Reason.UNSUPPORTED_OS,
        "node runs an unreported OS; the driver needs linux",
    )


def test_an_os_read_from_the_api_is_the_os_the_driver_needs() -> None:
    # Both sides come parsed from the API's JSON, never as the literals of this file.
    minimum = MinimumPlatform.model_validate(json.loads('{"os": "linux"}'))
    reported = node_view(
        json.loads(
            json.dumps({"metadata": {"name": "n1"}, "status": {"nodeInfo": {"operatingSystem": "linux"}}})
        )
    )
    assert platform_mismatch(minimum, reported) is None


# --- device selector -------------------------------------------------------------------------


def req(key: str, operator: str, *values: str) -> DeviceSelectorRequirement:
    return DeviceSelectorRequirement.model_validate(
        {"key": key, "operator": operator, "values": list(values)}
    )


@pytest.mark.parametrize(
    ("requirement", "attributes", "expected"),
    [
        (req("vendor", "In", "ACME", "Initech"), {"vendor": "ACME"}, True),
        (req("vendor", "In", "ACME"), {"vendor": "acme"}, False),
        (req("vendor", "In", "ACME"), {}, False),
        (req("vendor", "NotIn", "ACME"), {"vendor": "Other"}, True),
        (req("vendor", "NotIn", "ACME"), {}, True),
        (req("vendor", "NotIn", "ACME"), {"vendor": "ACME"}, False),
        (req("serial", "Exists"), {"serial": "X1"}, True),
        (req("serial", "Exists"), {}, False),
        (req("serial", "DoesNotExist"), {}, True),
        (req("serial", "DoesNotExist"), {"serial": "X1"}, False),
        (req("sizeBytes", "Gt", "1000"), {"sizeBytes": "1001"}, True),
        (req("sizeBytes", "Gt", "1000"), {"sizeBytes": "1000"}, False),
        (req("sizeBytes", "Gt", "1000"), {}, False),
        (req("sizeBytes", "Gt", "1000"), {"sizeBytes": "big"}, False),
        (req("sizeBytes", "Lt", "1000"), {"sizeBytes": "999"}, True),
        (req("sizeBytes", "Lt", "-1"), {"sizeBytes": "0"}, False),
        (req("sizeBytes", "Lt", "1000"), {"sizeBytes": "1000"}, False),  # strictly less, as Gt is greater
        (req("rotational", "In", "false"), {"rotational": "false"}, True),
        (req("model", "Regex", "Samsung SSD 9[0-9]0.*"), {"model": "Samsung SSD 980 PRO"}, True),
        (req("model", "Regex", "SSD"), {"model": "Samsung SSD 980"}, False),  # full match
        (req("model", "Regex", ".*"), {}, False),
        (req("udev.ID_BUS", "In", "usb"), {"udev.ID_BUS": "usb"}, True),
        (req("udev.ID_BUS", "In", "usb"), {"udev.ID_BUS": "ata"}, False),
    ],
)
def test_requirement(
    requirement: DeviceSelectorRequirement, attributes: dict[str, str], expected: bool
) -> None:
    assert requirement_matches(requirement, attributes) is expected


def test_a_regex_that_backtracks_without_end_is_matched_at_once() -> None:
    """Found broken (scenario 8): deviceSelector Regex used Python's backtracking `re`, so one
    StorageDriver with `(a|aa)+b` and a device attribute of a few dozen characters kept the
    operator's planning loop busy for minutes per device (every node, every driver waited).
    RE2 matches in time linear in the attribute: this returns at once (before: past the
    per-test timeout)."""
    serial = "a" * 200
    assert requirement_matches(req("serial", "Regex", "(a|aa)+b"), {"serial": serial}) is False
    assert requirement_matches(req("serial", "Regex", "(.*.*)*a"), {"serial": serial}) is True


def test_device_attributes_are_seen_as_selector_strings() -> None:
    dev = device(
        "d", sizeBytes=8388608, rotational=False, readOnly=True, vendor="ACME", udev={"ID_BUS": "usb"}
    )
    assert dev.attributes["sizeBytes"] == "8388608"
    assert dev.attributes["rotational"] == "false"
    assert dev.attributes["readOnly"] == "true"
    assert dev.attributes["udev.ID_BUS"] == "usb"
    assert "serial" not in dev.attributes


# --- obtaining the file ----------------------------------------------------------------------


def test_host_path_must_be_available_clean_and_with_the_pinned_hash() -> None:
    pinned = spec_of(source={"hostPath": {"path": "loop_info.py", "sha256": "b" * 64}})
    good = {"loop_info.py": AvailableFile("loop_info.py", "b" * 64, None)}
    assert source_unavailable(pinned, good) is None
    assert "not reported" in (source_unavailable(pinned, None) or "")
    assert "not in the node's driver directory" in (source_unavailable(pinned, {}) or "")
    wrong = {"loop_info.py": AvailableFile("loop_info.py", "c" * 64, None)}
    assert "pins" in (source_unavailable(pinned, wrong) or "")
    broken = {"loop_info.py": AvailableFile("loop_info.py", "b" * 64, "SyntaxError: line 3")}
    assert "SyntaxError" in (source_unavailable(pinned, broken) or "")
    unpinned = spec_of(source={"hostPath": {"path": "loop_info.py"}})
    assert source_unavailable(unpinned, wrong) is None


def test_a_pinned_hash_refuses_every_other_file() -> None:
    # The pin guards against a changed file: any other hash is refused, however it compares.
    pinned = spec_of(source={"hostPath": {"path": "loop_info.py", "sha256": "b" * 64}})
    for other in ("a" * 64, "c" * 64, "b" * 63 + "a", "b" * 63 + "c", "B" * 64):
        found = {"loop_info.py": AvailableFile("loop_info.py", other, None)}
        assert source_unavailable(pinned, found) == (
            f"loop_info.py has sha256 {other}, the StorageDriver pins {'b' * 64}"
        )
    # The same hash is the same, however the strings were made (the API's are parsed from JSON).
    same = json.loads(json.dumps({"sha256": "b" * 64}))["sha256"]
    assert source_unavailable(pinned, {"loop_info.py": AvailableFile("loop_info.py", same, None)}) is None


def test_host_path_file_must_declare_the_specs_driver_name_and_version() -> None:
    spec = spec_of(driverName="loop-info", version="1.2.0", source={"hostPath": {"path": "loop_info.py"}})

    def declaring(name: str | None, version: str | None) -> dict[str, AvailableFile]:
        return {"loop_info.py": AvailableFile("loop_info.py", "b" * 64, None, name, version)}

    assert source_unavailable(spec, declaring("loop-info", "1.2.0")) is None
    other_version = source_unavailable(spec, declaring("loop-info", "1.1.0")) or ""
    assert "declares version 1.1.0" in other_version and "asks for 1.2.0" in other_version
    other_name = source_unavailable(spec, declaring("queue-settings", "1.2.0")) or ""
    assert "declares driver 'queue-settings'" in other_name and "'loop-info'" in other_name
    # Equal is equal, however the strings were made (the API's are parsed from JSON).
    assert source_unavailable(spec, declaring("-".join(["loop", "info"]), ".".join(["1", "2", "0"]))) is None
    # Any other name is refused, however it compares or is spelled.
    for name in ("aaa-driver", "zzz-driver", "Loop-Info", "loop-info "):
        assert f"declares driver {name!r}" in (source_unavailable(spec, declaring(name, "1.2.0")) or "")
    for version in ("1.0.0", "1.10.0", "2.0.0"):
        assert f"declares version {version}" in (
            source_unavailable(spec, declaring("loop-info", version)) or ""
        )
    # A decorator without a literal version is not refused (the agent loads it too).
    assert source_unavailable(spec, declaring("loop-info", None)) is None


def test_fetched_sources_are_always_obtainable() -> None:
    url = spec_of(source={"url": {"url": "https://x/y.py", "sha256": "d" * 64}})
    cm = spec_of(source={"configMap": {"name": "c", "namespace": "n", "key": "k"}})
    assert source_unavailable(url, None) is None
    assert source_unavailable(cm, {}) is None


# --- match_node ------------------------------------------------------------------------------

AVAILABLE = {"loop_info.py": AvailableFile("loop_info.py", "a" * 64, None)}


def test_a_match_is_a_value() -> None:
    """The planner hands one Match to the node's decision, its status and `sdctl plan`: none
    can change it under the others, and equal outcomes are one value."""
    result = match_node("drv", spec_of(), node(), [device("a")], AVAILABLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.reason = Reason.NO_MATCHING_DEVICES  # type: ignore[misc]
    assert {result, match_node("drv", spec_of(), node(), [device("a")], AVAILABLE)} == {result}


def test_matches_with_present_devices_of_a_supported_type() -> None:
    spec = spec_of(supportedDevices=["loop", "nvme-namespace"])
    devices = [device("b"), device("a", type_="nvme-namespace"), device("z", type_="zram")]
    result = match_node("drv", spec, node(), devices, AVAILABLE)
    assert result.matched
    assert result.devices == ("a", "b")
    assert "2 matching device(s): a, b" in result.message


def test_absent_devices_do_not_match_but_record_when_they_went_away() -> None:
    spec = spec_of()
    devices = [device("a", present=False, since=100.0), device("b", present=False, since=200.0)]
    result = match_node("drv", spec, node(), devices, AVAILABLE)
    assert result.reason == Reason.NO_MATCHING_DEVICES
    assert result.absent_since == 200.0
    assert "2 matching device(s) marked absent" in result.message


def test_the_latest_removal_counts_in_any_order() -> None:
    # The moment the node last had a matching device, whatever order the devices are listed in.
    spec = spec_of()
    times = [300.0, 100.0, 200.0, 250.0]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2], [2, 3, 0, 1]):
        devices = [device(f"d{i}", present=False, since=times[i]) for i in order]
        assert match_node("drv", spec, node(), devices, AVAILABLE).absent_since == 300.0


def test_the_message_lists_up_to_five_devices_then_counts_the_rest() -> None:
    spec = spec_of()
    two = match_node("drv", spec, node(), [device("b"), device("a")], AVAILABLE)
    assert two.message == "2 matching device(s): a, b"
    five = match_node("drv", spec, node(), [device(f"d{i}") for i in range(5)], AVAILABLE)
    assert five.message == "5 matching device(s): d0, d1, d2, d3, d4"
    six = match_node("drv", spec, node(), [device(f"d{i}") for i in range(6)], AVAILABLE)
    assert six.message == "6 matching device(s): d0, d1, d2, d3, d4 and 1 more"
    seven = match_node("drv", spec, node(), [device(f"d{i}") for i in range(7)], AVAILABLE)
    assert seven.message == "7 matching device(s): d0, d1, d2, d3, d4 and 2 more"
    assert seven.devices == tuple(f"d{i}" for i in range(7))
    many = match_node("drv", spec, node(), [device(f"d{i:02}") for i in range(12)], AVAILABLE)
    assert many.message == "12 matching device(s): d00, d01, d02, d03, d04 and 7 more"


def test_a_device_without_a_present_condition_counts_as_present() -> None:
    result = match_node("drv", spec_of(), node(), [device("a", present=None)], AVAILABLE)
    assert result.matched


def test_device_selector_filters_devices() -> None:
    spec = spec_of(deviceSelector=[{"key": "sizeBytes", "operator": "Gt", "values": ["1000"]}])
    devices = [device("small", sizeBytes=10), device("big", sizeBytes=5000)]
    assert match_node("drv", spec, node(), devices, AVAILABLE).devices == ("big",)
    result = match_node("drv", spec, node(), [device("small", sizeBytes=10)], AVAILABLE)
    assert result.reason == Reason.NO_MATCHING_DEVICES
    assert "passing deviceSelector" in result.message


@pytest.mark.parametrize(
    ("spec", "labels", "reason"),
    [
        ({"nodeSelector": {"matchLabels": {"storage": "yes"}}}, {}, Reason.NODE_NOT_SELECTED),
        ({"minimumPlatform": {"kernelVersion": {"atLeast": "6.5"}}}, {}, Reason.PLATFORM_TOO_OLD),
        ({"autoLoad": False}, {}, Reason.NOT_OPTED_IN),
        ({"autoLoad": False}, {opt_in_label("drv"): "false"}, Reason.NOT_OPTED_IN),
        ({"autoLoad": False}, {opt_in_label("drv"): "true"}, Reason.MATCHED),
        ({"supportedDevices": ["nvme-namespace"]}, {}, Reason.NO_MATCHING_DEVICES),
        ({"source": {"hostPath": {"path": "missing.py"}}}, {}, Reason.DRIVER_NOT_AVAILABLE),
    ],
)
def test_each_non_match_names_its_reason(
    spec: dict[str, Any], labels: dict[str, str], reason: Reason
) -> None:
    result = match_node("drv", spec_of(**spec), node(labels=labels), [device("a")], AVAILABLE)
    assert result.reason == reason
    assert result.message


def test_an_opt_in_label_read_from_the_api_opts_the_node_in() -> None:
    # Labels come parsed from the API's JSON, never as the literals of this file.
    labels = json.loads(json.dumps({opt_in_label("drv"): "true"}))
    result = match_node("drv", spec_of(autoLoad=False), node(labels=labels), [device("a")], AVAILABLE)
    assert result.matched


def test_node_checks_come_before_devices_and_devices_before_the_file() -> None:
    spec = spec_of(
        nodeSelector={"matchLabels": {"storage": "yes"}},
        source={"hostPath": {"path": "missing.py"}},
    )
    # Neither selected nor with devices nor with the file: the first check names the reason.
    assert match_node("drv", spec, node(), [], {}).reason == Reason.NODE_NOT_SELECTED
    selected = node(labels={"storage": "yes"})
    assert match_node("drv", spec, selected, [], {}).reason == Reason.NO_MATCHING_DEVICES
    missing = match_node("drv", spec, selected, [device("a")], {})
    assert missing.reason == Reason.DRIVER_NOT_AVAILABLE
    assert missing.devices == ("a",)  # known, so that a node keeping an older entry gets them
    assert missing.has_hardware and not missing.matched
