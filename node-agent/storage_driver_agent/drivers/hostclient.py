"""The agent's side of the driver host protocol: one connection per host, requests by id.

The connection ends when the host exits (the kernel closes its socket), which is how the agent
learns of a crash at once, for hosts it started and for hosts it adopted alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from storage_driver_sdk.protocol import (
    MAX_MESSAGE_BYTES,
    ErrorInfo,
    Op,
    ProtocolError,
    Request,
    decode_response,
)

# A new host binds its socket some 100-300 ms after it is spawned; retrying every few ms costs
# nothing and saves up to a retry interval on every load.
CONNECT_RETRY_MAX: Final = 0.01
# While retrying, whether the host still lives is asked this often (it ends the wait for a
# host that died while starting).
ALIVE_CHECK_INTERVAL: Final = 0.05


class HostGone(Exception):
    """The host closed the connection (it exited, or was killed)."""


class HostCallError(Exception):
    """The host answered with an error (the driver raised, or the request was invalid)."""

    def __init__(self, error: ErrorInfo):
        super().__init__(f"{error.type}: {error.message}")
        self.error = error


class HostConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, socket_path: Path):
        self.socket_path = socket_path
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Mapping[str, Any]]] = {}
        self._closed = asyncio.Event()
        self._closing = False
        self._on_close: list[Callable[[HostConnection], None]] = []
        self._task = asyncio.create_task(self._read(), name=f"host-connection {socket_path.name}")

    @classmethod
    async def connect(
        cls, socket_path: Path, *, timeout: float = 10.0, alive: Callable[[], Awaitable[bool]] | None = None
    ) -> HostConnection:
        """Connect, retrying briefly while a host just started binds its socket. `alive`, if given,
        ends the wait early when the host process is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.002
        checked = loop.time()
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=MAX_MESSAGE_BYTES)
                return cls(reader, writer, socket_path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                now = loop.time()
                gone = now > deadline
                if not gone and alive is not None and now - checked >= ALIVE_CHECK_INTERVAL:
                    # Asked seldom: through the supervisor each answer is a round trip that
                    # takes CPU from the host that is starting.
                    checked = now
                    gone = not await alive()
                if gone:
                    raise HostGone(f"cannot connect to {socket_path}: {exc.strerror or exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONNECT_RETRY_MAX)

    def on_close(self, callback: Callable[[HostConnection], None]) -> None:
        if self._closed.is_set():
            callback(self)
        else:
            self._on_close.append(callback)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self, timeout: float | None = None) -> bool:
        """True when the connection closed within the timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), timeout)
        return self._closed.is_set()

    async def _read(self) -> None:
        try:
            while line := await self._reader.readline():
                try:
                    response = decode_response(line)
                except ProtocolError:
                    continue
                future = self._pending.pop(response.id, None)
                if future is None or future.done():
                    continue
                if response.ok:
                    future.set_result(response.result)
                else:
                    assert response.error is not None
                    future.set_exception(HostCallError(response.error))
        except (OSError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            self._closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(HostGone("the driver host closed the connection"))
            self._pending.clear()
            self._writer.close()
            if not self._closing:
                for callback in self._on_close:
                    callback(self)

    async def call(
        self, op: Op, args: Mapping[str, Any] | None = None, *, timeout: float | None = 30.0
    ) -> Mapping[str, Any]:
        if self._closed.is_set():
            raise HostGone("the driver host closed the connection")
        request = Request(next(self._ids), op, dict(args or {}))
        future: asyncio.Future[Mapping[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = future
        try:
            self._writer.write(request.encode())
            await self._writer.drain()
        except OSError as exc:
            self._pending.pop(request.id, None)
            raise HostGone(f"cannot write to the driver host: {exc}") from exc
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self._pending.pop(request.id, None)
            raise

    async def close(self) -> None:
        """Close our end; the host keeps running and waits for an agent to connect again."""
        self._closing = True
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
