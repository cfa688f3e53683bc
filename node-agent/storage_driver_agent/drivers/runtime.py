"""What the driver runtime is configured with, and what it knows about each driver.

`RuntimeSettings` comes from the agent's options (service.py); a `Record` per driver holds its
decision state (statemachine.py) plus what the agent knows beyond the decision: the connection
to its host, restarts, the last error, the facts its devices reported.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from storage_driver_agent.drivers.hostclient import HostConnection
from storage_driver_agent.drivers.liveness import LivenessPolicy
from storage_driver_agent.drivers.slots import HOSTS_DIR
from storage_driver_agent.drivers.statemachine import Action, BackoffPolicy, DriverState
from storage_driver_agent.drivers.status import LastError


@dataclass(frozen=True)
class RuntimeSettings:
    state_dir: Path
    driver_dir: Path
    boot_id: str = ""
    max_loaded_drivers: int = 100
    memory_limit: int = 0
    adoption_window: float = 300.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    load_timeout: float = 60.0
    terminate_timeout: float = 5.0
    health_interval: float = 30.0
    liveness: LivenessPolicy = field(default_factory=LivenessPolicy)
    in_use_recheck: float = 2.0  # seconds between checks of a device whose detach waits (inuse.py)
    python: str = sys.executable

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / HOSTS_DIR


class EventSink(Protocol):
    def emit(self, reason: str, message: str, *, warning: bool = False) -> None: ...


@dataclass
class Record:
    """One driver: its decision state plus what the agent knows beyond the decision."""

    state: DriverState
    in_flight: Action | None = None
    conn: HostConnection | None = None
    restarts: int = 0
    last_error: LastError | None = None
    unhealthy: str | None = None
    facts: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    grace: int = 5
    started_mono: float | None = None
    announced: tuple[str, str] | None = None  # the last refusal announced, so retries do not repeat it
    attach_attempts: dict[str, int] = field(default_factory=dict)
    crashed: bool = False  # the next start is a restart after a crash
    reaping: bool = False  # a crashed host's remains are being cleared: nothing starts meanwhile
    strikes: int = 0  # consecutive unhealthy health checks (liveness.judge)
    killed_for: tuple[str, str] | None = None  # (reason, message) when the agent killed a hung host
    # The last spec entry's unloadPolicy.force: it still counts once the entry is gone (an unload).
    force_unload: bool = False
    blocked: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # devices in use a detach waits for

    def error(self, reason: str, message: str) -> None:
        """Record the driver's last error, stamped now."""
        self.last_error = LastError(reason, message, dt.datetime.now(dt.UTC).replace(microsecond=0))
