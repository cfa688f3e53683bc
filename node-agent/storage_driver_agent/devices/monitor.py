"""Kernel (or udev) uevents for block and NVMe devices, delivered on the asyncio loop.

The netlink socket is read from the event loop itself (`add_reader`): no thread, and an event
reaches the coalescer as soon as the loop is free. A receive-buffer overrun (ENOBUFS: the
kernel dropped events during a storm) is reported, so the agent re-probes everything.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from pathlib import Path

import pyudev
from storage_driver_api.logs import fields

log = logging.getLogger(__name__)

SUBSYSTEMS = ("block", "nvme")
RECEIVE_BUFFER = 8 * 1024 * 1024


def pick_source(requested: str, host_root: Path) -> str:
    """'udev' when asked, or when asked for 'auto' and udevd runs on the host; else 'kernel'."""
    if requested != "auto":
        return requested
    return "udev" if (host_root / "run/udev/control").exists() else "kernel"


class UeventMonitor:
    def __init__(
        self,
        source: str,
        on_event: Callable[[str, str], None],
        on_lost_events: Callable[[], None],
    ):
        self.source = source
        self._on_event = on_event
        self._on_lost_events = on_lost_events
        self._monitor: pyudev.Monitor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the netlink socket; OSError when the host does not let us (no CAP_NET_ADMIN...)."""
        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=self.source)
        for subsystem in SUBSYSTEMS:
            monitor.filter_by(subsystem)
        try:
            monitor.set_receive_buffer_size(RECEIVE_BUFFER)
        except OSError as exc:  # needs CAP_NET_ADMIN beyond net.core.rmem_max; smaller still works
            log.debug("kept the default uevent receive buffer", extra=fields(error=str(exc)))
        monitor.start()
        loop.add_reader(monitor.fileno(), self._drain)
        self._monitor, self._loop = monitor, loop

    def close(self) -> None:
        if self._monitor is not None and self._loop is not None:
            self._loop.remove_reader(self._monitor.fileno())
        self._monitor = None

    def _drain(self) -> None:
        monitor = self._monitor
        if monitor is None:
            return
        while True:
            try:
                device = monitor.poll(timeout=0)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.warning("uevents were lost (receive buffer overrun); re-probing every device")
                    self._on_lost_events()
                    continue
                log.warning("cannot read a uevent", extra=fields(error=str(exc)))
                return
            if device is None:
                return
            self._on_event(str(device.action), str(device.sys_name))
