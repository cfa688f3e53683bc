"""Attaching and detaching a loaded driver's devices as they come and go (the Bind action).

A device whose attach fails is retried after an exponential backoff of its own; a detach that
fails still releases the device as far as the agent is concerned (the driver was told).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from storage_driver_api.logs import fields
from storage_driver_sdk.protocol import Op

from storage_driver_agent.drivers.hostclient import HostCallError, HostGone
from storage_driver_agent.drivers.liveness import Hung
from storage_driver_agent.drivers.runtime import Record
from storage_driver_agent.drivers.statemachine import BackoffPolicy, Bind

log = logging.getLogger(__name__)


def device_message(devices: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, Any]:
    """A NodeDevice as the host protocol sends it."""
    return {"name": name, "spec": dict(devices[name])}


def attach_failed(record: Record, failed: Mapping[str, Any], now: float, policy: BackoffPolicy) -> None:
    """Schedule the retry of every device whose attach failed, and record the error."""
    if not failed:
        return
    retry = dict(record.state.attach_retry)
    for name, error in failed.items():
        attempts = record.attach_attempts.get(name, 0) + 1
        record.attach_attempts[name] = attempts
        retry[name] = now + min(policy.base_seconds * 2 ** min(attempts - 1, 32), policy.max_seconds)
        detail = error.get("message", error) if isinstance(error, Mapping) else error
        record.error("AttachFailed", f"attach {name}: {detail}")
        log.warning(
            "device attach failed", extra=fields(driver=record.state.name, device=name, error=str(detail))
        )
    record.state = replace(record.state, attach_retry=retry)


async def bind(
    record: Record,
    action: Bind,
    devices: Mapping[str, Mapping[str, Any]],
    clock: Callable[[], float],
    policy: BackoffPolicy,
    *,
    timeout: float,
) -> Hung | None:
    """Detach, then attach, what the action says; the record's host lists what is attached after.
    Each call may take `timeout` seconds; the call that took longer is returned (the host hangs)."""
    host, conn = record.state.host, record.conn
    if host is None or conn is None:
        return None
    attached = set(host.attached)
    failed: dict[str, Any] = {}
    call = ""
    try:
        for name in sorted(action.detach):
            call = f"detach({name})"
            try:
                await conn.call(Op.DETACH, {"name": name}, timeout=timeout)
            except HostCallError as exc:
                record.error("DetachFailed", f"detach {name}: {exc}")
                log.warning(
                    "device detach failed",
                    extra=fields(driver=record.state.name, device=name, error=str(exc)),
                )
            attached.discard(name)
            record.facts.pop(name, None)
            log.info("device detached", extra=fields(driver=record.state.name, device=name))
        for name in sorted(action.attach):
            if name not in devices:
                continue
            call = f"attach({name})"
            try:
                result = await conn.call(
                    Op.ATTACH, {"device": device_message(devices, name)}, timeout=timeout
                )
            except HostCallError as exc:
                failed[name] = {"message": str(exc)}
                continue
            attached.add(name)
            record.attach_attempts.pop(name, None)
            facts = result.get("facts")
            record.facts[name] = facts if isinstance(facts, Mapping) else {}
            log.info("device attached", extra=fields(driver=record.state.name, device=name))
    except HostGone:
        return None  # the host died: _host_closed deals with it
    except TimeoutError:
        return Hung(call, timeout)
    finally:
        current = record.state.host
        if current is not None and current.pid == host.pid:
            retry = {k: v for k, v in record.state.attach_retry.items() if k not in attached}
            record.state = replace(
                record.state, host=replace(current, attached=frozenset(attached)), attach_retry=retry
            )
    attach_failed(record, failed, clock(), policy)
    return None
