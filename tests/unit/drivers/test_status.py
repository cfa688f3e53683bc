"""NodeDriverConfig status built from driver states, and desired drivers read from the spec."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_driver_agent.drivers.hosts import describe_exit, error_reason
from storage_driver_agent.drivers.service import device_present, parse_size
from storage_driver_agent.drivers.slots import HostSlot
from storage_driver_agent.drivers.sources import SourceError, check_relative_path
from storage_driver_agent.drivers.statemachine import (
    Artifact,
    Bind,
    Desired,
    DriverState,
    Failure,
    Fetch,
    Host,
    Refusal,
    SourceRef,
    Start,
    Stop,
    StopReason,
)
from storage_driver_agent.drivers.status import (
    TRANSITION_HOLD,
    DriverReport,
    LastError,
    NodeReport,
    bound_drivers_by_device,
    build_status,
    config_json,
    desired_from_api,
    driver_status,
    merge_patch,
    settling,
    write_delay,
)
from storage_driver_agent.drivers.watch import debounce_deadline
from storage_driver_api.nodedriverconfig import MAX_AVAILABLE, MAX_BOUND_DEVICES, MAX_FACTS, NodeDriverConfig
from storage_driver_sdk import MinimumPlatform
from storage_driver_sdk.scan import Declaration, ScannedDriver

AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SHA = "a" * 64


def desired(name: str, devices: tuple[str, ...] = ("d1",)) -> Desired:
    return Desired(
        name, "Loop Info", "1.0.0", SourceRef("hostPath", "loop_info.py"), "{}", devices=frozenset(devices)
    )


def loaded(name: str, attached: tuple[str, ...] = ("d1",)) -> DriverReport:
    d = desired(name, attached)
    host = Host(4242, "Loop Info", "1.0.0", SHA, "{}", frozenset(attached), started_at=AT.timestamp())
    state = DriverState(name, desired=d, artifact=Artifact(d.fetch_key, SHA, "C"), file_sha=SHA, host=host)
    return DriverReport(state, facts={"d1": {"sizeBytes": 8388608, "backingFile": "/x.img"}})


def node(drivers: list[DriverReport], available: list[ScannedDriver] | None = None) -> NodeReport:
    return NodeReport(7, "boot-1", "0.1.0", 100, drivers, available or [])


def test_desired_from_the_api_spec() -> None:
    model = NodeDriverConfig.model_validate(
        {
            "spec": {
                "drivers": [
                    {
                        "name": "qs",
                        "driverName": "Queue Settings Driver",
                        "version": "1.1.0",
                        "source": {
                            "kind": "configMap",
                            "path": "qs.py",
                            "configMapNamespace": "ns",
                            "configMapName": "cm",
                            "configMapKey": "qs.py",
                        },
                        "config": {"read_ahead_kb": 1024, "scheduler": "none"},
                        "unloadGracePeriodSeconds": 9,
                        "devices": ["d2", "d1"],
                        "priority": 3,
                    }
                ]
            }
        }
    )
    (result,) = [desired_from_api(d) for d in model.spec.drivers]
    assert result.source == SourceRef("configMap", "qs.py", None, None, ("ns", "cm", "qs.py"))
    assert result.config_json == '{"read_ahead_kb":1024,"scheduler":"none"}'
    assert result.devices == {"d1", "d2"} and result.grace_seconds == 9 and result.priority == 3


def test_equal_configs_give_equal_keys() -> None:
    assert config_json({"b": 1, "a": {"y": 2, "x": 1}}) == config_json({"a": {"x": 1, "y": 2}, "b": 1})


def test_a_loaded_driver_reports_everything() -> None:
    status = build_status(node([loaded("loop-info")]), frozenset({"d1"}), 0.0, AT)
    (driver,) = status.drivers
    assert driver.phase == "Loaded"
    assert driver.pid == 4242 and driver.sha256 == SHA and driver.version == "1.0.0"
    assert driver.bound_devices == ["d1"]
    assert driver.devices[0].facts == {"backingFile": "/x.img", "sizeBytes": "8388608"}
    assert driver.start_time == AT
    assert (status.desired_count, status.loaded_count, status.failed_count) == (1, 1, 0)
    assert status.observed_generation == 7 and status.boot_id == "boot-1"
    assert status.capacity.max_loaded_drivers == 100
    (ready,) = status.conditions
    assert (ready.type, ready.status, ready.reason, ready.observed_generation) == (
        "Ready",
        "True",
        "Converged",
        7,
    )
    # The API accepts it (the CRD schema comes from the same model).
    NodeDriverConfig.model_validate({"status": status.to_api()})


def test_failures_make_ready_false_with_the_names() -> None:
    d = desired("bad")
    refused = DriverState(
        "bad", desired=d, artifact=Refusal(d.fetch_key, "ChecksumMismatch", "m", SHA), file_sha=SHA
    )
    report = DriverReport(refused, last_error=LastError("ChecksumMismatch", "wrong sha", AT))
    status = build_status(node([loaded("good"), report]), frozenset({"d1"}), 0.0, AT)
    assert [(d.name, d.phase) for d in status.drivers] == [("bad", "Failed"), ("good", "Loaded")]
    assert (
        status.drivers[0].last_error is not None and status.drivers[0].last_error.reason == "ChecksumMismatch"
    )
    assert status.failed_count == 1
    assert status.conditions[0].status == "False" and "bad" in status.conditions[0].message


def test_phases_while_actions_run() -> None:
    d = desired("x")
    fetching = DriverReport(DriverState("x", desired=d, busy=True), in_flight=Fetch())
    stopping = loaded("y")
    stopping = DriverReport(stopping.state, in_flight=Stop(StopReason.REMOVED))
    reloading = DriverReport(loaded("z").state, in_flight=Stop(StopReason.RELOAD))
    backoff = DriverReport(
        DriverState(
            "w",
            desired=desired("w"),
            artifact=Artifact(desired("w").fetch_key, SHA, "C"),
            file_sha=SHA,
            failure=Failure("Crashed", "", 0.0, 2, 10.0),
        ),
        restarts=2,
    )
    status = build_status(node([fetching, stopping, reloading, backoff]), frozenset({"d1"}), 1.0, AT)
    phases = {d.name: (d.phase, d.restarts) for d in status.drivers}
    assert phases == {"x": ("Loading", 0), "y": ("Unloading", 0), "z": ("Loading", 0), "w": ("Failed", 2)}


def test_gone_drivers_leave_the_status() -> None:
    assert build_status(node([DriverReport(DriverState("gone"))]), frozenset(), 0.0, AT).drivers == []


def test_condition_transition_time_stays_while_the_status_holds() -> None:
    first = build_status(node([loaded("a")]), frozenset({"d1"}), 0.0, AT)
    later = AT + dt.timedelta(hours=1)
    again = build_status(
        NodeReport(7, "boot-1", "0.1.0", 100, [loaded("a")], [], previous=first),
        frozenset({"d1"}),
        0.0,
        later,
    )
    assert again.conditions[0].last_transition_time == AT
    assert again.to_api() == first.to_api()  # nothing changed: nothing to write


def test_available_lists_scanned_files_with_their_metadata_or_error() -> None:
    good = ScannedDriver(
        "loop_info.py",
        SHA,
        Declaration(
            "C",
            3,
            "Loop Info",
            "1.0.0",
            ("loop",),
            "d",
            True,
            MinimumPlatform(kernel="5.10", architectures=("amd64",)),
        ),
    )
    broken = ScannedDriver("broken.py", "b" * 64, error="syntax error at line 1: invalid syntax")
    unreadable = ScannedDriver("gone.py", "", error="cannot read")
    status = build_status(node([], [good, broken, unreadable]), frozenset(), 0.0, AT)
    assert [a.file for a in status.available] == ["broken.py", "loop_info.py"]
    entry = status.available[1]
    assert (entry.driver_name, entry.class_name, entry.supported_devices) == ("Loop Info", "C", ["loop"])
    assert entry.minimum_platform is not None and entry.minimum_platform.kernel_version is not None
    assert entry.minimum_platform.kernel_version.at_least == "5.10"
    assert status.available[0].error == "syntax error at line 1: invalid syntax"


def test_bound_drivers_per_device() -> None:
    result = bound_drivers_by_device(
        [loaded("b", ("d1", "d2")), loaded("a", ("d1",)), DriverReport(DriverState("c"))]
    )
    assert result == {"d1": ["a", "b"], "d2": ["b"]}
    # A driver without a host (not started, or stopped) binds nothing, wherever it is listed.
    reports = [DriverReport(DriverState("c")), loaded("b", ("d1", "d2")), loaded("a", ("d1",))]
    assert bound_drivers_by_device(reports) == {"d1": ["a", "b"], "d2": ["b"]}


def test_settling_while_any_action_runs() -> None:
    idle = [loaded("a"), DriverReport(DriverState("b"))]
    assert not settling(idle)
    assert not settling([])
    for action in (
        Fetch(),
        Start(frozenset({"d1"})),
        Bind(frozenset({"d1"}), frozenset()),
        Stop(StopReason.REMOVED),
    ):
        running = DriverReport(loaded("c").state, in_flight=action)
        assert settling([*idle, running]), action
        assert settling([running, *idle]), action


def test_write_delay_holds_a_status_only_while_an_action_runs() -> None:
    # Nothing runs: written at once, however long something was held before.
    assert write_delay(False, None, 100.0) == 0.0
    assert write_delay(False, 99.9, 100.0) == 0.0
    # The first status held waits the whole hold; later ones only what is left of it.
    assert write_delay(True, None, 100.0, hold=0.25) == 0.25
    assert write_delay(True, 100.0, 100.1, hold=0.25) == pytest.approx(0.15)
    # A hold that is over writes at once (a slow load shows Loading), never a negative wait.
    assert write_delay(True, 100.0, 100.25, hold=0.25) == 0.0
    assert write_delay(True, 100.0, 105.0, hold=0.25) == 0.0
    assert write_delay(True, None, 100.0) == TRANSITION_HOLD == 0.25  # the hold driver-runtime.md states


# --- small pure helpers ----------------------------------------------------------------------


def test_debounce_waits_for_quiet_but_not_forever() -> None:
    assert debounce_deadline(first=0.0, last=0.2, debounce=0.5, max_delay=5.0) == 0.7
    assert debounce_deadline(first=0.0, last=4.9, debounce=0.5, max_delay=5.0) == 5.0


@pytest.mark.parametrize(
    ("text", "size"), [("0", 0), ("512Mi", 512 * 2**20), ("2Gi", 2 * 2**30), ("1k", 1000), ("100", 100)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size_is_refused() -> None:
    with pytest.raises(Exception, match="not a size"):
        parse_size("lots")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc/passwd", "PathEscapesDriverDirectory"),
        ("../x.py", "PathEscapesDriverDirectory"),
        ("a/../../x.py", "PathEscapesDriverDirectory"),
        ("", "PathEscapesDriverDirectory"),
        (".hidden.py", "InvalidSourcePath"),
        ("a/b/c/d/e.py", "InvalidSourcePath"),
    ],
)
def test_paths_that_leave_the_directory_are_refused(path: str, reason: str) -> None:
    with pytest.raises(SourceError) as refused:
        check_relative_path(path)
    assert refused.value.reason == reason


def test_good_relative_paths_pass() -> None:
    check_relative_path("loop_info.py")
    check_relative_path("vendor/pkg")


def test_error_reasons_and_exit_descriptions() -> None:
    assert error_reason("MemoryError") == "MemoryLimitExceeded"
    assert error_reason("ModuleNotFoundError") == "ImportFailed"
    assert error_reason("RuntimeError") == "StartFailed"
    assert describe_exit(-signal.SIGKILL) == "the driver host was killed by SIGKILL"
    assert describe_exit(3) == "the driver host exited with code 3"
    assert describe_exit(None) == "the driver host exited unexpectedly"


def test_host_slot_paths_fit_a_unix_socket() -> None:
    slot = HostSlot.for_driver(Path("/var/lib/storage-agent/hosts"), "x" * 253)
    assert len(str(slot.socket)) < 100
    assert slot.socket.name.startswith("xxxxxxxx") and slot.socket.suffix == ".sock"
    assert HostSlot.for_driver(Path("/h"), "a") != HostSlot.for_driver(Path("/h"), "A")


def test_device_presence() -> None:
    spec = {"type": "loop"}
    assert device_present({"spec": spec})
    assert device_present({"spec": spec, "status": {"conditions": [{"type": "Present", "status": "True"}]}})
    assert not device_present(
        {"spec": spec, "status": {"conditions": [{"type": "Present", "status": "False"}]}}
    )
    assert not device_present({"spec": {"type": "floppy"}})


# --- merge patches ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)
documents = st.dictionaries(st.text(max_size=3), json_values.filter(lambda v: v is not None), max_size=4)


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    return value


@given(documents, documents)
def test_merge_patch_turns_the_old_status_into_the_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    # Statuses carry no nulls (None is never rendered), so nested nulls are left out here too.
    old, new = _strip_nulls(old), _strip_nulls(new)
    assert apply_merge_patch(old, merge_patch(old, new)) == new


def test_merge_patch_sends_only_what_changed() -> None:
    old = {
        "observedGeneration": 1,
        "drivers": [{"name": "a"}],
        "capacity": {"maxLoadedDrivers": 100},
        "bootId": "x",
    }
    new = {"observedGeneration": 2, "drivers": [{"name": "a"}], "capacity": {"maxLoadedDrivers": 100}}
    assert merge_patch(old, new) == {"observedGeneration": 2, "bootId": None}
    assert merge_patch(new, new) == {}


def test_an_unhealthy_driver_says_why_in_a_field_of_its_own() -> None:
    report = loaded("loop-info")
    sick = DriverReport(report.state, unhealthy="backing file is gone", facts=report.facts)
    (driver,) = build_status(node([sick]), frozenset({"d1"}), 0.0, AT).drivers
    assert driver.phase == "Loaded"
    assert driver.unhealthy == "backing file is gone"
    assert driver.message.startswith("unhealthy: backing file is gone")
    assert driver.to_api()["unhealthy"] == "backing file is gone"
    (healthy,) = build_status(node([report]), frozenset({"d1"}), 0.0, AT).drivers
    assert healthy.unhealthy is None and "unhealthy" not in healthy.to_api()
    # Once its host is gone, a stale health verdict is not reported.
    gone = DriverReport(
        DriverState("loop-info", desired=report.state.desired), unhealthy="backing file is gone"
    )
    (stopped,) = build_status(node([gone]), frozenset({"d1"}), 0.0, AT).drivers
    assert stopped.unhealthy is None


def test_an_unhealthy_host_says_so_before_its_phase_message() -> None:
    report = loaded("loop-info")
    sick = DriverReport(report.state, unhealthy="health() raised TimeoutError")
    status = driver_status(sick, frozenset({"d1"}), 0.0)
    assert status is not None
    assert (status.phase, status.message) == ("Loaded", "unhealthy: health() raised TimeoutError")
    binding = DriverReport(report.state, unhealthy="slow", in_flight=Bind(frozenset({"d2"}), frozenset()))
    status = driver_status(binding, frozenset({"d1", "d2"}), 0.0)
    assert status is not None
    assert status.message == "unhealthy: slow; binding devices"
    # Without a host there is nothing to be unhealthy.
    stopped = DriverReport(DriverState("loop-info", desired=desired("loop-info")), unhealthy="stale")
    status = driver_status(stopped, frozenset({"d1"}), 0.0)
    assert status is not None and not status.message.startswith("unhealthy")


def test_reports_are_values_that_cannot_change_under_the_status_writer() -> None:
    # The status writer gets snapshots of the reports while the reconcile loop goes on, and the
    # loop records a new error by replacing the old one, never by changing it.
    error = LastError("Crashed", "exit 1", AT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        error.reason = "Other"  # type: ignore[misc]
    assert len({error, LastError("Crashed", "exit 1", AT)}) == 1
    report = loaded("loop-info")
    for value, field in [(report, "last_error"), (node([report]), "generation")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)


def test_a_long_scan_error_is_cut_to_what_the_api_accepts() -> None:
    huge = ScannedDriver("huge.py", "c" * 64, error="SyntaxError: " + "x" * 5000)
    status = build_status(node([], [huge]), frozenset(), 0.0, AT)
    (entry,) = status.available
    assert entry.error is not None and len(entry.error) == 1024 and entry.error.startswith("SyntaxError: x")
    NodeDriverConfig.model_validate({"status": status.to_api()})


def test_ready_names_five_drivers_then_counts_the_rest() -> None:
    def refused(name: str) -> DriverReport:
        d = desired(name)
        return DriverReport(
            DriverState(
                name, desired=d, artifact=Refusal(d.fetch_key, "ChecksumMismatch", "m", SHA), file_sha=SHA
            )
        )

    six = build_status(node([refused(f"d{i}") for i in range(6)]), frozenset({"d1"}), 0.0, AT)
    assert six.conditions[0].message == "failed: d0, d1, d2, d3, d4 and 1 more"
    five = build_status(node([refused(f"d{i}") for i in range(5)]), frozenset({"d1"}), 0.0, AT)
    assert five.conditions[0].message == "failed: d0, d1, d2, d3, d4"
    two = build_status(node([refused(f"d{i}") for i in range(2)]), frozenset({"d1"}), 0.0, AT)
    assert two.conditions[0].message == "failed: d0, d1"
    many = build_status(node([refused(f"d{i:02}") for i in range(12)]), frozenset({"d1"}), 0.0, AT)
    assert many.conditions[0].message == "failed: d00, d01, d02, d03, d04 and 7 more"


def test_ready_waits_for_every_driver_still_loading_pending_or_unloading() -> None:
    fetching = DriverReport(
        DriverState("fetching", desired=desired("fetching"), busy=True), in_flight=Fetch()
    )
    pending = DriverReport(DriverState("pending", desired=desired("pending")))
    unloading = DriverReport(loaded("unloading").state, in_flight=Stop(StopReason.REMOVED))
    for reports, names in [
        ([fetching], "fetching"),
        ([pending], "pending"),
        ([unloading], "unloading"),
        ([unloading, pending, fetching], "fetching, pending, unloading"),
    ]:
        status = build_status(node([loaded("ok"), *reports]), frozenset({"d1"}), 0.0, AT)
        (ready,) = status.conditions
        assert (ready.status, ready.reason, ready.message) == (
            "False",
            "Converging",
            f"not yet converged: {names}",
        )
    # A driver not started yet reports the version it is to load.
    (entry,) = build_status(node([pending]), frozenset({"d1"}), 0.0, AT).drivers
    assert (entry.phase, entry.version, entry.pid) == ("Pending", "1.0.0", None)


def test_whatever_a_driver_reports_is_cut_to_what_the_api_accepts() -> None:
    # A driver's errors, health verdicts and facts are its author's text, and a node may hold
    # more devices and files than one status lists: the status is cut to the schema's bounds,
    # keeping the first of each in order, so that the agent's write is never refused.
    devices = tuple(f"dev{i:03}" for i in range(MAX_BOUND_DEVICES + 20))
    report = loaded("loop-info", devices)
    facts = {f"{i:02}" + "k" * 100: "v" * 1000 for i in range(MAX_FACTS + 4)}
    chatty = DriverReport(
        report.state,
        restarts=2,
        last_error=LastError("R" * 500, "m" * 10_000, AT),
        unhealthy="u" * 5000,
        facts={devices[0]: facts},
    )
    files = [ScannedDriver(f"f{i:03}.py", SHA, error="SyntaxError") for i in range(MAX_AVAILABLE + 10)]
    status = build_status(node([chatty], files), frozenset(devices), 0.0, AT)
    (driver,) = status.drivers
    assert driver.last_error is not None
    assert (len(driver.last_error.reason), len(driver.last_error.message)) == (128, 4096)
    assert driver.unhealthy == "u" * 1024
    assert len(driver.message) == 1024 and driver.message.startswith("unhealthy: uuu")
    assert driver.bound_devices == list(devices[:MAX_BOUND_DEVICES])
    assert [d.name for d in driver.devices] == list(devices[:MAX_BOUND_DEVICES])
    first = driver.devices[0].facts
    assert list(first) == [f"{i:02}" + "k" * 62 for i in range(MAX_FACTS)]
    assert set(first.values()) == {"v" * 256}
    assert [a.file for a in status.available] == [f"f{i:03}.py" for i in range(MAX_AVAILABLE)]
    NodeDriverConfig.model_validate({"status": status.to_api()})


def test_an_unload_waiting_for_a_device_in_use_says_what_holds_it() -> None:
    report = loaded("loop-info")
    removed = dataclasses.replace(report.state, desired=None)
    held = {"d1": ("loop3 mounted at /mnt/data",)}
    blocked = DriverReport(removed, blocked=held)
    status = build_status(node([blocked]), frozenset({"d1"}), 0.0, AT)
    (driver,) = status.drivers
    assert driver.phase == "Unloading" and driver.pid == 4242
    assert driver.message == "unload blocked: d1 (loop3 mounted at /mnt/data) in use; retrying until free"
    assert driver.to_api()["unloadBlocked"] == [{"name": "d1", "heldBy": ["loop3 mounted at /mnt/data"]}]
    condition = next(c for c in status.conditions if c.type == "UnloadBlocked")
    assert (condition.status, condition.reason) == ("True", "DeviceInUse")
    assert "loop-info: unload blocked: d1 (loop3 mounted at /mnt/data)" in condition.message
    # A detach that waits leaves the driver Loaded.
    detach = build_status(node([DriverReport(report.state, blocked=held)]), frozenset({"d1"}), 0.0, AT)
    assert detach.drivers[0].phase == "Loaded"
    assert detach.drivers[0].message.startswith("detach blocked: d1 (loop3 mounted at /mnt/data)")
    # Free again: the condition turns False (it stays, so its transition time tells when).
    previous = status.model_copy()
    freed = build_status(
        NodeReport(7, "boot-1", "0.1.0", 100, [report], [], previous=previous), frozenset({"d1"}), 0.0, AT
    )
    assert freed.drivers[0].unload_blocked == []
    condition = next(c for c in freed.conditions if c.type == "UnloadBlocked")
    assert (condition.status, condition.reason) == ("False", "NoDeviceInUse")
    # A node that never had a device in use has no such condition.
    assert [c.type for c in build_status(node([report]), frozenset({"d1"}), 0.0, AT).conditions] == ["Ready"]


def test_force_unload_comes_from_the_spec_entry() -> None:
    entry = NodeDriverConfig.model_validate(
        {
            "spec": {
                "drivers": [
                    {
                        "name": "x",
                        "driverName": "X",
                        "version": "1.0.0",
                        "forceUnload": True,
                        "source": {"kind": "hostPath", "path": "x.py"},
                    }
                ]
            }
        }
    ).spec.drivers[0]
    assert desired_from_api(entry).force_unload is True
    assert desired_from_api(entry.model_copy(update={"force_unload": False})).force_unload is False


def test_a_device_freed_after_the_agent_restarted_clears_unload_blocked() -> None:
    """The previous status comes back from the API as JSON: its condition types equal the
    agent's names without being the same strings."""
    report = loaded("loop-info")
    held = {"d1": ("loop3 mounted at /mnt/data",)}
    status = build_status(node([DriverReport(report.state, blocked=held)]), frozenset({"d1"}), 0.0, AT)
    previous = NodeDriverConfig.model_validate({"status": json.loads(json.dumps(status.to_api()))}).status
    freed = build_status(
        NodeReport(7, "boot-1", "0.1.0", 100, [report], [], previous=previous), frozenset({"d1"}), 0.0, AT
    )
    condition = next(c for c in freed.conditions if c.type == "UnloadBlocked")
    assert (condition.status, condition.reason) == ("False", "NoDeviceInUse")


def test_what_holds_a_device_is_cut_to_512_characters_each() -> None:
    report = loaded("loop-info")
    held = {"d1": ("m" * 512, "n" * 600)}
    status = build_status(node([DriverReport(report.state, blocked=held)]), frozenset({"d1"}), 0.0, AT)
    assert status.drivers[0].unload_blocked[0].held_by == ["m" * 512, "n" * 512]


def test_unload_blocked_names_the_first_five_blocked_drivers() -> None:
    def blocked(count: int) -> str:
        reports = [
            DriverReport(loaded(f"drv-{i}").state, blocked={"d1": (f"holder {i}",)}) for i in range(count)
        ]
        status = build_status(node(reports), frozenset({"d1"}), 0.0, AT)
        return next(c.message for c in status.conditions if c.type == "UnloadBlocked")

    assert [f"drv-{i}: detach blocked" in blocked(6) for i in range(6)] == [True] * 5 + [False]
    assert blocked(5).count("detach blocked") == 5
