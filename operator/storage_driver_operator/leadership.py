"""Leader election decisions (pure): acquire, renew or wait, from one coordination.k8s.io Lease.

As client-go's leaderelection does, expiry is judged by the local clock since this replica last
saw the Lease change, never by comparing another machine's renewTime with ours. The leader's
own deadline starts when it *sent* its last successful renewal and is shorter than the Lease
duration, so a leader that cannot renew (partitioned, paused) stops writing before any other
replica may take over: `renew_deadline < duration` is the whole safety argument.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Timing:
    duration: float = 15.0  # a follower takes over after the Lease went unchanged this long
    renew_deadline: float = 10.0  # a leader that has not renewed for this long stops
    retry: float = 2.0  # between attempts

    def check(self) -> None:
        if not 0 < self.retry < self.renew_deadline < self.duration:
            raise ValueError(
                "leader election needs --leader-retry < --leader-renew-deadline < --leader-lease-duration "
                f"(got {self.retry}, {self.renew_deadline}, {self.duration}): a leader must stop "
                "before its Lease can pass to another replica"
            )


@dataclass(frozen=True)
class Record:
    """What the Lease says, as far as the decision reads it."""

    holder: str
    duration: float
    transitions: int
    version: str  # metadata.resourceVersion: any change restarts a follower's expiry clock


def record_of(lease: Mapping[str, Any] | None) -> Record | None:
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    return Record(
        holder=str(spec.get("holderIdentity") or ""),
        duration=float(spec.get("leaseDurationSeconds") or 0),
        transitions=int(spec.get("leaseTransitions") or 0),
        version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
    )


Action = Literal["create", "renew", "take-over", "wait"]


def next_action(record: Record | None, me: str, observed_at: float, now: float) -> Action:
    """What this replica does with the Lease as it is.

    `observed_at` is when (local monotonic clock) this replica first saw the Lease's current
    version; another holder's Lease has expired once it stayed unchanged for its duration.
    """
    if record is None:
        return "create"
    if record.holder == me:
        return "renew"
    if not record.holder or now - observed_at >= record.duration:
        return "take-over"
    return "wait"


def _micro_time(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(
    record: Record | None, me: str, action: Action, timing: Timing, at: dt.datetime
) -> dict[str, Any]:
    """The Lease spec this replica writes for `action` (create, renew, take-over)."""
    now = _micro_time(at)
    spec: dict[str, Any] = {
        "holderIdentity": me,
        "leaseDurationSeconds": int(timing.duration),
        "renewTime": now,
    }
    if action == "renew" and record is not None:
        spec["leaseTransitions"] = record.transitions
    else:
        spec["acquireTime"] = now
        spec["leaseTransitions"] = (record.transitions + 1) if record is not None else 0
    return spec


def still_leading(last_renew_sent: float | None, now: float, timing: Timing) -> bool:
    """True while the leader's last successful renewal (timed from when it was sent) is younger
    than the renew deadline: past it, another replica may soon take over, so stop writing."""
    return last_renew_sent is not None and now - last_renew_sent < timing.renew_deadline
