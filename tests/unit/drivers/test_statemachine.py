"""The driver state machine: the next action per driver from desired, actual and time."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_driver_agent.drivers import service
from storage_driver_agent.drivers.statemachine import (
    IDLE,
    NEVER,
    Artifact,
    BackoffPolicy,
    Bind,
    Desired,
    DriverState,
    Failure,
    Fetch,
    Host,
    Phase,
    Refusal,
    SourceRef,
    Start,
    Stop,
    StopReason,
    Wait,
    admitted,
    forget_host,
    next_action,
    next_failure,
    phase_of,
)

SOURCE = SourceRef("hostPath", "loop_info.py")
POLICY = BackoffPolicy(base_seconds=1.0, max_seconds=60.0, stable_seconds=600.0)


def desired(
    version: str = "1.0.0", config: str = "{}", devices: frozenset[str] = frozenset({"d1"}), **kw
) -> Desired:
    return Desired(
        name=kw.pop("name", "loop-info"),
        driver_name="Loop Info",
        version=version,
        source=kw.pop("source", SOURCE),
        config_json=config,
        devices=devices,
        **kw,
    )


def artifact_for(d: Desired, sha: str = "a" * 64) -> Artifact:
    return Artifact(d.fetch_key, sha, "LoopInfo")


def host_for(d: Desired, sha: str = "a" * 64, attached: frozenset[str] = frozenset()) -> Host:
    return Host(
        pid=42,
        driver_name=d.driver_name,
        version=d.version,
        sha256=sha,
        config_json=d.config_json,
        attached=attached,
    )


def ready(d: Desired, **kw) -> DriverState:
    """A state whose artifact is fetched and whose file is unchanged."""
    sha = kw.pop("sha", "a" * 64)
    return DriverState("loop-info", desired=d, artifact=artifact_for(d, sha), file_sha=sha, **kw)


PRESENT = frozenset({"d1", "d2"})


# --- the table of decisions ------------------------------------------------------------------


def test_nothing_desired_nothing_running_is_idle() -> None:
    assert next_action(DriverState("x"), PRESENT, 0) == IDLE


def test_a_new_driver_is_fetched_first() -> None:
    assert next_action(DriverState("loop-info", desired=desired()), PRESENT, 0) == Fetch()


def test_a_verified_driver_starts_with_the_devices_the_node_has() -> None:
    d = desired(devices=frozenset({"d1", "d3"}))
    assert next_action(ready(d), PRESENT, 0) == Start(frozenset({"d1"}))


def test_one_action_in_flight_per_driver() -> None:
    assert next_action(replace(ready(desired()), busy=True), PRESENT, 0) == IDLE


def test_removed_from_spec_stops_the_host() -> None:
    d = desired()
    state = DriverState("loop-info", host=host_for(d))
    assert next_action(state, PRESENT, 0) == Stop(StopReason.REMOVED)


def test_over_capacity_stops_the_host() -> None:
    d = desired()
    state = replace(ready(d, host=host_for(d, attached=frozenset({"d1"}))), admitted=False)
    assert next_action(state, PRESENT, 0) == Stop(StopReason.CAPACITY)


def test_over_capacity_without_host_is_idle_and_failed() -> None:
    state = replace(ready(desired()), admitted=False)
    assert next_action(state, PRESENT, 0) == IDLE
    assert phase_of(state, PRESENT, 0, None)[0] is Phase.FAILED


def test_a_changed_file_is_fetched_again_then_reloaded() -> None:
    d = desired()
    running = ready(d, host=host_for(d, attached=frozenset({"d1"})))
    changed = replace(running, file_sha="b" * 64)
    assert next_action(changed, PRESENT, 0) == Fetch()
    refetched = replace(changed, artifact=artifact_for(d, "b" * 64))
    assert next_action(refetched, PRESENT, 0) == Stop(StopReason.RELOAD)
    assert next_action(forget_host(refetched), PRESENT, 0) == Start(frozenset({"d1"}))


@pytest.mark.parametrize(
    "change",
    [
        {"version": "1.1.0"},
        {"config": '{"read_ahead_kb":1024}'},
    ],
)
def test_a_new_version_or_config_reloads(change: dict[str, Any]) -> None:
    old = desired()
    new = desired(**change)
    state = DriverState(
        "loop-info",
        desired=new,
        artifact=artifact_for(new),
        file_sha="a" * 64,
        host=host_for(old, attached=frozenset({"d1"})),
    )
    assert next_action(state, PRESENT, 0) == Stop(StopReason.RELOAD)


def test_devices_are_attached_and_detached_as_they_come_and_go() -> None:
    d = desired(devices=frozenset({"d1", "d2"}))
    state = ready(d, host=host_for(d, attached=frozenset({"d1", "d9"})))
    assert next_action(state, PRESENT, 0) == Bind(attach=frozenset({"d2"}), detach=frozenset({"d9"}))


def test_a_device_that_left_the_node_is_detached() -> None:
    d = desired(devices=frozenset({"d1", "d2"}))
    state = ready(d, host=host_for(d, attached=frozenset({"d1", "d2"})))
    assert next_action(state, frozenset({"d1"}), 0) == Bind(attach=frozenset(), detach=frozenset({"d2"}))


def test_a_failed_attach_waits_for_its_retry_time() -> None:
    d = desired(devices=frozenset({"d1", "d2"}))
    state = ready(d, host=host_for(d, attached=frozenset({"d1"})), attach_retry={"d2": 10.0})
    assert next_action(state, PRESENT, 5.0) == Wait(10.0)
    assert next_action(state, PRESENT, 10.0) == Bind(attach=frozenset({"d2"}), detach=frozenset())


def test_converged_is_idle_and_loaded() -> None:
    d = desired()
    state = ready(d, host=host_for(d, attached=frozenset({"d1"})))
    assert next_action(state, PRESENT, 0) == IDLE
    assert phase_of(state, PRESENT, 0, None) == (Phase.LOADED, "")


def test_a_crash_waits_out_the_backoff_before_the_next_start() -> None:
    d = desired()
    failure = next_failure(None, "Crashed", "exit 1", now=100.0, policy=POLICY)
    state = ready(d, failure=failure)
    assert next_action(state, PRESENT, 100.5) == Wait(101.0)
    assert phase_of(state, PRESENT, 100.5, None)[0] is Phase.FAILED
    assert next_action(state, PRESENT, 101.0) == Start(frozenset({"d1"}))
    assert next_action(state, PRESENT, 500.0) == Start(frozenset({"d1"}))


def test_a_refused_source_does_not_start() -> None:
    d = desired()
    refusal = Refusal(d.fetch_key, "ChecksumMismatch", "wrong sha", file_sha="b" * 64)
    state = DriverState("loop-info", desired=d, artifact=refusal, file_sha="b" * 64)
    assert next_action(state, PRESENT, 0) == IDLE
    assert phase_of(state, PRESENT, 0, None) == (Phase.FAILED, "ChecksumMismatch")


def test_a_refused_new_file_keeps_the_verified_host_running() -> None:
    d = desired()
    refusal = Refusal(d.fetch_key, "ChecksumMismatch", "wrong sha", file_sha="b" * 64)
    state = DriverState("loop-info", desired=d, artifact=refusal, file_sha="b" * 64, host=host_for(d))
    assert next_action(state, PRESENT, 0) == IDLE
    phase, message = phase_of(state, PRESENT, 0, None)
    assert phase is Phase.FAILED and "keeps running" in message


def test_a_removed_file_unloads_the_host() -> None:
    d = desired()
    refusal = Refusal(d.fetch_key, "SourceNotFound", "gone", file_sha=None)
    state = DriverState("loop-info", desired=d, artifact=refusal, file_sha=None, host=host_for(d))
    assert next_action(state, PRESENT, 0) == Stop(StopReason.SOURCE_REMOVED)


def test_a_refusal_is_retried_when_the_file_changes_or_its_time_comes() -> None:
    d = desired()
    refusal = Refusal(d.fetch_key, "DownloadFailed", "503", file_sha=None, retry_at=30.0)
    state = DriverState("loop-info", desired=d, artifact=refusal, file_sha=None)
    assert next_action(state, PRESENT, 10.0) == Wait(30.0)
    assert next_action(state, PRESENT, 30.0) == Fetch()
    assert next_action(state, PRESENT, 45.0) == Fetch()
    assert next_action(replace(state, file_sha="c" * 64), PRESENT, 10.0) == Fetch()


def test_a_changed_source_in_the_spec_is_fetched_again() -> None:
    d = desired()
    moved = replace(d, source=SourceRef("hostPath", "other.py"))
    state = DriverState("loop-info", desired=moved, artifact=artifact_for(d), file_sha="a" * 64)
    assert next_action(state, PRESENT, 0) == Fetch()


# --- backoff (fake time) ---------------------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum() -> None:
    failure: Failure | None = None
    delays = []
    for attempt in range(10):
        now = attempt * 1000.0
        failure = next_failure(failure, "Crashed", "", now=now, policy=POLICY)
        delays.append(failure.retry_at - now)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]


def test_backoff_starts_over_after_a_stable_run() -> None:
    failure = next_failure(None, "Crashed", "", now=0.0, policy=POLICY)
    failure = next_failure(failure, "Crashed", "", now=10.0, policy=POLICY, running_since=5.0)
    assert failure.attempts == 2
    failure = next_failure(failure, "Crashed", "", now=2000.0, policy=POLICY, running_since=1000.0)
    assert failure.attempts == 1 and failure.retry_at == 2001.0


def separate(text: str) -> str:
    """An equal string that is another object, as two values read from two API objects are."""
    copy = "".join(list(text))
    assert copy == text and copy is not text
    return copy


def test_an_equal_spec_delivered_again_keeps_the_verified_file_and_the_host() -> None:
    d = desired()
    running = ready(d, host=host_for(d, attached=frozenset({"d1"})))
    again = replace(running, desired=replace(d, driver_name=separate(d.driver_name)))
    assert next_action(again, PRESENT, 0) == IDLE
    assert phase_of(again, PRESENT, 0, None) == (Phase.LOADED, "")


def test_a_host_that_runs_what_the_spec_says_is_kept_whatever_objects_hold_the_values() -> None:
    d = desired(config='{"read_ahead_kb":1024}')
    host = Host(
        pid=42,
        driver_name=separate(d.driver_name),
        version=separate(d.version),
        sha256=separate("a" * 64),
        config_json=separate(d.config_json),
        attached=frozenset({"d1"}),
    )
    state = DriverState(
        "loop-info", desired=d, artifact=artifact_for(d), file_sha=separate("a" * 64), host=host
    )
    assert next_action(state, PRESENT, 0) == IDLE


@pytest.mark.parametrize(
    "running",
    [
        {"sha256": "0" * 64},
        {"sha256": "f" * 64},
        {"driver_name": "Loop Infn"},
        {"driver_name": "Loop Infp"},
        {"config_json": '{"read_ahead_kb":1023}'},
        {"config_json": '{"read_ahead_kb":1025}'},
    ],
    ids=lambda change: "-".join(f"{k}={v[:12]}" for k, v in change.items()),
)
def test_a_host_that_runs_anything_else_is_reloaded_whichever_way_the_values_sort(
    running: dict[str, Any],
) -> None:
    d = desired(config='{"read_ahead_kb":1024}')
    host = replace(host_for(d, sha="8" * 64, attached=frozenset({"d1"})), **running)
    state = ready(d, sha="8" * 64, host=host)
    assert next_action(state, PRESENT, 0) == Stop(StopReason.RELOAD)


def test_a_refused_file_that_did_not_change_is_not_fetched_again() -> None:
    d = desired()
    refusal = Refusal(d.fetch_key, "ChecksumMismatch", "wrong sha", file_sha="b" * 64)
    state = DriverState("loop-info", desired=d, artifact=refusal, file_sha=separate("b" * 64))
    assert next_action(state, PRESENT, 0) == IDLE


@pytest.mark.parametrize("old_path", ["a_old.py", "z_old.py"])
def test_a_refusal_of_the_previous_source_is_not_reported_for_the_new_one(old_path: str) -> None:
    d = desired()
    old = replace(d, source=SourceRef("hostPath", old_path))
    refusal = Refusal(old.fetch_key, "ChecksumMismatch", "wrong sha", file_sha="b" * 64)
    state = DriverState("loop-info", desired=d, artifact=refusal, file_sha="b" * 64)
    assert phase_of(state, PRESENT, 0, Fetch()) == (Phase.LOADING, "fetching the driver file")
    assert phase_of(state, PRESENT, 0, None) == (Phase.PENDING, "waiting to load")


def test_a_runtime_built_without_options_backs_off_as_the_agent_does_by_default() -> None:
    options = service.Options()
    assert BackoffPolicy() == BackoffPolicy(options.restart_backoff, options.restart_backoff_max)


def test_the_agents_backoff_starts_over_after_ten_minutes_of_running() -> None:
    """As docs/driver-runtime.md says, with the policy the agent builds from its options, on a
    clock that, like the agent's, is far from zero."""
    policy = BackoffPolicy(1.0, 300.0)
    start = 1_700_000_000.0
    first = next_failure(None, "Crashed", "", now=start, policy=policy)
    short = next_failure(
        first, "Crashed", "", now=start + 10.0 + 599.0, policy=policy, running_since=start + 10.0
    )
    assert short.attempts == 2
    stable = next_failure(
        first, "Crashed", "", now=start + 10.0 + 600.0, policy=policy, running_since=start + 10.0
    )
    assert stable.attempts == 1 and stable.retry_at == start + 10.0 + 600.0 + 1.0


def test_the_states_and_actions_are_values() -> None:
    """The reconciler keeps each driver's state, and the action in flight while another task
    runs it, beside the status writer that reads them: none can change under another."""
    d = desired()
    failure = next_failure(None, "Crashed", "", now=0.0, policy=POLICY)
    values: list[tuple[object, str]] = [
        (SOURCE, "path"),
        (d, "version"),
        (artifact_for(d), "sha256"),
        (Refusal(d.fetch_key, "ChecksumMismatch", "wrong sha"), "reason"),
        (host_for(d), "sha256"),
        (failure, "retry_at"),
        (POLICY, "max_seconds"),
        (ready(d), "host"),
        (IDLE, "x"),
        (Wait(1.0), "until"),
        (Fetch(), "x"),
        (Start(frozenset({"d1"})), "devices"),
        (Bind(frozenset(), frozenset({"d1"})), "attach"),
        (Stop(StopReason.RELOAD), "reason"),
    ]
    for value, name in values:
        with pytest.raises(FrozenInstanceError):
            setattr(value, name, None)


# --- capacity --------------------------------------------------------------------------------


def test_admission_by_priority_then_name() -> None:
    drivers = [
        desired(name="c", priority=0),
        desired(name="a", priority=0),
        desired(name="z", priority=10),
        desired(name="b", priority=-5),
    ]
    assert admitted(drivers, 2) == {"z", "a"}
    assert admitted(drivers, 0) == frozenset()
    assert admitted(drivers, -1) == frozenset()
    assert admitted(drivers, 100) == {"a", "b", "c", "z"}


# --- property: no lost or doubled load under bursts of events --------------------------------

SHAS = ["a" * 64, "b" * 64]
VARIANTS = [
    desired(),
    desired(version="1.1.0"),
    desired(config='{"x":1}'),
    desired(devices=frozenset({"d1", "d2"})),
    desired(devices=frozenset()),
]


@dataclass
class World:
    """Performs the actions the state machine asks for, in any order, with injected failures.

    Like the agent's reconcile loop it asks for the next action whenever told to step, even while
    actions are in flight; each action works with the desired state it started from."""

    state: DriverState = field(default_factory=lambda: DriverState("loop-info"))
    file_sha: str | None = SHAS[0]
    present: frozenset[str] = frozenset({"d1", "d2"})
    now: float = 0.0
    in_flight: list[tuple[object, Desired | None]] = field(default_factory=list)
    processes: int = 0  # live hosts of this driver

    def sync(self) -> None:
        self.state = replace(self.state, file_sha=self.file_sha)

    def step(self) -> None:
        self.sync()
        action = next_action(self.state, self.present, self.now)
        if not isinstance(action, type(IDLE) | Wait):
            self.in_flight.append((action, self.state.desired))
            self.state = replace(self.state, busy=True)

    def complete(self, ok: bool, index: int = 0) -> None:
        if not self.in_flight:
            return
        action, d = self.in_flight.pop(index % len(self.in_flight))
        state = replace(self.state, busy=bool(self.in_flight))
        if isinstance(action, Fetch):
            assert d is not None
            if self.file_sha is None:
                state = replace(state, artifact=Refusal(d.fetch_key, "SourceNotFound", "", None))
            elif ok:
                state = replace(state, artifact=Artifact(d.fetch_key, self.file_sha, "C"))
            else:
                state = replace(
                    state, artifact=Refusal(d.fetch_key, "DownloadFailed", "", self.file_sha, self.now + 30)
                )
        elif isinstance(action, Start):
            assert d is not None and isinstance(state.artifact, Artifact)
            if ok:
                self.processes += 1
                attached = action.devices & self.present
                sha = state.artifact.sha256
                state = replace(state, host=Host(1, d.driver_name, d.version, sha, d.config_json, attached))
            else:
                failure = next_failure(state.failure, "StartFailed", "", now=self.now, policy=POLICY)
                state = replace(state, failure=failure)
        elif isinstance(action, Bind):
            if state.host is not None:
                attached = (state.host.attached - action.detach) | (
                    action.attach & self.present if ok else frozenset()
                )
                retry = {} if ok else {dev: self.now + 5 for dev in action.attach}
                state = replace(state, host=replace(state.host, attached=attached), attach_retry=retry)
        elif isinstance(action, Stop):
            if state.host is not None:
                self.processes -= 1
            state = forget_host(state)
        self.state = state

    def crash(self) -> None:
        if self.state.host is not None and not any(isinstance(a, Stop) for a, _ in self.in_flight):
            self.processes -= 1
            failure = next_failure(self.state.failure, "Crashed", "", now=self.now, policy=POLICY)
            self.state = replace(forget_host(self.state), failure=failure)

    def settle(self) -> None:
        """No more outside events: let everything finish successfully, moving time to deadlines."""
        for _ in range(100):
            self.sync()
            if self.in_flight:
                self.complete(True)
                continue
            action = next_action(self.state, self.present, self.now)
            if isinstance(action, Wait):
                self.now = action.until
            elif action == IDLE:
                return
            else:
                self.step()
        raise AssertionError(f"did not settle: {self.state}")

    def check(self) -> None:
        assert self.processes in (0, 1), "two hosts for one driver"
        assert (self.processes == 1) == (self.state.host is not None)

    def check_converged(self) -> None:
        d, host = self.state.desired, self.state.host
        if d is None or self.file_sha is None:
            assert host is None and self.processes == 0, "a driver runs that should not"
            return
        assert host is not None, "a desired driver was lost"
        assert host.sha256 == self.file_sha
        assert (host.version, host.config_json) == (d.version, d.config_json)
        assert host.attached == d.devices & self.present
        assert phase_of(self.state, self.present, self.now, None)[0] is Phase.LOADED


events = st.one_of(
    st.tuples(st.just("desire"), st.sampled_from([*VARIANTS, None])),
    st.tuples(st.just("file"), st.sampled_from([*SHAS, None])),
    st.tuples(st.just("devices"), st.sampled_from([frozenset(), frozenset({"d1"}), frozenset({"d1", "d2"})])),
    st.tuples(st.just("step"), st.none()),
    st.tuples(st.just("step"), st.none()),
    st.tuples(st.just("complete"), st.tuples(st.booleans(), st.integers(0, 3))),
    st.tuples(st.just("complete"), st.tuples(st.just(True), st.integers(0, 3))),
    st.tuples(st.just("crash"), st.none()),
    st.tuples(st.just("time"), st.floats(min_value=0, max_value=100)),
    st.tuples(st.just("settle"), st.none()),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(events, max_size=80))
def test_bursts_of_events_never_double_a_load_and_always_converge(script: list[tuple[str, Any]]) -> None:
    world = World()
    for kind, value in script:
        if kind == "desire":
            previous = world.state.desired
            world.state = replace(world.state, desired=value)
            if value != previous:
                world.state = replace(world.state, failure=None, attach_retry={})
        elif kind == "file":
            world.file_sha = value
        elif kind == "devices":
            world.present = value
        elif kind == "step":
            world.step()
        elif kind == "complete":
            world.complete(*value)
        elif kind == "crash":
            world.crash()
        elif kind == "settle":
            world.settle()
            world.check_converged()
        else:
            world.now += value
        world.check()
    world.settle()
    world.check()
    world.check_converged()


def test_never_sentinel_is_infinite() -> None:
    assert NEVER > 10**12


# --- what the node reports: phase and message --------------------------------------------------


def _phase_cases() -> list[tuple[str, DriverState, Any, float, tuple[Phase, str]]]:
    d = desired()
    attached = host_for(d, attached=frozenset({"d1"}))
    unattached = host_for(d)
    failure = next_failure(None, "Crashed", "exit 1", now=100.0, policy=POLICY)
    kept = Refusal(d.fetch_key, "ChecksumMismatch", "wrong sha", file_sha="b" * 64)
    gone = Refusal(d.fetch_key, "SourceNotFound", "gone", file_sha=None)
    return [
        (
            "a reload stops the old host first",
            ready(d, host=attached),
            Stop(StopReason.RELOAD),
            0,
            (Phase.LOADING, "reloading: stopping the previous host"),
        ),
        (
            "an unload names its cause",
            ready(d, host=attached),
            Stop(StopReason.SOURCE_REMOVED),
            0,
            (Phase.UNLOADING, "unloading (SourceRemoved)"),
        ),
        (
            "an unload for capacity is not a reload",
            ready(d, host=attached),
            Stop(StopReason.CAPACITY),
            0,
            (Phase.UNLOADING, "unloading (CapacityExceeded)"),
        ),
        (
            "removed from the spec, still running",
            DriverState("loop-info", host=attached),
            None,
            0,
            (Phase.UNLOADING, "no longer in the spec"),
        ),
        ("removed from the spec and stopped", DriverState("loop-info"), None, 0, (Phase.PENDING, "")),
        (
            "over capacity, still running",
            replace(ready(d, host=attached), admitted=False),
            None,
            0,
            (Phase.UNLOADING, "over maxLoadedDrivers; unloading"),
        ),
        (
            "over capacity, not running",
            replace(ready(d), admitted=False),
            None,
            0,
            (Phase.FAILED, "not loaded: the node runs maxLoadedDrivers drivers of higher priority"),
        ),
        (
            "fetching",
            DriverState("loop-info", desired=d),
            Fetch(),
            0,
            (Phase.LOADING, "fetching the driver file"),
        ),
        ("starting", ready(d), Start(frozenset({"d1"})), 0, (Phase.LOADING, "starting")),
        (
            "a refused new file keeps the verified host",
            DriverState("loop-info", desired=d, artifact=kept, file_sha="b" * 64, host=attached),
            None,
            0,
            (Phase.FAILED, "ChecksumMismatch; the previously verified version 1.0.0 keeps running"),
        ),
        (
            "a removed file is no version to keep",
            DriverState("loop-info", desired=d, artifact=gone, host=attached),
            None,
            0,
            (Phase.FAILED, "SourceNotFound"),
        ),
        ("a device to attach", ready(d, host=unattached), None, 0, (Phase.LOADED, "binding devices")),
        (
            "a device attaching now",
            ready(d, host=attached),
            Bind(frozenset({"d1"}), frozenset()),
            0,
            (Phase.LOADED, "binding devices"),
        ),
        (
            "a device that failed to attach waits for its retry",
            ready(d, host=unattached, attach_retry={"d1": 50.0}),
            None,
            10,
            (Phase.LOADED, "1 device(s) failed to attach; retrying"),
        ),
        (
            "its retry time has come",
            ready(d, host=unattached, attach_retry={"d1": 50.0}),
            None,
            50,
            (Phase.LOADED, "binding devices"),
        ),
        ("converged", ready(d, host=attached), None, 0, (Phase.LOADED, "")),
        (
            "a new version waits for the reload",
            ready(desired("2.0.0"), host=attached),
            None,
            0,
            (Phase.LOADING, "reload pending"),
        ),
        (
            "a crash waits out its backoff",
            ready(d, failure=failure),
            None,
            100.5,
            (Phase.FAILED, "Crashed; retrying after backoff (attempt 1)"),
        ),
        (
            "the backoff is over",
            ready(d, failure=failure),
            None,
            failure.retry_at,
            (Phase.PENDING, "waiting to load"),
        ),
        (
            "a device never tried is being bound, at any time",
            ready(d, host=unattached),
            None,
            1_700_000_000.0,
            (Phase.LOADED, "binding devices"),
        ),
        (
            "a device left to detach does not count as one that failed to attach",
            ready(
                desired(devices=frozenset({"d1", "d2"})),
                host=host_for(desired(devices=frozenset({"d1", "d2"})), attached=frozenset({"d1", "d9"})),
                attach_retry={"d2": 50.0},
            ),
            None,
            10.0,
            (Phase.LOADED, "1 device(s) failed to attach; retrying"),
        ),
        (
            "the backoff is long over",
            ready(d, failure=failure),
            None,
            failure.retry_at + 60.0,
            (Phase.PENDING, "waiting to load"),
        ),
    ]


@pytest.mark.parametrize(
    ("case", "state", "in_flight", "now", "expected"),
    _phase_cases(),
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_the_reported_phase_and_message(
    case: str, state: DriverState, in_flight: Any, now: float, expected: tuple[Phase, str]
) -> None:
    assert phase_of(state, PRESENT, now, in_flight) == expected
