"""Watching the driver directory with watchdog, debounced so that file writes can finish.

watchdog delivers filesystem events on its own thread; they are handed to the event loop, which
waits until the directory has been quiet for the debounce interval (500 ms by default), but never
longer than `max_delay` after the first event, and then calls `on_change` once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from storage_driver_api.logs import fields
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


def debounce_deadline(first: float, last: float, debounce: float, max_delay: float) -> float:
    """When to act on a burst of events that began at `first` and most recently saw one at `last`."""
    return min(last + debounce, first + max_delay)


def _relevant(event: FileSystemEvent) -> bool:
    # Opening or reading a file changes nothing a scan sees; the agent's own temporary files
    # (hidden names) matter only once renamed into place, which is a move to a visible name.
    if event.event_type in ("opened", "closed_no_write"):
        return False
    names = [str(event.src_path)] + ([str(event.dest_path)] if getattr(event, "dest_path", "") else [])
    return any(not Path(name).name.startswith(".") for name in names)


class _Handler(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, poke: Callable[[], None]):
        self.loop = loop
        self.poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        if _relevant(event):
            self.loop.call_soon_threadsafe(self.poke)


class DirectoryWatcher:
    def __init__(
        self,
        root: Path,
        on_change: Callable[[], Awaitable[None]],
        *,
        debounce: float = 0.5,
        max_delay: float = 5.0,
    ):
        self.root = root
        self.on_change = on_change
        self.debounce = debounce
        self.max_delay = max_delay
        self._event = asyncio.Event()
        self._first: float | None = None
        self._last = 0.0

    def _poke(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._first is None:
            self._first = now
        self._last = now
        self._event.set()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        observer = Observer()
        observer.schedule(_Handler(loop, self._poke), str(self.root), recursive=True)
        observer.daemon = True
        observer.start()
        log.debug("watching the driver directory", extra=fields(directory=str(self.root)))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                waiter = asyncio.ensure_future(self._event.wait())
                await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if stop.is_set():
                    return
                # Debounce: wait until quiet (or the maximum delay), extending on new events.
                while self._first is not None:
                    self._event.clear()
                    deadline = debounce_deadline(self._first, self._last, self.debounce, self.max_delay)
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._event.wait(), remaining)
                self._first = None
                self._event.clear()
                try:
                    await self.on_change()
                except Exception:
                    log.exception("rescanning the driver directory failed")
        finally:
            stopping.cancel()
            observer.stop()
            await asyncio.to_thread(observer.join, 5)
