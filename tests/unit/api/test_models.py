"""The pydantic models: valid objects parse, invalid ones are refused naming the field."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from storage_driver_api.constants import node_label_value, opt_in_label
from storage_driver_api.meta import ConditionStatus, describe_validation_error, find_condition, set_condition
from storage_driver_api.nodedevice import DeviceIdentity, IdentityKind, NodeDevice, node_device_name
from storage_driver_api.nodedriverconfig import NodeDriverConfig
from storage_driver_api.storagedriver import StorageDriver, StorageDriverSpec, kernel_tuple

from tests.api_cases import INVALID_CASES, InvalidCase, apply_changes, example, valid_storage_driver


@pytest.mark.parametrize(
    "name",
    [
        "storagedriver-loop.yaml",
        "storagedriver-queue-settings.yaml",
        "storagedriver-from-url.yaml",
        "storagedriver-from-configmap.yaml",
    ],
)
def test_example_storage_drivers_parse_and_round_trip(name: str) -> None:
    manifest = example(name)
    driver = StorageDriver.model_validate({"spec": manifest["spec"]})
    rendered = driver.spec.to_api()
    assert StorageDriverSpec.model_validate(rendered) == driver.spec
    # Everything the user wrote survives rendering (defaults may be added, nothing is lost).
    assert contains(rendered, manifest["spec"])


def contains(rendered: object, written: object) -> bool:
    if isinstance(written, dict):
        return isinstance(rendered, dict) and all(contains(rendered.get(k), v) for k, v in written.items())
    if isinstance(written, list):
        return (
            isinstance(rendered, list)
            and len(rendered) == len(written)
            and all(map(contains, rendered, written))
        )
    return rendered == written


def test_example_node_device_and_config_parse() -> None:
    device = NodeDevice.model_validate(
        {k: v for k, v in example("nodedevice.yaml").items() if k in ("spec", "status")}
    )
    assert device.spec.type == "loop"
    config = NodeDriverConfig.model_validate(
        {k: v for k, v in example("nodedriverconfig.yaml").items() if k in ("spec", "status")}
    )
    assert config.spec.drivers[0].source.kind == "hostPath"
    assert config.status.drivers[0].phase == "Loaded"


def test_defaults_are_the_documented_ones() -> None:
    minimal = {
        "driverName": "X",
        "version": "1.0.0",
        "supportedDevices": ["loop"],
        "source": {"hostPath": {"path": "x.py"}},
    }
    spec = StorageDriverSpec.model_validate(minimal)
    assert spec.auto_load is None  # the driver file's auto_load decides (true when it says nothing)
    assert spec.unload_grace_period_seconds == 5
    assert spec.max_unavailable == 1
    assert spec.priority == 0
    assert spec.config == {}
    assert spec.unload_delay_seconds == 30


def test_a_hostpath_spec_may_leave_the_declarations_to_the_file() -> None:
    spec = StorageDriverSpec.model_validate(
        {"driverName": "X", "version": "1.0.0", "source": {"hostPath": {"path": "x.py"}}}
    )
    assert spec.supported_devices is None and spec.minimum_platform is None and spec.auto_load is None


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_invalid_storage_driver_is_refused_naming_the_field(case: InvalidCase) -> None:
    spec = apply_changes(valid_storage_driver()["spec"], case.spec_changes)
    with pytest.raises(ValidationError) as refused:
        StorageDriverSpec.model_validate(spec)
    message = describe_validation_error(refused.value, "spec")
    assert case.field in message, message


def test_validation_error_names_nested_fields_in_api_form() -> None:
    spec = apply_changes(valid_storage_driver()["spec"], {"unloadGracePeriodSeconds": -3})
    with pytest.raises(ValidationError) as refused:
        StorageDriverSpec.model_validate(spec)
    message = describe_validation_error(refused.value, "spec")
    assert message.startswith("spec.unloadGracePeriodSeconds: ")
    assert "greater than or equal to 0" in message


def test_exactly_one_source_error_says_which_were_given() -> None:
    spec = apply_changes(
        valid_storage_driver()["spec"],
        {"source": {"hostPath": {"path": "a.py"}, "configMap": {"name": "c", "namespace": "n", "key": "k"}}},
    )
    with pytest.raises(ValidationError) as refused:
        StorageDriverSpec.model_validate(spec)
    assert "exactly one of hostPath, configMap, url must be set (found: hostPath, configMap)" in str(
        refused.value
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6.1.0-18-amd64", (6, 1, 0, 0)),
        ("5.10", (5, 10, 0, 0)),
        ("6.18.44-fc-v782", (6, 18, 44, 0)),
        ("4.19.0.1-rt", (4, 19, 0, 1)),
        ("v5.4.0", (5, 4, 0, 0)),
    ],
)
def test_kernel_versions_compare_numerically(text: str, expected: tuple[int, ...]) -> None:
    assert kernel_tuple(text) == expected


def test_kernel_version_without_numbers_is_refused() -> None:
    with pytest.raises(ValueError, match="not a kernel version"):
        kernel_tuple("generic")


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    conditions = set_condition([], "Ready", "True", "Loaded", "all good", at=T0, observed_generation=1)
    same = set_condition(conditions, "Ready", "True", "StillLoaded", "fine", at=T1, observed_generation=2)
    ready = find_condition(same, "Ready")
    assert ready is not None
    assert ready.last_transition_time == T0
    assert (ready.reason, ready.observed_generation) == ("StillLoaded", 2)
    flipped = set_condition(same, "Ready", ConditionStatus.FALSE, "LoadFailed", "boom", at=T1)
    ready = find_condition(flipped, "Ready")
    assert ready is not None
    assert ready.last_transition_time == T1
    assert len(flipped) == 1


def test_conditions_keep_other_types() -> None:
    conditions = set_condition([], "Ready", "True", "Ok", "", at=T0)
    conditions = set_condition(conditions, "Degraded", "False", "Ok", "", at=T0)
    conditions = set_condition(conditions, "Ready", "False", "Broken", "", at=T1)
    assert [c.type for c in conditions] == ["Ready", "Degraded"]


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=253))
def test_node_label_values_fit_a_label(node: str) -> None:
    value = node_label_value(node)
    assert len(value) <= 63
    if len(node) <= 63:
        assert value == node


def test_long_node_names_get_distinct_label_values() -> None:
    a, b = "n" * 70 + "a", "n" * 70 + "b"
    assert node_label_value(a) != node_label_value(b)


@given(
    node=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,250}[a-z0-9])?", fullmatch=True),
    value=st.text(min_size=1, max_size=80),
)
def test_node_device_names_are_stable_and_valid(node: str, value: str) -> None:
    identity = DeviceIdentity(kind=IdentityKind.SERIAL_MODEL, value=value)
    name = node_device_name(node, identity)
    assert name == node_device_name(node, DeviceIdentity(kind=IdentityKind.SERIAL_MODEL, value=value))
    assert len(name) <= 253
    assert name != node_device_name(node, DeviceIdentity(kind=IdentityKind.WWN, value=value))


def test_opt_in_label_is_in_the_project_domain() -> None:
    assert opt_in_label("vendor-nvme") == "load.storage.datawarehouse.io/vendor-nvme"


def test_the_config_map_example_pins_the_sample_drivers_content() -> None:
    """The chart requires a pin by default: the example's must match the file it ships."""
    import hashlib

    from tests.api_cases import EXAMPLES, example

    source = example("storagedriver-from-configmap.yaml")["spec"]["source"]["configMap"]
    content = (EXAMPLES / "drivers" / source["key"]).read_bytes()
    assert source["sha256"] == hashlib.sha256(content).hexdigest()
