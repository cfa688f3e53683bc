"""Driver hosts forked from the supervisor's host template (drivers/template.py): each is a
process of its own exactly like a freshly started host, and neither a crashing driver nor the
template's death takes a running driver with it. Real `storage-agent supervise` processes, real
hosts; the behaviour shared with fresh hosts is tested in test_hosts.py on both."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from storage_driver_agent.drivers import proctree
from storage_driver_agent.drivers.hostclient import HostConnection, HostGone
from storage_driver_agent.drivers.launcher import HostProcess, SupervisorLauncher
from storage_driver_sdk.protocol import Op

from tests.conftest import require
from tests.harness.drivers import (
    children,
    host_templates,
    parent_pid,
    pid_alive,
    process_args,
    write_probe,
)
from tests.harness.processes import ComponentProcess
from tests.harness.waiting import eventually
from tests.integration.drivers.test_hosts import HostFixture, supervise

LIMIT = 512 * 2**20

KILLER = '''
import os, signal
from storage_driver_sdk import storage_driver

@storage_driver(name="Probe Driver", version="1.0.0")
class ProbeDriver:
    """Kills the process whose pid its config names, then runs as any driver."""

    def start(self, config):
        os.kill(int(config["kill"]), signal.SIGKILL)

    def attach(self, device):
        return {}

    def detach(self, device):
        pass

    def stop(self):
        pass
'''

SEGFAULT_ON_IMPORT = """
import ctypes
from storage_driver_sdk import storage_driver

ctypes.string_at(0)  # the interpreter dies here, while importing the driver


@storage_driver(name="Probe Driver", version="1.0.0")
class ProbeDriver:
    def start(self, config): ...
    def attach(self, device): ...
    def detach(self, device): ...
    def stop(self): ...
"""


SELF_REPORT = '''
import ctypes, json, os, signal, subprocess, sys, threading
from storage_driver_sdk import storage_driver

@storage_driver(name="Probe Driver", version="1.0.0")
class ProbeDriver:
    """Writes what its own process looks like from inside to the file its config names."""

    def start(self, config):
        signals = []
        signal.signal(signal.SIGUSR1, lambda *_: signals.append("SIGUSR1"))
        signal.raise_signal(signal.SIGUSR1)  # glibc's raise(): this thread, not the template's
        tid_address = ctypes.c_void_p()
        ctypes.CDLL(None).prctl(40, ctypes.byref(tid_address), 0, 0, 0)  # PR_GET_TID_ADDRESS
        thread = {}
        worker = threading.Thread(target=lambda: thread.update(tid=threading.get_native_id()))
        worker.start()
        worker.join()
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getppid())"], capture_output=True, text=True, check=True
        )
        with open(config["report"], "w") as report:
            json.dump({
                "pid": os.getpid(),
                "signals": signals,
                "glibc_tid": ctypes.c_int.from_address(tid_address.value).value,
                "native_tid": threading.get_native_id(),
                "thread_tid": thread["tid"],
                "childs_parent": int(child.stdout),
            }, report)

    def attach(self, device):
        return {}

    def detach(self, device):
        pass

    def stop(self):
        pass
'''


@pytest.fixture
async def supervised(root: Path) -> AsyncIterator[tuple[HostFixture, ComponentProcess]]:
    supervisor = supervise(root, "template")
    launcher = SupervisorLauncher(root / "state" / "supervisor.sock")
    yield HostFixture(root, launcher), supervisor
    await launcher.close()
    supervisor.stop()


def template_of(supervisor: ComponentProcess) -> int:
    """The pid of the supervisor's (one) host template."""
    templates = host_templates(supervisor.pid)
    assert len(templates) == 1, templates
    return templates[0]


def address_space_limit(pid: int) -> tuple[int, int]:
    line = next(
        line
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
        if line.startswith("Max address space")
    )
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def socket_inodes(pid: int) -> set[str]:
    links = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.add(str(fd.readlink()))
        except OSError:
            continue
    return {link for link in links if link.startswith("socket:")}


def fd_target(pid: int, fd: int) -> str:
    return str(Path(f"/proc/{pid}/fd/{fd}").readlink())


def write_driver(fixture: HostFixture, name: str, source: str) -> str:
    fixture.driver_dir.mkdir(parents=True, exist_ok=True)
    (fixture.driver_dir / name).write_text(textwrap.dedent(source))
    return hashlib.sha256((fixture.driver_dir / name).read_bytes()).hexdigest()


async def spawn_file(
    fixture: HostFixture, name: str, file: str, sha: str
) -> tuple[HostProcess, HostConnection]:
    argv = fixture.argv(name, sha, file=file)
    pid = await fixture.launcher.spawn(name, argv, fixture.state_dir / "hosts" / f"{name}.log")
    process = HostProcess(pid, fixture.state_dir / "hosts" / f"{name}.sock")
    conn = await HostConnection.connect(process.socket, alive=lambda: fixture.launcher.alive(process))
    return process, conn


async def _exited(fixture: HostFixture, process: HostProcess) -> bool:
    return not await fixture.launcher.alive(process)


async def test_a_forked_host_is_a_process_of_its_own_like_a_fresh_one(
    supervised: tuple[HostFixture, ComponentProcess],
) -> None:
    fixture, supervisor = supervised
    template = template_of(supervisor)
    process, conn = await fixture.spawn("forked", memory_limit=LIMIT)
    sha = write_probe(fixture.driver_dir)
    await conn.call(Op.LOAD, {"config": {}})
    # The supervisor's child (it reaps it, knows its exit status), not the template's.
    assert parent_pid(process.pid) == supervisor.pid
    assert process.pid not in children(template)
    # Its own session and process group, as a fresh host's: no signal to the template reaches it.
    assert os.getsid(process.pid) == process.pid and os.getpgid(process.pid) == process.pid
    # The command line a fresh host has: ps, the identity check and adoption see no difference.
    group = proctree.choose().group(process.socket)
    expected = [sys.executable, *fixture.argv("forked", sha, memory_limit=LIMIT)[1:]]
    args = process_args(process.pid)
    assert args[:-2] == expected + ([] if group is None else ["--cgroup", str(group)])
    # ... and the socket its launcher bound for it (the number differs: the exec path keeps the
    # supervisor's), which only the host holds: when it exits, the agent's connection ends.
    assert args[-2] == "--listen-fd"
    listener = fd_target(process.pid, int(args[-1]))
    assert listener.startswith("socket:")
    assert listener not in socket_inodes(supervisor.pid) | socket_inodes(template)
    # Its memory limit.
    assert address_space_limit(process.pid) == (LIMIT, LIMIT)
    # Nothing of the template's: not its socket to the supervisor.
    assert not socket_inodes(process.pid) & socket_inodes(template)
    # Its own cgroup, where the node has one.
    if group is not None:
        assert process.pid in proctree.group_members(group)
        assert template not in proctree.group_members(group)
    await conn.call(Op.UNLOAD)
    await eventually(lambda: _exited(fixture, process), what="the host to exit")
    assert await fixture.launcher.exit_status(process) == 0


async def test_a_host_created_with_clone3_starts_in_its_cgroup_and_is_whole_to_its_driver(
    supervised: tuple[HostFixture, ComponentProcess], tmp_path: Path
) -> None:
    """The template creates hosts with a raw clone3 (drivers/clone3.py): straight in their cgroup,
    with glibc's per-thread state what a fork() leaves, so a driver's signals, threads and
    children work as in a fresh process."""
    fixture, supervisor = supervised
    trees = proctree.choose()
    require(None if trees.kind == "cgroup v2" else f"no writable cgroup v2 hierarchy ({trees.reason})")
    sha = write_driver(fixture, "report.py", SELF_REPORT)
    process, conn = await spawn_file(fixture, "report", "report.py", sha)
    await conn.call(Op.LOAD, {"config": {"report": str(tmp_path / "report.json")}})
    supervisor.wait_for_log("creates driver hosts with clone3")
    group = trees.group(process.socket)
    assert group is not None and process.pid in proctree.group_members(group)
    assert parent_pid(process.pid) == supervisor.pid
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["pid"] == process.pid
    assert report["signals"] == ["SIGUSR1"]
    assert report["glibc_tid"] == report["native_tid"] == process.pid
    assert report["thread_tid"] not in (process.pid, template_of(supervisor))
    assert report["childs_parent"] == process.pid
    assert (await conn.call(Op.HELLO))["phase"] == "running"


async def test_the_templates_death_leaves_running_drivers_and_a_new_template_serves(
    supervised: tuple[HostFixture, ComponentProcess],
) -> None:
    fixture, supervisor = supervised
    first = template_of(supervisor)
    bystander, bystander_conn = await fixture.spawn("bystander")
    await bystander_conn.call(Op.LOAD, {"config": {}})
    # A driver that kills the template as it starts: it loads; nothing else is touched.
    sha = write_driver(fixture, "killer.py", KILLER)
    killer, killer_conn = await spawn_file(fixture, "killer", "killer.py", sha)
    await killer_conn.call(Op.LOAD, {"config": {"kill": first}})
    await eventually(lambda: _gone(first), what="the template to die")
    assert (await bystander_conn.call(Op.HEALTH))["healthy"] is True
    assert (await killer_conn.call(Op.HELLO))["phase"] == "running"
    # The next host comes from a new template.
    after, after_conn = await fixture.spawn("after")
    await after_conn.call(Op.LOAD, {"config": {}})
    second = template_of(supervisor)
    assert second != first
    assert parent_pid(after.pid) == supervisor.pid
    supervisor.wait_for_log("the host template exited")
    # And killed from outside: the same.
    os.kill(second, signal.SIGKILL)
    await eventually(lambda: _gone(second), what="the second template to die")
    for conn in (bystander_conn, killer_conn, after_conn):
        assert (await conn.call(Op.HELLO))["phase"] == "running"
    assert all(pid_alive(p.pid) for p in (bystander, killer, after))


async def _gone(pid: int) -> bool:
    return not pid_alive(pid)


async def test_a_driver_that_crashes_its_interpreter_on_import_is_contained(
    supervised: tuple[HostFixture, ComponentProcess],
) -> None:
    fixture, supervisor = supervised
    template = template_of(supervisor)
    _, bystander_conn = await fixture.spawn("bystander")
    await bystander_conn.call(Op.LOAD, {"config": {}})
    sha = write_driver(fixture, "segfault.py", SEGFAULT_ON_IMPORT)
    crasher, conn = await spawn_file(fixture, "segfault", "segfault.py", sha)
    with pytest.raises(HostGone):
        await conn.call(Op.LOAD, {"config": {}})
    await eventually(lambda: _exited(fixture, crasher), what="the crashed host to be reaped")
    assert await fixture.launcher.exit_status(crasher) == -signal.SIGSEGV
    # The template, the other driver and the next host are untouched.
    assert template_of(supervisor) == template
    assert (await bystander_conn.call(Op.HEALTH))["healthy"] is True
    _, again = await fixture.spawn("next")
    await again.call(Op.LOAD, {"config": {}})
    assert template_of(supervisor) == template


def test_the_template_refuses_to_run_with_a_second_thread() -> None:
    """fork() copies only the calling thread: a template with threads could hand a host a lock
    that no thread will release."""
    script = (
        "import socket, sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
        "a, b = socket.socketpair()\n"
        "from storage_driver_agent.drivers import template\n"
        "sys.exit(template.main(['--fd', str(b.fileno())]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "must be single-threaded" in result.stderr


async def test_a_new_supervisor_recognises_and_signals_the_forked_hosts_of_a_killed_one(root: Path) -> None:
    """After the supervisor dies, its hosts are found again through /proc by their command line
    (launcher.is_driver_host), which a forked host rewrote to a fresh host's."""
    first = supervise(root, "template")
    fixture = HostFixture(root, SupervisorLauncher(root / "state" / "supervisor.sock"))
    process, conn = await fixture.spawn("survivor")
    await conn.call(Op.LOAD, {"config": {}})
    await fixture.launcher.close()
    first.kill()
    second = supervise(root, "template")
    launcher = SupervisorLauncher(root / "state" / "supervisor.sock")
    try:
        assert await launcher.alive(process)
        assert not await launcher.alive(HostProcess(process.pid, root / "state" / "hosts" / "other.sock"))
        await launcher.signal(process, signal.SIGTERM)
        assert await launcher.wait_exited(process, 10)
    finally:
        await launcher.close()
        second.stop()
