"""What a driver's failure does to its record: the last error, the backoff, the Event, the log.
The same for an unload held back by a device in use (inuse.py): the record, the Event, the log.

Refusals (a source that cannot be used, capacity) are announced once per distinct cause; failed
loads and crashes each back off exponentially (statemachine.next_failure) before the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from storage_driver_api.logs import fields

from storage_driver_agent import metrics
from storage_driver_agent.drivers import inuse
from storage_driver_agent.drivers.hosts import describe_exit
from storage_driver_agent.drivers.inuse import Holders
from storage_driver_agent.drivers.runtime import EventSink, Record
from storage_driver_agent.drivers.statemachine import BackoffPolicy, forget_host, next_failure

log = logging.getLogger(__name__)

CRASHED_MESSAGE = "the driver host exited unexpectedly"


def refused(record: Record, events: EventSink, reason: str, message: str) -> None:
    """The driver cannot be loaded for a reason that retrying alone does not fix."""
    record.error(reason, message)
    if record.announced != (reason, message):
        record.announced = (reason, message)
        events.emit("LoadFailed", f"{record.state.name}: {reason}: {message}", warning=True)
        log.warning("driver not loaded", extra=fields(driver=record.state.name, reason=reason, error=message))


def load_failed(
    record: Record,
    events: EventSink,
    reason: str,
    message: str,
    *,
    now: float,
    policy: BackoffPolicy,
    pid: int | None = None,
) -> None:
    """A start that failed: report it and back off before the next attempt."""
    failure = next_failure(record.state.failure, reason, message, now=now, policy=policy)
    record.state = replace(record.state, failure=failure)
    record.error(reason, message)
    events.emit("LoadFailed", f"{record.state.name}: {reason}: {message}", warning=True)
    log.warning(
        "driver failed to load",
        extra=fields(driver=record.state.name, reason=reason, error=message, pid=pid),
    )


def crashed(record: Record, *, now: float, policy: BackoffPolicy) -> None:
    """The host is gone without being asked to (or killed because it hung): forget it and back
    off before restarting."""
    reason, message = record.killed_for or ("Crashed", CRASHED_MESSAGE)
    metrics.CRASHES.labels(record.state.name, reason).inc()
    record.crashed = True
    record.state = replace(
        forget_host(record.state),
        failure=next_failure(
            record.state.failure,
            reason,
            message,
            now=now,
            policy=policy,
            running_since=record.started_mono,
        ),
    )
    record.facts = {}
    record.error(reason, message)


def report_crash(record: Record, events: EventSink, pid: int, code: int | None, *, now: float) -> None:
    """Say how the host ended (once its exit status is known) and when it restarts."""
    failure = record.state.failure
    reason, message = "Crashed", describe_exit(code)
    if record.killed_for is not None:
        reason, message = record.killed_for[0], f"{record.killed_for[1]}; the agent killed the driver host"
    if failure is not None:
        wait = max(0.0, failure.retry_at - now)
        message += f"; restarting in {wait:.0f}s (restart {record.restarts + 1})"
    record.error(reason, message)
    events.emit(reason, f"{record.state.name}: {message}", warning=True)
    log.warning(
        "driver host crashed" if record.killed_for is None else "hung driver host killed",
        extra=fields(driver=record.state.name, pid=pid, code=code, restarts=record.restarts, reason=reason),
    )
    record.killed_for = None


def health_changed(record: Record, unhealthy: str | None) -> bool:
    """Record the outcome of a health check; True if it changed."""
    if unhealthy == record.unhealthy:
        return False
    record.unhealthy = unhealthy
    if unhealthy:
        record.error("Unhealthy", unhealthy)
        log.warning("driver unhealthy", extra=fields(driver=record.state.name, error=unhealthy))
    else:
        log.info("driver healthy again", extra=fields(driver=record.state.name))
    return True


def blocked_changed(
    record: Record, events: EventSink, blocked: Mapping[str, Holders], *, unloading: bool
) -> bool:
    """Record which devices in use an unload (or a detach) waits for; an Event when that starts
    or what holds them changes. True if anything changed."""
    if dict(blocked) == dict(record.blocked):
        return False
    record.blocked = dict(blocked)
    name = record.state.name
    if not blocked:
        log.info("devices free again: detaching", extra=fields(driver=name))
        return True
    what = "unload" if unloading else "detach"
    message = (
        f"{name}: {what} blocked: {inuse.describe(blocked)} in use; retrying until free "
        "(unloadPolicy.force detaches anyway)"
    )
    events.emit("UnloadBlocked", message, warning=True)
    log.warning("detach blocked: device in use", extra=fields(driver=name, devices=dict(blocked)))
    return True


def forced(record: Record, events: EventSink, busy: Mapping[str, Holders]) -> None:
    """Devices in use that are detached anyway, as unloadPolicy.force asks."""
    name = record.state.name
    record.blocked = {}
    events.emit(
        "UnloadForced",
        f"{name}: detaching {inuse.describe(busy)} although in use (unloadPolicy.force)",
        warning=True,
    )
    log.warning("detaching devices in use (force)", extra=fields(driver=name, devices=dict(busy)))
