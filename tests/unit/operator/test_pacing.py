"""When a writer that gathers bursts writes: at once after a quiet spell, else at the window's end;
and how the planner paces plans that write nothing."""

from __future__ import annotations

import pytest
from storage_driver_operator.pacing import PLANNING_SHARE, Pacing, burst_delay


def test_the_first_change_is_written_at_once() -> None:
    assert burst_delay(100.0, None, 0.05) == 0.0


def test_a_change_after_a_quiet_spell_is_written_at_once() -> None:
    assert burst_delay(100.0, 99.9, 0.05) == 0.0
    assert burst_delay(100.05, 100.0, 0.05) == 0.0  # the window just ended


def test_a_change_within_the_window_waits_for_the_rest_of_it() -> None:
    assert burst_delay(100.01, 100.0, 0.05) == pytest.approx(0.04)
    assert burst_delay(100.049, 100.0, 0.05) == pytest.approx(0.001)


def test_no_window_never_waits() -> None:
    assert burst_delay(100.0, 100.0, 0.0) == 0.0


def test_after_a_plan_that_wrote_the_next_change_waits_out_the_window() -> None:
    pacing = Pacing(window=0.05)
    pacing.planned(started=100.0, ended=100.001, planning=0.001, wrote=True)
    assert pacing.delay(100.01) == pytest.approx(0.04)
    assert pacing.delay(100.05) == 0.0


def test_a_plan_that_wrote_nothing_does_not_hold_back_the_next_change() -> None:
    """A status report planned just before an unplug: the unplug is planned at once, not at the
    end of a burst window that no write opened."""
    pacing = Pacing(window=0.05)
    pacing.planned(started=100.0, ended=100.0002, planning=0.0002, wrote=False)
    assert pacing.delay(100.002) == 0.0


def test_plans_that_write_nothing_rest_so_that_planning_keeps_within_its_share() -> None:
    """Thousands of agents reporting: each plan of 5 ms rests 20 ms, so planning is at most a
    fifth of the operator's time however fast the reports come."""
    pacing = Pacing(window=0.05)
    pacing.planned(started=100.0, ended=100.005, planning=0.005, wrote=False)
    rest = pacing.delay(100.005)
    assert rest == pytest.approx(0.005 * (1 / PLANNING_SHARE - 1))
    assert 0.005 / (0.005 + rest) == pytest.approx(PLANNING_SHARE)
    assert pacing.delay(100.005 + rest) == 0.0


def test_the_writes_of_a_plan_do_not_count_as_its_planning() -> None:
    """Specs written for 3 s after 5 ms of planning: the next plan rests four times the 5 ms, not
    the whole window as if the writes had been planning (the burst's window started 3 s ago)."""
    pacing = Pacing(window=0.05)
    pacing.planned(started=100.0, ended=103.0, planning=0.005, wrote=True)
    assert pacing.delay(103.0) == pytest.approx(0.02)


def test_a_write_stays_the_burst_anchor_through_later_plans_that_wrote_nothing() -> None:
    pacing = Pacing(window=0.05)
    pacing.planned(started=100.0, ended=100.001, planning=0.001, wrote=True)
    pacing.planned(started=100.01, ended=100.0101, planning=0.0001, wrote=False)
    assert pacing.delay(100.02) == pytest.approx(0.03)


def test_a_long_plan_rests_no_longer_than_the_window() -> None:
    """A plan of 5,000 nodes that took a second: the next change waits the window, not 4 s."""
    pacing = Pacing(window=0.05)
    pacing.planned(started=100.0, ended=101.0, planning=1.0, wrote=False)
    assert pacing.delay(101.0) == pytest.approx(0.05)
