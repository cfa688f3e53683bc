"""kstatus's rules for a custom resource, as sigs.k8s.io/cli-utils computes them (and so Flux's
health checks, `kpt live status`, `kubectl` plugins built on it). No kstatus checker exists on
PyPI, so this follows the library's documented order for a kind it has no specific rules for:

1. `metadata.deletionTimestamp` set: Terminating.
2. `status.observedGeneration` present and not `metadata.generation`: InProgress
   (LatestGenerationNotObserved).
3. The first condition, in list order, that is `Reconciling=True` (InProgress) or
   `Stalled=True` (Failed) decides.
4. Otherwise: Current.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CURRENT, IN_PROGRESS, FAILED, TERMINATING = "Current", "InProgress", "Failed", "Terminating"


@dataclass(frozen=True)
class Result:
    status: str
    reason: str = ""
    message: str = ""


def compute(obj: dict[str, Any]) -> Result:
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return Result(TERMINATING, message="Resource scheduled for deletion")
    status = obj.get("status") or {}
    generation = meta.get("generation")
    if (
        generation is not None
        and "observedGeneration" in status
        and status["observedGeneration"] != generation
    ):
        return Result(
            IN_PROGRESS,
            "LatestGenerationNotObserved",
            f"{obj.get('kind')} generation is {generation}, but latest observed generation is "
            f"{status['observedGeneration']}",
        )
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return Result(IN_PROGRESS, condition.get("reason", ""), condition.get("message", ""))
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return Result(FAILED, condition.get("reason", ""), condition.get("message", ""))
    return Result(CURRENT, message="Resource is current")
