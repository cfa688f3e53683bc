"""When the planner, which gathers bursts of changes, should plan (and so write)."""

from __future__ import annotations


def burst_delay(now: float, last_write: float | None, window: float) -> float:
    """Seconds to wait before writing a change. A change after a quiet spell is written at once:
    waiting would only delay it, since nothing else is coming. One that arrives within `window`
    of the previous write is part of a burst and waits out the rest of the window, so a burst
    of changes costs one more write, not one per change."""
    if last_write is None or window <= 0:
        return 0.0
    return max(0.0, last_write + window - now)
