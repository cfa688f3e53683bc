"""Timing decisions of the agent's device loop, on injected clocks (pure).

`Coalescer` gathers uevents so that a burst (a disk and its partitions appearing, a storm of
`change` events) becomes one re-probe of the devices involved: it closes when the events pause
for `quiet` (a lone event is handled after a few milliseconds), and at the latest `window` after
the burst's first event (a storm that never pauses is still handled every window). `Backoff`
spaces out retries while the API server cannot be reached.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Coalescer:
    """Kernel names seen since the first event of the current window."""

    window: float  # seconds from the first event of a burst to its re-probe, at most
    quiet: float = 0.005  # seconds without a new event that end a burst early
    max_names: int = 64  # more devices than this in one window: re-probe everything instead
    _names: dict[str, None] = field(default_factory=dict)
    _opened_at: float | None = None
    _last_at: float = 0.0
    _overflow: bool = False

    def add(self, name: str, now: float) -> None:
        if self._opened_at is None:
            self._opened_at = now
        self._last_at = now
        if len(self._names) >= self.max_names:
            self._overflow = True
        else:
            self._names[name] = None

    def lost_events(self, now: float) -> None:
        """The kernel dropped events (receive buffer overrun): only a full probe is safe."""
        if self._opened_at is None:
            self._opened_at = now
        self._last_at = now
        self._overflow = True

    @property
    def due_at(self) -> float | None:
        if self._opened_at is None:
            return None
        return min(self._opened_at + self.window, self._last_at + min(self.quiet, self.window))

    def take(self, now: float) -> tuple[list[str], bool] | None:
        """(names, full) when the window has closed, else None; `full` asks for a full probe."""
        due = self.due_at
        if due is None or now < due:
            return None
        names, full = list(self._names), self._overflow
        self._names, self._opened_at, self._overflow = {}, None, False
        return names, full


@dataclass
class Backoff:
    """Exponential backoff with jitter: base, 2*base, ... up to cap; reset after a success."""

    base: float = 0.2
    cap: float = 10.0
    jitter: float = 0.2  # +- this fraction, so that many agents do not retry in lockstep
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2 ** min(self.failures, 32))
        self.failures += 1
        return float(delay * (1 + self.rng.uniform(-self.jitter, self.jitter)))

    def reset(self) -> None:
        self.failures = 0
