"""Directory autoload (autoload.py through desired.plan_node): a node's driver file that declares
auto_load=True runs there without a StorageDriver, only while the operator's setting is on, on
the file's declared devices, under the node's bound and the unload delay; a StorageDriver that
declares the same driver name decides instead."""

from __future__ import annotations

from typing import Any

from storage_driver_api.nodedriverconfig import DesiredDriver
from storage_driver_operator.autoload import FileReason, entry_name, file_drivers, gone, is_file_entry
from storage_driver_operator.desired import (
    Action,
    Hold,
    NodePlan,
    NodeState,
    Snapshot,
    plan_cluster,
    plan_node,
)
from storage_driver_operator.matching import Reason
from storage_driver_operator.views import AvailableFile, ConfigView, DeviceView, StorageDriverView

from tests.unit.operator.builders import NOW, config, device, driver, lease, node

AUTO = "file:auto.py"


def declared(
    name: str = "Auto Driver", version: str | None = "1.0.0", types: tuple[str, ...] = ("loop",), **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"sha256": "c" * 64, "driverName": name, "supportedDevices": list(types), **extra}
    if version is not None:
        body["version"] = version
    return body


def files(**by_path: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {path.replace("__", "/").replace("_py", ".py"): body for path, body in by_path.items()}


def plan(
    *devices: DeviceView,
    available: dict[str, dict[str, Any]] | None = None,
    current: tuple[DesiredDriver, ...] = (),
    drivers: tuple[StorageDriverView, ...] = (),
    autoload: bool = True,
    now: float = NOW,
    max_loaded: int | None = None,
) -> NodePlan:
    cfg: ConfigView = config(
        drivers=current,
        available=available if available is not None else files(auto_py=declared()),
        max_loaded=max_loaded,
    )
    return plan_node(NodeState(node(), devices, cfg, lease()), list(drivers), now, None, autoload)


def test_a_file_declaring_auto_load_loads_on_its_declared_devices() -> None:
    result = plan(device("loop0"), device("sda", type_="scsi-disk"))
    (loaded,) = result.drivers
    assert loaded.name == AUTO and loaded.driver_name == "Auto Driver" and loaded.version == "1.0.0"
    assert (
        loaded.source.kind == "hostPath" and loaded.source.path == "auto.py" and loaded.source.sha256 is None
    )
    assert loaded.devices == ["loop0"] and loaded.priority == 0 and loaded.unload_grace_period_seconds == 5
    decision = result.decisions[AUTO]
    assert decision.action == Action.LOAD and decision.reason == Reason.MATCHED and result.changed


def test_autoload_off_loads_nothing_without_a_storage_driver() -> None:
    result = plan(device("loop0"), autoload=False)
    assert result.drivers == () and result.decisions == {} and not result.changed


def test_no_matching_device_loads_nothing() -> None:
    result = plan(device("sda", type_="scsi-disk"))
    assert result.drivers == ()
    assert result.decisions[AUTO].action == Action.NONE
    assert result.decisions[AUTO].reason == Reason.NO_MATCHING_DEVICES


def test_a_loaded_file_unloads_when_removed_or_when_autoload_is_turned_off() -> None:
    running = plan(device("loop0")).drivers
    removed = plan(device("loop0"), available={}, current=running)
    assert removed.drivers == () and removed.changed
    assert removed.decisions[AUTO].action == Action.UNLOAD
    assert removed.decisions[AUTO].reason == FileReason.REMOVED
    assert removed.decisions[AUTO].message == "auto.py is no longer in the node's driver directory"
    off = plan(device("loop0"), current=running, autoload=False)
    assert off.drivers == () and off.decisions[AUTO].action == Action.UNLOAD
    assert off.decisions[AUTO].reason == FileReason.OFF
    kept = plan(device("loop0"), current=running)
    assert kept.decisions[AUTO].action == Action.KEEP and not kept.changed


def test_the_last_matching_device_going_unloads_after_the_unload_delay() -> None:
    running = plan(device("loop0")).drivers
    went = NOW - 10
    held = plan(device("loop0", present=False, since=went), current=running)
    assert held.decisions[AUTO].action == Action.HOLD and held.decisions[AUTO].reason == Hold.UNLOAD_DELAY
    assert held.recheck_at == went + 30 and held.drivers[0].devices == []
    later = plan(device("loop0", present=False, since=went), current=running, now=went + 31)
    assert later.decisions[AUTO].action == Action.UNLOAD and later.drivers == ()


def test_a_storage_driver_declaring_the_same_driver_name_decides_instead() -> None:
    sd = driver(
        "auto-sd", driverName="Auto Driver", supportedDevices=None, source={"hostPath": {"path": "auto.py"}}
    )
    result = plan(device("loop0"), drivers=(sd,))
    assert [d.name for d in result.drivers] == ["auto-sd"]
    assert result.decisions[AUTO].action == Action.NONE
    assert result.decisions[AUTO].reason == FileReason.CLAIMED
    # Already autoloaded when the StorageDriver arrives: the file's entry gives way in the same write.
    running = plan(device("loop0")).drivers
    switched = plan(device("loop0"), drivers=(sd,), current=running)
    assert [d.name for d in switched.drivers] == ["auto-sd"]
    assert switched.decisions[AUTO].action == Action.UNLOAD
    # A StorageDriver that went invalid keeps its entry, and still keeps the file from running twice.
    held = plan(device("loop0"), drivers=(driver("auto-sd", version="bad"),), current=switched.drivers)
    assert [d.name for d in held.drivers] == ["auto-sd"] and AUTO not in {d.name for d in held.drivers}
    assert held.decisions[AUTO].reason == FileReason.CLAIMED


def test_a_changed_declaration_takes_effect_on_the_node_at_once() -> None:
    running = plan(device("loop0"), device("zram0", type_="zram")).drivers
    newer = plan(
        device("loop0"),
        device("zram0", type_="zram"),
        available=files(auto_py=declared(version="1.1.0", types=("loop", "zram"))),
        current=running,
    )
    assert newer.decisions[AUTO].action == Action.UPDATE
    assert newer.drivers[0].version == "1.1.0" and newer.drivers[0].devices == ["loop0", "zram0"]
    opted_out = plan(device("loop0"), available=files(auto_py=declared(autoLoad=False)), current=running)
    assert opted_out.drivers == () and opted_out.decisions[AUTO].reason == FileReason.NOT_AUTO_LOAD
    other_types = plan(device("loop0"), available=files(auto_py=declared(types=("zram",))), current=running)
    assert other_types.drivers == () and other_types.decisions[AUTO].action == Action.UNLOAD


def test_the_files_minimum_platform_decides_where_it_loads() -> None:
    too_new = declared(minimumPlatform={"kernelVersion": {"atLeast": "9.0"}})
    result = plan(device("loop0"), available=files(auto_py=too_new))
    assert result.drivers == () and result.decisions[AUTO].reason == Reason.PLATFORM_TOO_OLD


def test_autoloaded_files_count_against_the_bound_with_the_same_priority_rule() -> None:
    sd = driver("a-sd", driverName="Other", priority=1)
    result = plan(
        device("loop0"),
        drivers=(sd,),
        max_loaded=1,
        available={**files(auto_py=declared()), "loop_info.py": {"sha256": "a" * 64}},
    )
    assert [d.name for d in result.drivers] == ["a-sd"]
    assert result.decisions[AUTO].reason == Reason.CAPACITY_EXCEEDED


def test_which_files_are_not_autoloaded_and_why() -> None:
    available = {
        path: AvailableFile(path, "d" * 64, None, name, version, types, auto_load)
        for path, name, version, types, auto_load in (
            ("a.py", "A", "1.0.0", ("loop",), True),
            ("b.py", "A", "1.0.0", ("loop",), True),  # the same driver name as a.py
            ("c.py", "C", None, ("loop",), True),
            ("d.py", "D", "1.0.0", (), True),
            ("e.py", "E", "1.0.0", ("loop",), False),
            ("f.py", "Claimed", "1.0.0", ("loop",), True),
            ("managed/g.py", "G", "1.0.0", ("loop",), True),
            ("h.py", None, None, (), True),
            ("i.py", "I", "1.0", ("loop",), True),
        )
    }
    available["broken.py"] = AvailableFile("broken.py", "e" * 64, "SyntaxError", "B", "1.0.0", ("loop",))
    found = file_drivers(available, {"Claimed"})
    assert set(found) == {entry_name(p) for p in ("a.py", "b.py", "c.py", "d.py", "e.py", "f.py", "i.py")}
    a = found["file:a.py"]
    assert isinstance(a, StorageDriverView) and a.spec is not None and a.spec.driver_name == "A"
    assert found["file:b.py"] == (FileReason.DUPLICATE, "a.py declares driver 'A' too and comes first")
    assert found["file:c.py"] == (FileReason.INCOMPLETE, "c.py declares no version; autoload needs one")
    assert found["file:d.py"] == (
        FileReason.INCOMPLETE,
        "d.py declares no supported_devices; autoload needs them",
    )
    assert found["file:e.py"] == (FileReason.NOT_AUTO_LOAD, "e.py declares auto_load=False")
    assert found["file:f.py"] == (
        FileReason.CLAIMED,
        "a StorageDriver declares driver 'Claimed', which f.py declares; the StorageDriver decides where it runs",
    )
    reason, message = found["file:i.py"]  # type: ignore[misc]
    assert reason == FileReason.INCOMPLETE and message.startswith("i.py: spec.version")


def test_entry_names_cannot_be_storage_driver_names() -> None:
    assert entry_name("x/y.py") == "file:x/y.py" and is_file_entry("file:x/y.py")
    assert not is_file_entry("file-x") and not is_file_entry("x-file:")
    assert gone("file:x.py", False) == (FileReason.OFF, "directory autoload is off in the operator")
    assert gone("file:x.py", True)[1] == "x.py is no longer in the node's driver directory"


def test_a_node_without_a_report_autoloads_nothing() -> None:
    cfg = config(status=False)
    result = plan_node(NodeState(node(), (device("loop0"),), cfg, lease()), [], NOW, None, True)
    assert result.drivers == () and result.decisions == {}
    assert plan_node(NodeState(node(), (device("loop0"),), None, lease()), [], NOW, None, True).drivers == ()


def test_a_file_that_is_not_autoloaded_says_why_in_its_decision() -> None:
    """`sdctl plan` and the node's Events show the reason and the message of a declined file."""
    result = plan(device("loop0"), available=files(auto_py=declared(version=None)))
    decision = result.decisions[AUTO]
    assert (decision.action, decision.reason) == (Action.NONE, FileReason.INCOMPLETE)
    assert decision.message == "auto.py declares no version; autoload needs one"


def test_directory_autoload_is_off_unless_the_operator_turns_it_on() -> None:
    cfg = config(available=files(auto_py=declared()))
    state = NodeState(node(), (device("loop0"),), cfg, lease())
    assert plan_node(state, [], NOW).drivers == ()
    world = Snapshot(
        nodes={"n1": node()}, devices=(device("loop0"),), configs={"n1": cfg}, leases={"n1": lease()}
    )
    assert plan_cluster(world, NOW)["n1"].drivers == ()
    assert [d.name for d in plan_cluster(world, NOW, autoload=True)["n1"].drivers] == [AUTO]
