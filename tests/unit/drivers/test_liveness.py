"""When a loaded driver is restarted: a hung call at once, unhealthy after a run of checks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from storage_driver_agent.drivers.liveness import (
    HUNG,
    UNHEALTHY,
    Healthy,
    Hung,
    LivenessPolicy,
    Outcome,
    Unhealthy,
    judge,
)
from storage_driver_agent.drivers.statemachine import BackoffPolicy, next_failure

POLICY = LivenessPolicy(call_timeout=10, unhealthy_limit=3)


def test_a_hung_call_restarts_at_once_and_says_which_call() -> None:
    verdict = judge(Hung("attach(node-a-0123)", 10), 0, POLICY)
    assert (verdict.restart, verdict.reason) == (True, HUNG)
    assert verdict.message == "attach(node-a-0123) did not return within 10s"


def test_unhealthy_restarts_only_after_the_limit_in_a_row() -> None:
    strikes = 0
    for _ in range(2):
        verdict = judge(Unhealthy("disk gone"), strikes, POLICY)
        assert not verdict.restart
        strikes = verdict.strikes
    verdict = judge(Unhealthy("disk gone"), strikes, POLICY)
    assert (verdict.restart, verdict.reason, verdict.strikes) == (True, UNHEALTHY, 0)
    assert verdict.message == "unhealthy in 3 consecutive health checks: disk gone"


def test_a_healthy_answer_forgives_earlier_unhealthy_ones() -> None:
    strikes = judge(Unhealthy("x"), judge(Unhealthy("x"), 0, POLICY).strikes, POLICY).strikes
    assert strikes == 2
    assert judge(Healthy(), strikes, POLICY).strikes == 0
    assert not judge(Unhealthy("x"), 0, POLICY).restart


outcomes = st.one_of(
    st.just(Healthy()),
    st.builds(Unhealthy, st.text(max_size=5)),
    st.builds(Hung, st.just("health()"), st.floats(1, 60)),
)


@given(st.lists(outcomes, max_size=40), st.integers(1, 6))
def test_never_more_than_limit_unhealthy_checks_without_a_restart(seq: list[Outcome], limit: int) -> None:
    policy = LivenessPolicy(unhealthy_limit=limit)
    strikes, run = 0, 0
    for outcome in seq:
        verdict = judge(outcome, strikes, policy)
        run = run + 1 if isinstance(outcome, Unhealthy) else 0
        assert verdict.restart == (isinstance(outcome, Hung) or run == limit)
        if verdict.restart:
            run = 0
        strikes = verdict.strikes
        assert 0 <= strikes < limit


def test_restarts_of_a_driver_that_keeps_hanging_back_off() -> None:
    """Restarts go through the crash backoff: each delay doubles, up to the maximum."""
    backoff = BackoffPolicy(base_seconds=1, max_seconds=8, stable_seconds=600)
    failure, now, delays = None, 0.0, []
    for _ in range(6):
        failure = next_failure(failure, HUNG, "attach() hung", now=now, policy=backoff, running_since=now - 1)
        delays.append(failure.retry_at - now)
        now = failure.retry_at + 1
    assert delays == [1, 2, 4, 8, 8, 8]
