"""Waiting for eventual state in tests: poll until a condition holds or a deadline passes.

Deadlines here are generous upper bounds for correctness ("it happens"), not performance
targets; speed is measured by `make bench`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Await probe() until it returns a truthy value; fail with the last value or error seen."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = await probe()
            if result:
                return result
            last = result
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


async def consistently(
    probe: Callable[[], Awaitable[bool]], *, duration: float, interval: float = 0.2, what: str = "condition"
) -> None:
    """Assert probe() stays true for the whole duration."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert await probe(), f"{what} stopped holding"
        await asyncio.sleep(interval)
