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
