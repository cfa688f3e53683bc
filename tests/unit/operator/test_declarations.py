"""A hostPath driver file's declared `supported_devices` against the StorageDriver's
`supportedDevices`: the node binds only devices of types the file declares, and says why it
does not load the driver when none are left (the agent would give the driver a device it does
not claim to handle)."""

from __future__ import annotations

from typing import Any

from storage_driver_operator.matching import Reason, declared_types, match_node
from storage_driver_operator.status import NodeDriverState
from storage_driver_operator.views import AvailableFile, config_view

from tests.unit.operator.builders import device, node
from tests.unit.operator.test_matching import spec_of


def declaring(*types: str) -> dict[str, AvailableFile]:
    return {"loop_info.py": AvailableFile("loop_info.py", "a" * 64, None, "Loop Info Driver", "1.0.0", types)}


def host_path_spec(*types: str, **extra: Any) -> Any:
    return spec_of(supportedDevices=list(types), source={"hostPath": {"path": "loop_info.py"}}, **extra)


def test_a_file_declaring_the_specs_types_matches_as_before() -> None:
    result = match_node("drv", host_path_spec("loop"), node(), [device("a")], declaring("loop", "zram"))
    assert result.matched and result.devices == ("a",)
    assert result.message == "1 matching device(s): a"


def test_a_file_declaring_no_types_is_not_second_guessed() -> None:
    result = match_node("drv", host_path_spec("loop"), node(), [device("a")], declaring())
    assert result.matched and result.devices == ("a",)


def test_the_node_says_why_when_the_spec_asks_for_a_type_the_file_does_not_declare() -> None:
    spec = host_path_spec("scsi-disk")
    result = match_node("drv", spec, node(), [device("sda", type_="scsi-disk")], declaring("loop"))
    assert result.reason == Reason.DRIVER_NOT_AVAILABLE
    assert result.message == (
        "loop_info.py declares supported devices loop, not scsi-disk "
        "(the StorageDriver's supportedDevices asks for it)"
    )
    # It counts as hardware the driver cannot be placed on: the StorageDriver lists the node as failing.
    from storage_driver_operator.desired import Action, Decision

    state = NodeDriverState("n1", Decision("drv", Action.NONE, result.reason, result.message, True))
    assert state.failure() == ("DriverNotAvailable", result.message)


def test_only_devices_of_declared_types_are_bound() -> None:
    spec = host_path_spec("loop", "scsi-disk")
    devices = [device("loop0"), device("sda", type_="scsi-disk"), device("sdb", type_="scsi-disk")]
    result = match_node("drv", spec, node(), devices, declaring("loop"))
    assert result.matched and result.devices == ("loop0",)
    assert result.message == (
        "1 matching device(s): loop0; not binding sda, sdb: "
        "loop_info.py declares supported devices loop, not scsi-disk"
    )


def test_fetched_sources_are_not_checked_before_the_agent_has_them() -> None:
    url = spec_of(
        supportedDevices=["scsi-disk"], source={"url": {"url": "https://x/y.py", "sha256": "d" * 64}}
    )
    assert declared_types(url, declaring("loop")) == frozenset()
    result = match_node("drv", url, node(), [device("sda", type_="scsi-disk")], declaring("loop"))
    assert result.matched
    assert declared_types(host_path_spec("loop"), None) == frozenset()
    assert declared_types(host_path_spec("loop"), {}) == frozenset()


def test_the_view_reads_the_declared_types_from_the_nodes_status() -> None:
    view = config_view(
        {
            "metadata": {"name": "n1", "generation": 1},
            "status": {
                "available": [
                    {"file": "loop_info.py", "sha256": "a" * 64, "supportedDevices": ["loop", "zram"]},
                    {"file": "other.py", "sha256": "b" * 64},
                ]
            },
        }
    )
    assert view.available["loop_info.py"].supported_devices == ("loop", "zram")
    assert view.available["other.py"].supported_devices == ()


# --- declarations that stand in for unset fields ------------------------------------------------


def file_declaring(
    *types: str, auto_load: bool = True, platform: dict[str, Any] | None = None, **extra: Any
) -> dict[str, AvailableFile]:
    view = config_view(
        {
            "metadata": {"name": "n1", "generation": 1},
            "status": {
                "available": [
                    {
                        "file": "loop_info.py",
                        "sha256": "a" * 64,
                        "driverName": "Loop Info Driver",
                        "version": "1.0.0",
                        "supportedDevices": list(types),
                        "autoLoad": auto_load,
                        **({"minimumPlatform": platform} if platform is not None else {}),
                        **extra,
                    }
                ]
            },
        }
    )
    return dict(view.available)


def unset_spec(**extra: Any) -> Any:
    return spec_of(**{"supportedDevices": None, "source": {"hostPath": {"path": "loop_info.py"}}, **extra})


def test_unset_supported_devices_are_the_files_declared_types() -> None:
    devices = [device("loop0"), device("sda", type_="scsi-disk"), device("zram0", type_="zram")]
    result = match_node("drv", unset_spec(), node(), devices, file_declaring("loop", "zram"))
    assert result.matched and result.devices == ("loop0", "zram0")
    assert result.message == "2 matching device(s): loop0, zram0"
    none = match_node("drv", unset_spec(), node(), [device("sda", type_="scsi-disk")], file_declaring("loop"))
    assert none.reason == Reason.NO_MATCHING_DEVICES and none.message == "no present loop device"


def test_the_declared_types_of_an_unusable_file_still_name_the_devices_to_keep() -> None:
    # The node's file declares another version: it is not loaded, but an entry already on the
    # node keeps its devices (the agent decides what to do with a file that changed).
    files = file_declaring("loop", version="2.0.0")
    result = match_node("drv", unset_spec(), node(), [device("loop0")], files)
    assert result.reason == Reason.DRIVER_NOT_AVAILABLE and result.devices == ("loop0",)
    assert result.has_hardware
    assert result.message == "loop_info.py declares version 2.0.0, the StorageDriver asks for 1.0.0"


def test_unset_supported_devices_without_a_scanned_file_say_why() -> None:
    for files, message in (
        (None, "the node's agent has not reported its driver directory yet (needs loop_info.py)"),
        ({}, "loop_info.py is not in the node's driver directory"),
        (
            {"loop_info.py": AvailableFile("loop_info.py", "a" * 64, "SyntaxError: bad")},
            "loop_info.py cannot be used: SyntaxError: bad",
        ),
    ):
        result = match_node("drv", unset_spec(), node(), [device("loop0")], files)
        assert result.reason == Reason.DRIVER_NOT_AVAILABLE and result.message == message
        assert result.devices == () and not result.has_hardware and not result.matched


def test_unset_supported_devices_and_a_file_declaring_none_is_reported() -> None:
    result = match_node("drv", unset_spec(), node(), [device("loop0")], file_declaring())
    assert result.reason == Reason.DRIVER_NOT_AVAILABLE and result.has_hardware
    assert result.message == (
        "supportedDevices is unset and loop_info.py declares no supported_devices: "
        "list the device types in one of them"
    )


def test_the_files_minimum_platform_applies_besides_the_specs() -> None:
    old_kernel = node(kernel="5.4.0")
    platform = {"kernelVersion": {"atLeast": "5.10"}}
    result = match_node(
        "drv", unset_spec(), old_kernel, [device("loop0")], file_declaring("loop", platform=platform)
    )
    assert result.reason == Reason.PLATFORM_TOO_OLD
    assert result.message == "loop_info.py declares minimum_platform: kernel 5.4.0 is older than 5.10"
    # The spec allows 5.4; the file does not: the file's declaration is the reason.
    lenient = unset_spec(minimumPlatform={"kernelVersion": {"atLeast": "5.0"}})
    again = match_node(
        "drv", lenient, old_kernel, [device("loop0")], file_declaring("loop", platform=platform)
    )
    assert again.reason == Reason.PLATFORM_TOO_OLD and again.message.startswith("loop_info.py declares")
    # The spec's own check comes first and is named as the spec's.
    strict = unset_spec(minimumPlatform={"kernelVersion": {"atLeast": "6.0"}})
    first = match_node(
        "drv", strict, old_kernel, [device("loop0")], file_declaring("loop", platform=platform)
    )
    assert first.message == "kernel 5.4.0 is older than 6.0"
    newer = match_node(
        "drv",
        unset_spec(),
        node(kernel="6.1.0"),
        [device("loop0")],
        file_declaring("loop", platform=platform),
    )
    assert newer.matched
    arm = match_node(
        "drv",
        unset_spec(),
        node(arch="arm64"),
        [device("loop0")],
        file_declaring("loop", platform={"architectures": ["amd64"]}),
    )
    assert arm.reason == Reason.UNSUPPORTED_ARCHITECTURE


def test_a_file_that_is_not_the_one_asked_for_declares_nothing_that_takes_effect() -> None:
    # Its platform is not checked (the node reports the mismatch instead) and its auto_load
    # does not count.
    files = file_declaring("loop", auto_load=False, platform={"os": "windows"}, version="2.0.0")
    result = match_node("drv", unset_spec(), node(), [device("loop0")], files)
    assert result.reason == Reason.DRIVER_NOT_AVAILABLE
    assert result.message == "loop_info.py declares version 2.0.0, the StorageDriver asks for 1.0.0"


def test_unset_auto_load_is_the_files_declaration() -> None:
    opted_out = file_declaring("loop", auto_load=False)
    result = match_node("drv", unset_spec(), node(), [device("loop0")], opted_out)
    assert result.reason == Reason.NOT_OPTED_IN
    assert result.message == (
        "autoLoad is unset, loop_info.py declares auto_load=False, and the node lacks the label "
        "load.storage.datawarehouse.io/drv=true"
    )
    labelled = node(labels={"load.storage.datawarehouse.io/drv": "true"})
    assert match_node("drv", unset_spec(), labelled, [device("loop0")], opted_out).matched
    # The spec's own setting wins over the file's, either way.
    assert match_node("drv", unset_spec(autoLoad=True), node(), [device("loop0")], opted_out).matched
    refused = match_node("drv", unset_spec(autoLoad=False), node(), [device("loop0")], file_declaring("loop"))
    assert refused.reason == Reason.NOT_OPTED_IN
    assert refused.message.startswith("autoLoad is false and the node lacks the label")
    # No file reported: the decorator's default (True) applies, and the missing file is the reason.
    missing = match_node("drv", unset_spec(supportedDevices=["loop"]), node(), [device("loop0")], {})
    assert missing.reason == Reason.DRIVER_NOT_AVAILABLE and missing.devices == ("loop0",)


def test_the_view_reads_the_declared_auto_load_and_platform() -> None:
    files = file_declaring(
        "loop", auto_load=False, platform={"kernelVersion": {"atLeast": "5.10"}, "os": "linux"}
    )
    found = files["loop_info.py"]
    assert found.auto_load is False
    assert found.minimum_platform is not None and found.minimum_platform.os == "linux"
    assert found.minimum_platform.kernel_version is not None
    assert found.minimum_platform.kernel_version.at_least == "5.10"
    plain = file_declaring("loop")["loop_info.py"]
    assert plain.auto_load is True and plain.minimum_platform is None
    unreadable = file_declaring("loop", platform={"os": "Not An OS"})["loop_info.py"]
    assert unreadable.minimum_platform is None
    unsaid = config_view(
        {"metadata": {"name": "n1"}, "status": {"available": [{"file": "x.py", "sha256": "b" * 64}]}}
    )
    assert unsaid.available["x.py"].auto_load is True
