"""Operator replicas as real processes, electing a leader by the Lease as the chart runs them with
operator.replicas >= 2 (timings shortened so that tests and benchmarks wait seconds, not minutes)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness.processes import ComponentProcess, console_script

LEASE_DURATION = 6.0
RENEW_DEADLINE = 4.0
RETRY = 1.0
BECAME_LEADER = "became the leader"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    identity: str
    process: ComponentProcess

    @property
    def leading(self) -> bool:
        return BECAME_LEADER in self.process.log(100_000)

    def log_since(self, offset: int) -> str:
        return self.process.log_path.read_text(errors="replace")[offset:]

    def log_size(self) -> int:
        return len(self.process.log_path.read_text(errors="replace")) if self.process.log_path.exists() else 0

    def ready_writes(self) -> int | None:
        """spec_writes of the controller's `ready` line (its first plan), once it logged one."""
        match = re.search(r"\bready\b.*?spec_writes=(\d+)", self.process.log(100_000))
        return int(match.group(1)) if match else None


def start_replica(
    identity: str,
    kubeconfig: Path,
    namespace: str,
    directory: Path,
    *,
    log_level: str = "INFO",
    extra_args: Sequence[str] = (),
) -> Replica:
    """DEBUG logs every write (`status written` too), for tests that assert a replica wrote nothing."""
    argv = [
        console_script("storage-operator"),
        "--kubeconfig", str(kubeconfig),
        "--lease-namespace", namespace,
        "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
        "--metrics", "",
        "--log-format", "text",
        "--log-level", log_level,
        "--leader-election",
        "--leader-identity", identity,
        "--leader-lease-duration", str(LEASE_DURATION),
        "--leader-renew-deadline", str(RENEW_DEADLINE),
        "--leader-retry", str(RETRY),
        *extra_args,
    ]  # fmt: skip
    process = ComponentProcess(
        identity, argv, directory / f"{identity}.log", env={"KUBECONFIG": str(kubeconfig)}
    )
    replica = Replica(identity, process.start())
    process.wait_for_log("waiting to lead", timeout=60)
    return replica


def wait_for_leader(replicas: list[Replica], timeout: float = 60.0) -> Replica:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = [r for r in replicas if r.process.running and r.leading]
        if leaders:
            return leaders[0]
        time.sleep(0.05)
    raise AssertionError("no replica became the leader:\n" + "\n".join(r.process.log() for r in replicas))
