"""Where one driver's host keeps its files: socket, state file and log, in the hosts directory.

The state file is how a restarted agent finds the hosts to adopt (reconcile.py); the socket is
how it talks to one (hostclient.py). Both are removed once the host is gone.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from storage_driver_api.constants import short_hash

HOSTS_DIR: Final = "hosts"


@dataclass(frozen=True)
class HostSlot:
    """Where one driver's host keeps its socket, state file and log."""

    socket: Path
    state_file: Path
    log: Path

    @classmethod
    def for_driver(cls, hosts_dir: Path, name: str) -> HostSlot:
        # Unix socket paths are limited to 107 bytes: a short readable prefix plus a hash.
        slug = re.sub(r"[^a-z0-9-]", "-", name.lower())[:24].strip("-") or "driver"
        base = hosts_dir / f"{slug}-{short_hash(name, 10)}"
        return cls(base.with_suffix(".sock"), base.with_suffix(".json"), base.with_suffix(".log"))

    def remove_files(self) -> None:
        """Forget the host: its socket and state file (the log stays, for post-mortems)."""
        for path in (self.socket, self.state_file):
            with contextlib.suppress(OSError):
                path.unlink()


@dataclass(frozen=True)
class LeftHost:
    """A host a previous agent left, as its state file describes it."""

    pid: int
    slot: HostSlot
    info: Mapping[str, Any]


def left_hosts(hosts_dir: Path) -> Iterator[LeftHost | HostSlot]:
    """Every state file in the hosts directory: a LeftHost, or the slot of an unreadable one."""
    for state_file in sorted(hosts_dir.glob("*.json")):
        try:
            info = json.loads(state_file.read_text())
            pid, socket = int(info["pid"]), Path(str(info["socket"]))
        except (OSError, ValueError, KeyError, TypeError):
            yield HostSlot(state_file.with_suffix(".sock"), state_file, state_file.with_suffix(".log"))
            continue
        yield LeftHost(pid, HostSlot(socket, state_file, state_file.with_suffix(".log")), info)
