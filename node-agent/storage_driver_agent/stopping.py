"""Waiting that ends early when the agent is asked to stop."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_or_stop(event: asyncio.Event, stop: asyncio.Event, timeout: float | None = None) -> bool:
    """Wait for `event`, `stop` or the timeout; True when `event` is set and `stop` is not."""
    waiter = asyncio.ensure_future(event.wait())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        stopper.cancel()
    return event.is_set() and not stop.is_set()


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
