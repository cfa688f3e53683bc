"""When a loaded driver must be restarted: it hangs in a call, or keeps reporting unhealthy.

Pure: the reconcile loop times every attach(), detach() and health() call and hands the outcome
here; a restart kills the host and goes through the same exponential backoff as a crash
(statemachine.next_failure), so a driver that hangs every time is retried ever more slowly.

A host serves one call at a time, so a call that does not return within the timeout leaves
the host unable to serve anything else, health() included: it is restarted at once. A driver
that answers but says it is unhealthy is given `unhealthy_limit` consecutive checks to recover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

HUNG: Final = "Hung"
UNHEALTHY: Final = "Unhealthy"


@dataclass(frozen=True)
class LivenessPolicy:
    call_timeout: float = 30.0  # seconds attach(), detach() and health() may take
    unhealthy_limit: int = 3  # consecutive unhealthy health checks before a restart


@dataclass(frozen=True)
class Healthy:
    pass


@dataclass(frozen=True)
class Unhealthy:
    message: str


@dataclass(frozen=True)
class Hung:
    call: str  # e.g. "attach(node-a-0123)", "health()"
    seconds: float

    @property
    def message(self) -> str:
        return f"{self.call} did not return within {self.seconds:.0f}s"


Outcome = Healthy | Unhealthy | Hung


@dataclass(frozen=True)
class Verdict:
    strikes: int  # consecutive unhealthy checks so far
    restart: bool = False
    reason: str = ""
    message: str = ""


def judge(outcome: Outcome, strikes: int, policy: LivenessPolicy) -> Verdict:
    """What one timed call's outcome means, given the unhealthy checks before it."""
    if isinstance(outcome, Hung):
        return Verdict(0, True, HUNG, outcome.message)
    if isinstance(outcome, Healthy):
        return Verdict(0)
    strikes += 1
    if strikes >= max(policy.unhealthy_limit, 1):
        return Verdict(
            0, True, UNHEALTHY, f"unhealthy in {strikes} consecutive health checks: {outcome.message}"
        )
    return Verdict(strikes)
