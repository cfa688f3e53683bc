"""Unloading ends the driver's whole process tree: real driver hosts whose driver starts a child
and a daemon (double fork + setsid), in real cgroups (v2 and v1) of this machine, and with the
session fallback where no cgroup is writable.

The hosts are started and stopped through the agent's own HostRunner and launchers, and
through a real `storage-agent supervise` process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from storage_driver_agent.drivers import proctree
from storage_driver_agent.drivers.hostclient import HostConnection
from storage_driver_agent.drivers.hosts import HostRunner
from storage_driver_agent.drivers.launcher import DirectLauncher, HostProcess, SupervisorLauncher
from storage_driver_agent.drivers.runtime import RuntimeSettings
from storage_driver_agent.drivers.statemachine import Artifact, Desired, SourceRef
from storage_driver_sdk.protocol import Op

from tests.conftest import require
from tests.harness.drivers import journal, pid_alive, start_supervisor, write_probe
from tests.harness.processes import ComponentProcess
from tests.harness.waiting import eventually

HIERARCHIES = {"cgroup-v2": Path("/sys/fs/cgroup/unified"), "cgroup-v1-pids": Path("/sys/fs/cgroup/pids")}


def _v2_root() -> Path:
    # A pure v2 node mounts it at /sys/fs/cgroup itself; a hybrid one at /sys/fs/cgroup/unified.
    plain = Path("/sys/fs/cgroup")
    return plain if (plain / "cgroup.controllers").exists() else HIERARCHIES["cgroup-v2"]


def make_trees(kind: str) -> Iterator[proctree.ProcessTrees]:
    if kind == "session":
        yield proctree.choose(proctree.OFF)
        return
    hierarchy = _v2_root() if kind == "cgroup-v2" else HIERARCHIES[kind]
    require(None if hierarchy.is_dir() else f"no {kind} hierarchy mounted at {hierarchy}")
    base = hierarchy / f"sdo-test-{uuid.uuid4().hex[:8]}"
    try:
        trees = proctree.choose(str(base))
    except ValueError as exc:
        require(f"{kind} is not writable here: {exc}")
        raise
    try:
        yield trees
    finally:
        for group in (g for g in base.glob("*") if g.is_dir()):
            for pid in proctree.group_members(group):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # A host that ended on its own leaves its (empty) cgroup: it cannot remove the one it is in.
            for _ in range(100):
                with contextlib.suppress(OSError):
                    group.rmdir()
                    break
                time.sleep(0.01)
        with contextlib.suppress(OSError):
            base.rmdir()


@pytest.fixture(params=["cgroup-v2", "cgroup-v1-pids", "session"])
def trees(request: pytest.FixtureRequest) -> Iterator[proctree.ProcessTrees]:
    yield from make_trees(request.param)


@dataclass
class Spawned:
    process: HostProcess
    conn: HostConnection
    child: int
    daemon: int

    @property
    def pids(self) -> list[int]:
        return [self.process.pid, self.child, self.daemon]


class Node:
    """What the agent does to start a driver that spawns children, through its own HostRunner."""

    def __init__(
        self, root: Path, launcher: DirectLauncher | SupervisorLauncher, adoption_window: float = 60
    ):
        self.root = root
        self.settings = RuntimeSettings(
            state_dir=root / "state", driver_dir=root / "drivers", adoption_window=adoption_window
        )
        self.runner = HostRunner(self.settings, launcher, time.monotonic, time.time)
        self.sha = write_probe(self.settings.driver_dir)
        self.spawned: list[int] = []
        self.hosts: list[HostProcess] = []

    def desired(self, name: str) -> Desired:
        config = f'{{"journal": "{self.root / name}.journal", "spawnChildren": true}}'
        return Desired(name, "Probe Driver", "1.0.0", SourceRef("hostPath", "probe.py"), config)

    async def start(self, name: str, **extra: object) -> Spawned:
        desired = self.desired(name)
        if extra:
            config = {**json.loads(desired.config_json), **extra}
            desired = Desired(name, "Probe Driver", "1.0.0", desired.source, json.dumps(config))
        artifact = Artifact(desired.fetch_key, self.sha, "ProbeDriver")
        pid = await self.runner.spawn(desired, artifact, 0)
        loaded = await self.runner.load(desired, pid, list, time.monotonic(), time.time())
        spawned = [e for e in journal(self.root / f"{name}.journal") if e["event"] == "spawned"][-1]
        self.spawned += [spawned["child"], spawned["daemon"]]
        self.hosts.append(HostProcess(pid, self.runner.slot(name).socket))
        return Spawned(
            HostProcess(pid, self.runner.slot(name).socket), loaded.conn, spawned["child"], spawned["daemon"]
        )

    async def cleanup(self, *, stop_hosts: bool = True) -> None:
        for host in self.hosts if stop_hosts else []:
            await self.runner.stop(host, None, 0.0)  # and reap it: a zombie keeps its cgroup
        for pid in self.spawned:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def direct(root: Path, trees: proctree.ProcessTrees) -> AsyncIterator[Node]:
    launcher = DirectLauncher(trees)
    node = Node(root, launcher)
    yield node
    await node.cleanup()
    await launcher.close()


@pytest.fixture(params=["direct", "template"])
async def started(
    request: pytest.FixtureRequest, root: Path, trees: proctree.ProcessTrees
) -> AsyncIterator[Node]:
    """Hosts started by the agent's direct launcher (fresh interpreters), and forked from the
    host template of a supervisor holding trees the same way."""
    if request.param == "direct":
        direct_launcher = DirectLauncher(trees)
        node = Node(root, direct_launcher)
        yield node
        await node.cleanup()
        await direct_launcher.close()
        return
    supervisor = start_supervisor(
        root / "state",
        root / "supervisor.log",
        "--host-cgroup",
        str(trees.base) if trees.base is not None else proctree.OFF,
        "--host-start",
        "template",
        ready="host template started",
    )
    launcher = SupervisorLauncher(root / "state" / "supervisor.sock")
    supervised = Node(root, launcher)
    yield supervised
    await supervised.cleanup()
    await launcher.close()
    supervisor.stop()


async def all_gone(pids: list[int]) -> bool:
    return not any(pid_alive(p) for p in pids)


def escapes(trees: proctree.ProcessTrees) -> bool:
    """Without a cgroup, a process that left the host's session survives (the documented limit)."""
    return trees.base is None


async def test_unload_ends_the_drivers_children_and_daemons(
    started: Node, trees: proctree.ProcessTrees
) -> None:
    direct = started
    host = await direct.start("spawner")
    assert all(pid_alive(p) for p in host.pids)
    if trees.base is not None:
        assert set(host.pids) <= set(trees.members(host.process.socket, host.process.pid))
    await host.conn.call(Op.UNLOAD)
    ended = await direct.runner.stop(host.process, host.conn, 5.0)
    assert ended == "stopped"
    survivors = [p for p in host.pids if pid_alive(p)]
    if escapes(trees):
        assert survivors == [host.daemon]  # setsid() took it out of the session
    else:
        assert survivors == []
        assert not (trees.group(host.process.socket) or Path("/nonexistent")).exists()


async def test_a_crashed_hosts_leftovers_end_before_its_restart(
    direct: Node, trees: proctree.ProcessTrees
) -> None:
    first = await direct.start("crasher", crashAfter=0.3)
    await eventually(lambda: _dead(first.process.pid), what="the host to crash")
    assert pid_alive(first.child)  # the crash itself leaves the driver's children behind...
    await direct.runner.end_tree(first.process)  # ...which the agent ends when it sees the crash
    gone = [first.process.pid, first.child] + ([] if escapes(trees) else [first.daemon])
    await eventually(lambda: all_gone(gone), what="the crashed host's tree to end")
    # A restart of the same driver starts in a fresh, empty tree.
    second = await direct.start("crasher")
    if trees.base is not None:
        assert set(trees.members(second.process.socket, second.process.pid)) == set(second.pids)


async def test_a_host_ending_on_its_own_takes_its_tree_along(
    root: Path, trees: proctree.ProcessTrees
) -> None:
    """The agent stops for good: after the adoption window the host stops its driver, ends what
    the driver left running, and exits."""
    launcher = DirectLauncher(trees)
    node = Node(root, launcher, adoption_window=1.0)
    try:
        host = await node.start("orphan")
        await host.conn.close()  # the agent is gone
        expected = [host.process.pid, host.child] + ([] if escapes(trees) else [host.daemon])
        await eventually(lambda: all_gone(expected), timeout=15, what="the orphaned host and its tree to end")
        group = trees.group(host.process.socket)
        if group is not None:
            # A host cannot remove the cgroup it is in; the next agent's start removes it, empty.
            await launcher.close()  # reap the host: a zombie keeps its cgroup populated
            assert group.exists()
            assert trees.remove_empty(node.settings.hosts_dir) == [group.name]
            assert not group.exists()
    finally:
        await node.cleanup()
        await launcher.close()


async def _dead(pid: int) -> bool:
    return not pid_alive(pid)


# --- the supervisor --------------------------------------------------------------------------


@pytest.fixture
def supervisor(root: Path) -> Iterator[ComponentProcess]:
    process = start_supervisor(root / "state", root / "supervisor.log", "--stop-timeout", "3")
    yield process
    process.stop()


async def test_the_supervisor_ends_a_crashed_hosts_tree_without_the_agent(
    root: Path, supervisor: ComponentProcess
) -> None:
    assert "driver host process trees are held in cgroup" in supervisor.log(200)
    launcher = SupervisorLauncher(root / "state" / "supervisor.sock")
    node = Node(root, launcher)
    try:
        host = await node.start("supervised-crasher", crashAfter=0.5)
        await host.conn.close()
        await launcher.close()  # no agent asks anything: the supervisor reaps, and ends the tree
        await eventually(lambda: all_gone(host.pids), timeout=10, what="the crashed host's tree to end")
    finally:
        await node.cleanup()


async def test_a_supervisor_stopping_for_good_leaves_no_driver_process(
    root: Path, supervisor: ComponentProcess
) -> None:
    launcher = SupervisorLauncher(root / "state" / "supervisor.sock")
    node = Node(root, launcher)
    try:
        host = await node.start("supervised-spawner")
        await host.conn.close()
        await launcher.close()
        supervisor.stop()
        await eventually(lambda: all_gone(host.pids), timeout=15, what="every driver process to end")
    finally:
        await node.cleanup(stop_hosts=False)  # the supervisor is gone


async def test_without_a_writable_cgroup_the_agent_says_what_escapes() -> None:
    trees = proctree.choose(proctree.OFF)
    assert "setsid() leaves the session and survives unload" in proctree.describe(trees)
    with pytest.raises(ValueError, match="--host-cgroup /proc/nope"):
        proctree.choose("/proc/nope")
    await asyncio.sleep(0)
