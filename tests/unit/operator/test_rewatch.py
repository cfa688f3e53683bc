"""When the operator's cache lists or watches again after a watch ended (cache.rewatch_delay)."""

from __future__ import annotations

import pytest
from storage_driver_operator.cache import MAX_BACKOFF_SECONDS, QUICK_END_SECONDS, rewatch_delay


def test_a_watch_the_server_ended_at_its_timeout_is_resumed_at_once() -> None:
    assert rewatch_delay(0, 300.0) == 0.0
    assert rewatch_delay(0, QUICK_END_SECONDS, jitter=1.2) == 0.0


def test_a_watch_that_ended_at_once_backs_off_so_a_server_closing_every_watch_is_not_looped_on() -> None:
    assert rewatch_delay(0, 0.0) == 0.5
    assert rewatch_delay(0, QUICK_END_SECONDS - 0.01) == 0.5


def test_failures_back_off_doubling_up_to_the_cap() -> None:
    assert [rewatch_delay(n, 0.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF_SECONDS]
    assert rewatch_delay(50, 0.0) == MAX_BACKOFF_SECONDS
    # A failure after a long watch is still a failure.
    assert rewatch_delay(1, 300.0) == 1.0


@pytest.mark.parametrize("jitter", [0.8, 1.2])
def test_jitter_scales_the_backoff(jitter: float) -> None:
    assert rewatch_delay(2, 0.0, jitter) == pytest.approx(2.0 * jitter)
