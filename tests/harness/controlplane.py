"""Faults of the local control plane itself, for the fault tests: pause (SIGSTOP), resume, kill
one component and start it again, and force an etcd compaction through etcd's own JSON API
(the gRPC gateway on the client port; no etcdctl is built). The session's cluster is shared by
every test: `restored()` brings it back to healthy whatever the test did."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from tests.harness import localcluster
from tests.harness.daemons import ClusterConfig, pid_alive, port_in_use, running_pid

APISERVER = "kube-apiserver"


def _pid(cfg: ClusterConfig, component: str) -> int:
    pid = running_pid(cfg, component)
    if pid is None:
        raise AssertionError(f"{component} is not running (pid file {cfg.pid_file(component)})")
    return pid


def pause(cfg: ClusterConfig, component: str = APISERVER) -> None:
    """SIGSTOP: the process keeps its sockets open and answers nothing, as a partition looks."""
    os.kill(_pid(cfg, component), signal.SIGSTOP)


def resume(cfg: ClusterConfig, component: str = APISERVER) -> None:
    pid = running_pid(cfg, component)
    if pid is not None:
        os.kill(pid, signal.SIGCONT)


def kill(cfg: ClusterConfig, component: str = APISERVER) -> None:
    """SIGKILL (after SIGCONT, so a paused process dies at once) and wait until it is gone."""
    pid = _pid(cfg, component)
    os.kill(pid, signal.SIGCONT)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_alive(pid, component):
        if time.monotonic() > deadline:
            raise AssertionError(f"{component} (pid {pid}) survived SIGKILL for 30 s")
        time.sleep(0.05)
    cfg.pid_file(component).unlink(missing_ok=True)
    # The kernel releases the listening socket a moment after the process is gone; the start's
    # own check of the port would take it for another process's.
    for port in _ports(cfg).get(component, ()):
        while port_in_use(port):
            if time.monotonic() > deadline:
                raise AssertionError(f"port {port} still taken 30 s after {component} was killed")
            time.sleep(0.05)


def _ports(cfg: ClusterConfig) -> dict[str, tuple[int, ...]]:
    return {APISERVER: (cfg.apiserver_port,), "etcd": (cfg.etcd_port, cfg.etcd_peer_port)}


def start_missing(cfg: ClusterConfig) -> None:
    """Start whatever component is not running and wait until the cluster is ready again."""
    localcluster.up(cfg)


@contextlib.contextmanager
def restored(cfg: ClusterConfig) -> Iterator[None]:
    """Leave the shared cluster running and resumed after the block, however it ended."""
    try:
        yield
    finally:
        for component in cfg.components:
            resume(cfg, component)
        if not localcluster.is_up(cfg):
            start_missing(cfg)


# --- etcd ------------------------------------------------------------------------------------


def _etcd(cfg: ClusterConfig, path: str, body: dict[str, Any]) -> dict[str, Any]:
    # The local etcd listens on loopback over plain HTTP (the API server is its only client).
    request = urllib.request.Request(
        f"http://127.0.0.1:{cfg.etcd_port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def etcd_revision(cfg: ClusterConfig) -> int:
    """etcd's current revision (the header of any read)."""
    answer = _etcd(cfg, "/v3/kv/range", {"key": base64.b64encode(b"/").decode(), "count_only": True})
    return int(answer["header"]["revision"])


def compact(cfg: ClusterConfig, revision: int | None = None) -> int:
    """Compact etcd's history up to `revision` (default: the current one), physically: a watch
    from an older resourceVersion then ends with 410 Gone. Returns the revision compacted to."""
    target = etcd_revision(cfg) if revision is None else revision
    _etcd(cfg, "/v3/kv/compaction", {"revision": str(target), "physical": True})
    return target
