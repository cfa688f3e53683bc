"""Real driver host processes, started through both launchers (and by the supervisor both from
its host template and as a fresh interpreter): the protocol, the lifecycle, the memory limit,
SIGTERM, and the adoption window."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from storage_driver_agent.drivers.host import HOST_MODULE
from storage_driver_agent.drivers.hostclient import HostCallError, HostConnection, HostGone
from storage_driver_agent.drivers.launcher import (
    DirectLauncher,
    HostProcess,
    Launcher,
    LauncherError,
    SupervisorLauncher,
)
from storage_driver_sdk.protocol import Op

from tests.harness.drivers import (
    journal,
    parent_pid,
    pid_alive,
    process_args,
    process_name,
    start_supervisor,
    write_probe,
)
from tests.harness.processes import ComponentProcess
from tests.harness.waiting import eventually

DEVICE = {
    "name": "node-a-0123456789",
    "spec": {
        "type": "loop",
        "kernelName": "loop9",
        "sysPath": "/sys/devices/virtual/block/loop9",
        "devPath": "/dev/loop9",
        "sizeBytes": 4096,
    },
}


@dataclass
class HostFixture:
    root: Path
    launcher: Launcher

    @property
    def driver_dir(self) -> Path:
        return self.root / "drivers"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def argv(
        self,
        name: str,
        sha: str,
        *,
        file: str = "probe.py",
        adoption_window: float = 60,
        memory_limit: int = 0,
    ) -> list[str]:
        hosts = self.state_dir / "hosts"
        return [
            sys.executable, "-m", HOST_MODULE,
            "--name", name,
            "--driver-name", "Probe Driver",
            "--version", "1.0.0",
            "--sha256", sha,
            "--path", str(self.driver_dir / file),
            "--class-name", "ProbeDriver",
            "--socket", str(hosts / f"{name}.sock"),
            "--state-file", str(hosts / f"{name}.json"),
            "--adoption-window", str(adoption_window),
            "--memory-limit", str(memory_limit),
        ]  # fmt: skip

    async def spawn(self, name: str, **kwargs: object) -> tuple[HostProcess, HostConnection]:
        sha = write_probe(self.driver_dir)
        argv = self.argv(name, sha, **kwargs)  # type: ignore[arg-type]
        pid = await self.launcher.spawn(name, argv, self.state_dir / "hosts" / f"{name}.log")
        process = HostProcess(pid, self.state_dir / "hosts" / f"{name}.sock")
        conn = await HostConnection.connect(process.socket, alive=lambda: self.launcher.alive(process))
        # The socket listens from the spawn on (host.bind_listener): the host serves once it answers.
        await conn.call(Op.HELLO)
        return process, conn

    def journal(self, name: str) -> Path:
        return self.root / f"{name}.journal"


def supervise(root: Path, host_start: str) -> ComponentProcess:
    # The supervisor starts its host template after it listens: wait for it, so that a test
    # looking for the template does not race its start.
    ready = "host template started" if host_start == "template" else "supervisor listening"
    return start_supervisor(
        root / "state",
        root / "supervisor.log",
        "--stop-timeout",
        "5",
        "--host-start",
        host_start,
        ready=ready,
    )


@pytest.fixture(params=["direct", "template"])
async def hosts(request: pytest.FixtureRequest, root: Path) -> AsyncIterator[HostFixture]:
    """Hosts started as a fresh interpreter (the direct launcher) and forked from the
    supervisor's host template: every test of a host's behaviour runs on both."""
    if request.param == "direct":
        launcher: Launcher = DirectLauncher()
        yield HostFixture(root, launcher)
        await launcher.close()
        return
    supervisor = supervise(root, "template")
    launcher = SupervisorLauncher(root / "state" / "supervisor.sock")
    yield HostFixture(root, launcher)
    await launcher.close()
    supervisor.stop()


@pytest.fixture(params=["template", "exec"])
async def supervised(
    request: pytest.FixtureRequest, root: Path
) -> AsyncIterator[tuple[HostFixture, ComponentProcess]]:
    supervisor = supervise(root, request.param)
    launcher = SupervisorLauncher(root / "state" / "supervisor.sock")
    yield HostFixture(root, launcher), supervisor
    await launcher.close()
    supervisor.stop()


async def test_a_host_runs_the_driver_lifecycle(hosts: HostFixture) -> None:
    process, conn = await hosts.spawn("probe-a")
    trail = hosts.journal("probe-a")
    # ps shows which driver the process runs.
    cmdline = process_args(process.pid)
    assert cmdline[cmdline.index("--name") + 1] == "probe-a"
    assert process_name(process.pid) == "sdh:probe-a"

    hello = await conn.call(Op.HELLO)
    assert (hello["name"], hello["pid"], hello["phase"]) == ("probe-a", process.pid, "starting")

    result = await conn.call(
        Op.LOAD, {"config": {"journal": str(trail), "x": 1}, "configJson": '{"x":1}', "devices": [DEVICE]}
    )
    assert result["attached"] == {
        DEVICE["name"]: {"devPath": "/dev/loop9", "sizeBytes": 4096, "marker": "Probe Driver"}
    }
    state = json.loads((hosts.state_dir / "hosts" / "probe-a.json").read_text())
    assert (
        state["phase"] == "running" and state["attached"] == [DEVICE["name"]] and state["pid"] == process.pid
    )
    assert (await conn.call(Op.HEALTH)) == {"healthy": True, "message": "probe says so"}

    await conn.call(Op.DETACH, {"name": DEVICE["name"]})
    assert (await conn.call(Op.HELLO))["attached"] == []
    assert (await conn.call(Op.UNLOAD))["errors"] == []
    assert await conn.wait_closed(10)
    await eventually(lambda: _exited(hosts.launcher, process), what="the host to exit")
    assert await hosts.launcher.exit_status(process) == 0
    assert [e["event"] for e in journal(trail)] == ["start", "attach", "detach", "stop"]
    assert journal(trail)[0]["config"] == {"journal": str(trail), "x": 1}
    assert not (hosts.state_dir / "hosts" / "probe-a.sock").exists()
    assert not (hosts.state_dir / "hosts" / "probe-a.json").exists()


async def _exited(launcher: Launcher, process: HostProcess) -> bool:
    return not await launcher.alive(process)


async def test_a_failing_attach_leaves_the_driver_loaded(hosts: HostFixture) -> None:
    _, conn = await hosts.spawn("probe-b")
    result = await conn.call(Op.LOAD, {"config": {"failAttach": [DEVICE["name"]]}, "devices": [DEVICE]})
    assert result["attached"] == {}
    assert "failAttach" in result["failed"][DEVICE["name"]]["message"]
    with pytest.raises(HostCallError, match="failAttach"):
        await conn.call(Op.ATTACH, {"device": DEVICE})
    assert (await conn.call(Op.HELLO))["phase"] == "running"


async def test_a_failing_start_is_reported_and_the_host_exits(hosts: HostFixture) -> None:
    process, conn = await hosts.spawn("probe-c")
    with pytest.raises(HostCallError) as failed:
        await conn.call(Op.LOAD, {"config": {"failStart": True}})
    assert failed.value.error.type == "RuntimeError" and "failStart" in failed.value.error.message
    assert "Traceback" in failed.value.error.traceback
    assert await conn.wait_closed(10)
    await eventually(lambda: _exited(hosts.launcher, process), what="the host to exit")
    assert await hosts.launcher.exit_status(process) == 3


async def test_a_driver_over_its_memory_limit_is_contained(hosts: HostFixture) -> None:
    bystander, bystander_conn = await hosts.spawn("bystander")
    await bystander_conn.call(Op.LOAD, {"config": {}})
    hog, conn = await hosts.spawn("hog", memory_limit=256 * 2**20)
    with pytest.raises(HostCallError) as failed:
        await conn.call(Op.LOAD, {"config": {"allocateInStart": 1024 * 2**20}})
    assert failed.value.error.type == "MemoryError"
    await eventually(lambda: _exited(hosts.launcher, hog), what="the memory hog's host to exit")
    # The other driver and this process are untouched.
    assert (await bystander_conn.call(Op.HEALTH))["healthy"] is True
    assert pid_alive(bystander.pid)


async def test_a_file_changed_after_verification_is_not_loaded(hosts: HostFixture) -> None:
    sha = write_probe(hosts.driver_dir)
    argv = hosts.argv("changed", sha)
    (hosts.driver_dir / "probe.py").write_text("# replaced by someone else\n")
    pid = await hosts.launcher.spawn("changed", argv, hosts.root / "changed.log")
    process = HostProcess(pid, hosts.state_dir / "hosts" / "changed.sock")
    conn = await HostConnection.connect(process.socket, alive=lambda: hosts.launcher.alive(process))
    with pytest.raises(HostCallError) as failed:
        await conn.call(Op.LOAD, {"config": {}})
    assert failed.value.error.type == "ChecksumMismatch"


async def test_a_host_without_agent_stops_its_driver_after_the_adoption_window(hosts: HostFixture) -> None:
    process, conn = await hosts.spawn("orphan", adoption_window=1.5)
    trail = hosts.journal("orphan")
    await conn.call(Op.LOAD, {"config": {"journal": str(trail)}, "devices": [DEVICE]})
    await conn.close()  # the agent goes away
    await eventually(lambda: _exited(hosts.launcher, process), timeout=30, what="the orphaned host to exit")
    assert [e["event"] for e in journal(trail)] == ["start", "attach", "detach", "stop"]
    assert await hosts.launcher.exit_status(process) == 0


async def test_a_returning_agent_adopts_the_host(hosts: HostFixture) -> None:
    process, conn = await hosts.spawn("adoptee", adoption_window=30)
    trail = hosts.journal("adoptee")
    await conn.call(Op.LOAD, {"config": {"journal": str(trail)}, "configJson": "{}", "devices": [DEVICE]})
    await conn.close()
    await asyncio.sleep(0.5)
    again = await HostConnection.connect(process.socket)
    hello = await again.call(Op.HELLO)
    assert (hello["pid"], hello["phase"], hello["attached"]) == (process.pid, "running", [DEVICE["name"]])
    assert hello["facts"][DEVICE["name"]]["marker"] == "Probe Driver"
    assert [e["event"] for e in journal(trail)] == ["start", "attach"]  # loaded once
    await again.call(Op.UNLOAD)


async def test_sigterm_stops_the_driver_cleanly(hosts: HostFixture) -> None:
    process, conn = await hosts.spawn("termed")
    trail = hosts.journal("termed")
    await conn.call(Op.LOAD, {"config": {"journal": str(trail)}, "devices": [DEVICE]})
    await hosts.launcher.signal(process, signal.SIGTERM)
    assert await conn.wait_closed(10)
    await eventually(lambda: _exited(hosts.launcher, process), what="the host to exit")
    assert [e["event"] for e in journal(trail)] == ["start", "attach", "detach", "stop"]


async def test_a_host_that_ignores_sigterm_while_stopping_is_killed(hosts: HostFixture) -> None:
    process, conn = await hosts.spawn("stubborn")
    await conn.call(Op.LOAD, {"config": {"hangInStop": True, "ignoreSigterm": True}})
    with pytest.raises(TimeoutError):
        await conn.call(Op.UNLOAD, timeout=1.0)
    await hosts.launcher.signal(process, signal.SIGTERM)
    await asyncio.sleep(1.0)
    assert await hosts.launcher.alive(process)  # SIGTERM is ignored
    await hosts.launcher.signal(process, signal.SIGKILL)
    await eventually(lambda: _exited(hosts.launcher, process), what="the host to die")
    assert await hosts.launcher.exit_status(process) == -signal.SIGKILL


def start_and_kill_a_starter(argv: list[str]) -> int:
    """A process starts a host in a new session and is SIGKILLed; returns the host's pid."""
    script = (
        "import subprocess\n"
        f"p = subprocess.Popen({argv!r}, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(p.pid, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert starter.stdout is not None
    pid = int(starter.stdout.readline())
    starter.kill()
    starter.wait()
    return pid


async def test_hosts_survive_the_process_that_started_them(root: Path) -> None:
    """A host lives in its own session: killing its starter (like an agent crash) leaves it running."""
    sha = write_probe(root / "drivers")
    fixture = HostFixture(root, DirectLauncher())
    pid = start_and_kill_a_starter(fixture.argv("survivor", sha))
    process = HostProcess(pid, root / "state" / "hosts" / "survivor.sock")
    conn = await HostConnection.connect(process.socket)
    assert (await conn.call(Op.HELLO))["pid"] == pid
    assert await fixture.launcher.alive(process)  # adopted: not our child, found through /proc
    await fixture.launcher.signal(process, signal.SIGTERM)
    await eventually(lambda: _exited(fixture.launcher, process), what="the adopted host to exit")


# --- the supervisor --------------------------------------------------------------------------


async def test_supervisor_spawns_signals_and_reaps_hosts(
    supervised: tuple[HostFixture, ComponentProcess],
) -> None:
    fixture, supervisor = supervised
    process, conn = await fixture.spawn("supervised")
    trail = fixture.journal("supervised")
    await conn.call(Op.LOAD, {"config": {"journal": str(trail)}, "devices": [DEVICE]})
    assert parent_pid(process.pid) == supervisor.pid
    assert await fixture.launcher.alive(process)
    await fixture.launcher.signal(process, signal.SIGTERM)
    await eventually(lambda: _exited(fixture.launcher, process), what="the supervised host to exit")
    assert await fixture.launcher.exit_status(process) == 0
    assert [e["event"] for e in journal(trail)] == ["start", "attach", "detach", "stop"]


async def test_the_supervisor_answers_a_wait_when_the_host_exits_and_serves_others_meanwhile(
    supervised: tuple[HostFixture, ComponentProcess],
) -> None:
    fixture, _ = supervised
    process, conn = await fixture.spawn("waited")
    await conn.call(Op.LOAD, {"config": {}})
    assert await fixture.launcher.wait_exited(process, 0.2) is False  # still running: the timeout
    waiting = asyncio.create_task(fixture.launcher.wait_exited(process, 60))
    await asyncio.sleep(0.2)
    # The wait has a connection of its own: the agent's other requests are answered meanwhile.
    assert await asyncio.wait_for(fixture.launcher.alive(process), 5) is True
    assert not waiting.done()
    await fixture.launcher.signal(process, signal.SIGTERM)
    assert await asyncio.wait_for(waiting, 30) is True
    assert await fixture.launcher.exit_status(process) == 0
    assert await fixture.launcher.wait_exited(process, 5) is True  # already gone: at once


async def test_supervisor_starts_nothing_but_driver_hosts(
    supervised: tuple[HostFixture, ComponentProcess],
) -> None:
    fixture, _ = supervised
    with pytest.raises(LauncherError, match=r"only '-m storage_driver_agent\.drivers\.host' may be started"):
        await fixture.launcher.spawn("evil", ["/bin/sh", "-c", "touch /tmp/owned"], fixture.root / "evil.log")


async def test_supervised_hosts_outlive_the_agent_and_stop_with_the_supervisor(
    supervised: tuple[HostFixture, ComponentProcess],
) -> None:
    fixture, supervisor = supervised
    process, conn = await fixture.spawn("long-lived")
    trail = fixture.journal("long-lived")
    await conn.call(Op.LOAD, {"config": {"journal": str(trail)}})
    await conn.close()
    await fixture.launcher.close()  # the agent is gone; the supervisor keeps the host
    await asyncio.sleep(0.5)
    assert pid_alive(process.pid)
    supervisor.stop()
    await eventually(lambda: _gone(process.pid), what="the supervisor to stop its hosts")
    assert [e["event"] for e in journal(trail)] == ["start", "stop"]


async def _gone(pid: int) -> bool:
    return not pid_alive(pid)


async def test_a_host_that_dies_before_it_serves_ends_the_agents_request(hosts: HostFixture) -> None:
    """The launcher binds the host's socket before the host starts, so the agent connects and
    sends its request at once; a host that exits before serving it (here: an argument it refuses)
    must end that request then, not leave it waiting for a timeout: no launcher, template or
    supervisor keeps a copy of the host's listening socket."""
    sha = write_probe(hosts.driver_dir)
    argv = hosts.argv("stillborn", sha, adoption_window="soon")  # type: ignore[arg-type]
    pid = await hosts.launcher.spawn("stillborn", argv, hosts.state_dir / "hosts" / "stillborn.log")
    process = HostProcess(pid, hosts.state_dir / "hosts" / "stillborn.sock")
    with pytest.raises(HostGone):
        conn = await HostConnection.connect(process.socket, alive=lambda: hosts.launcher.alive(process))
        await conn.call(Op.LOAD, {"config": {}}, timeout=60)
    await eventually(lambda: _exited(hosts.launcher, process), what="the host to exit")
    assert await hosts.launcher.exit_status(process) == 2  # argparse's usage error


async def test_connecting_to_a_dead_host_fails_fast(hosts: HostFixture) -> None:
    with pytest.raises(HostGone):
        await HostConnection.connect(hosts.root / "nothing.sock", timeout=0.5)


def test_sha_of_probe_is_stable(tmp_path: Path) -> None:
    assert write_probe(tmp_path) == hashlib.sha256((tmp_path / "probe.py").read_bytes()).hexdigest()
