"""When a writer that gathers bursts writes: at once after a quiet spell, else at the window's end."""

from __future__ import annotations

import pytest
from storage_driver_operator.pacing import burst_delay


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
