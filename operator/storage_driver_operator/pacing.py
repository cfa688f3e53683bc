"""When the planner, which gathers bursts of changes, should plan (and so write)."""

from __future__ import annotations

from dataclasses import dataclass

# Under a stream of changes that write nothing (agents reporting status), planning may take at
# most this share of the operator's time: after a plan that took d seconds it rests 4 d (at most
# the burst window, so that no change waits longer than it did behind the window alone).
PLANNING_SHARE = 0.2


def burst_delay(now: float, last_write: float | None, window: float) -> float:
    """Seconds to wait before writing a change. A change after a quiet spell is written at once:
    waiting would only delay it, since nothing else is coming. One that arrives within `window`
    of the previous write is part of a burst and waits out the rest of the window, so a burst
    of changes costs one more write, not one per change."""
    if last_write is None or window <= 0:
        return 0.0
    return max(0.0, last_write + window - now)


@dataclass
class Pacing:
    """The planner's memory of its last plans: when one last wrote, and when the last one ended
    and how long its planning took (its writes left out: they wait for the API server, not for
    the operator's time)."""

    window: float
    wrote_at: float | None = None
    ended_at: float | None = None
    took: float = 0.0

    def delay(self, now: float) -> float:
        """Seconds to wait before the next plan: the rest of a burst's window after a plan that
        wrote (burst_delay), and otherwise only the rest that keeps planning within its share of
        the time. A plan that wrote nothing (a status report that changed no spec) so delays the
        next change by a few times its own duration, not by the window: the change that follows
        is written at once, which is what a device unplugged just after a load needs."""
        rest = 0.0
        if self.ended_at is not None:
            rest = self.ended_at + min(self.took * (1 / PLANNING_SHARE - 1), self.window) - now
        return max(burst_delay(now, self.wrote_at, self.window), rest, 0.0)

    def planned(self, started: float, ended: float, planning: float, wrote: bool) -> None:
        if wrote:
            self.wrote_at = started
        self.ended_at, self.took = ended, planning
