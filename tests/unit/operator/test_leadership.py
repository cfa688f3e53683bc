"""Leader election decisions: who acquires, who waits, and when a leader must stop (fake time)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_driver_operator.leadership import (
    Record,
    Timing,
    lease_spec,
    next_action,
    record_of,
    still_leading,
)

TIMING = Timing(duration=15, renew_deadline=10, retry=2)
AT = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def held_by(holder: str, version: str = "1", transitions: int = 0) -> Record:
    return Record(holder=holder, duration=15, transitions=transitions, version=version)


def test_no_lease_is_created() -> None:
    assert next_action(None, "a", observed_at=0, now=0) == "create"


def test_the_holder_renews() -> None:
    assert next_action(held_by("a"), "a", observed_at=0, now=100) == "renew"


def test_another_holders_lease_is_waited_out_by_the_local_clock() -> None:
    # observed_at: when this replica first saw the current version, whatever renewTime says.
    assert next_action(held_by("b"), "a", observed_at=100, now=114.9) == "wait"
    assert next_action(held_by("b"), "a", observed_at=100, now=115) == "take-over"


def test_a_released_lease_is_taken_at_once() -> None:
    assert next_action(held_by(""), "a", observed_at=100, now=100) == "take-over"


def test_record_of_reads_the_lease() -> None:
    lease = {
        "metadata": {"resourceVersion": "42"},
        "spec": {"holderIdentity": "b", "leaseDurationSeconds": 15, "leaseTransitions": 3},
    }
    assert record_of(lease) == Record("b", 15.0, 3, "42")
    assert record_of(None) is None


def test_a_takeover_counts_a_transition_and_a_renewal_does_not() -> None:
    taken = lease_spec(held_by("b", transitions=3), "a", "take-over", TIMING, AT)
    assert taken["holderIdentity"] == "a" and taken["leaseTransitions"] == 4 and "acquireTime" in taken
    renewed = lease_spec(held_by("a", transitions=4), "a", "renew", TIMING, AT)
    assert renewed["leaseTransitions"] == 4 and "acquireTime" not in renewed
    assert renewed["renewTime"] == "2026-12-01T08:00:00.000000Z"
    assert lease_spec(None, "a", "create", TIMING, AT)["leaseTransitions"] == 0


def test_the_fence_closes_at_the_renew_deadline() -> None:
    assert still_leading(100, 109.9, TIMING)
    assert not still_leading(100, 110, TIMING)
    assert not still_leading(None, 0, TIMING)


@given(
    sent=st.floats(0, 1e6),
    seen_after=st.floats(0, 5),
    waited=st.floats(0, 100),
)
def test_a_leader_stops_before_any_follower_may_take_over(
    sent: float, seen_after: float, waited: float
) -> None:
    """The safety property: the follower first sees the renewal after it was sent; whenever it
    may take over, the leader's fence is already closed."""
    observed_at = sent + seen_after
    now = observed_at + waited
    if next_action(held_by("leader"), "follower", observed_at, now) == "take-over":
        assert not still_leading(sent, now, TIMING)


@pytest.mark.parametrize(
    "timing",
    [Timing(15, 15, 2), Timing(15, 20, 2), Timing(15, 10, 10), Timing(15, 10, 0)],
)
def test_timings_that_would_allow_two_leaders_are_refused(timing: Timing) -> None:
    with pytest.raises(ValueError, match="must stop before its Lease can pass"):
        timing.check()
    TIMING.check()
