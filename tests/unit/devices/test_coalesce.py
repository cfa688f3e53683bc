"""Coalescing uevent bursts and backing off from a failing API server, on a fake clock."""

from __future__ import annotations

import random

import pytest
from storage_driver_agent.devices.coalesce import Backoff, Coalescer


def test_a_burst_becomes_one_reprobe_of_the_devices_it_named() -> None:
    coalescer = Coalescer(window=0.02, quiet=0.005)
    assert coalescer.take(100.0) is None
    coalescer.add("sdb", 100.000)
    coalescer.add("sdb1", 100.002)
    coalescer.add("sdb", 100.004)
    assert coalescer.due_at == pytest.approx(100.009)  # 5 ms after the last event
    assert coalescer.take(100.008) is None
    assert coalescer.take(100.009) == (["sdb", "sdb1"], False)
    assert coalescer.take(100.5) is None and coalescer.due_at is None


def test_a_lone_event_is_handled_after_the_quiet_gap() -> None:
    coalescer = Coalescer(window=0.02, quiet=0.005)
    coalescer.add("loop0", 1.0)
    assert coalescer.due_at == pytest.approx(1.005)
    assert coalescer.take(1.005) == (["loop0"], False)
    coalescer.add("loop1", 1.031)
    assert coalescer.due_at == pytest.approx(1.036)


def test_a_storm_that_never_pauses_is_handled_every_window() -> None:
    coalescer = Coalescer(window=0.02, quiet=0.005)
    now = 10.0
    batches = 0
    for _ in range(400):  # an event every millisecond for 0.4 s
        coalescer.add("loop0", now)
        if coalescer.take(now) is not None:
            batches += 1
        now += 0.001
    assert 18 <= batches <= 21


def test_a_window_shorter_than_the_quiet_gap_still_bounds_the_wait() -> None:
    coalescer = Coalescer(window=0.002, quiet=0.005)
    coalescer.add("loop0", 1.0)
    assert coalescer.due_at == pytest.approx(1.002)


def test_a_storm_over_many_devices_or_lost_events_asks_for_a_full_probe() -> None:
    coalescer = Coalescer(window=0.02, max_names=3)
    for index in range(10):
        coalescer.add(f"loop{index}", 5.0)
    names, full = coalescer.take(5.02) or ([], False)
    assert full and names == ["loop0", "loop1", "loop2"]
    coalescer.lost_events(6.0)
    assert coalescer.take(6.02) == ([], True)


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter_and_resets() -> None:
    backoff = Backoff(base=0.2, cap=10.0, jitter=0.2, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(12)]
    nominal = [min(10.0, 0.2 * 2**i) for i in range(12)]
    for delay, expected in zip(delays, nominal, strict=True):
        assert expected * 0.8 <= delay <= expected * 1.2
    assert max(delays) <= 12.0
    backoff.reset()
    assert 0.16 <= backoff.next_delay() <= 0.24
    for _ in range(5000):  # never overflows, however long the outage
        backoff.next_delay()
    assert backoff.next_delay() <= 12.0
