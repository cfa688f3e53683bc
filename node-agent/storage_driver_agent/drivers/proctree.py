"""A driver host's whole process tree: keeping it together, and ending all of it.

A driver may start children, and a child may double-fork and call setsid() to leave the host's
session. Unloading must end them all. Where the node lets us, every host runs in a cgroup of
its own (`<hierarchy>/storage-driver-hosts/<host>`): a process cannot leave a cgroup by
forking or by setsid(), so killing every pid in it ends the tree. Where no cgroup hierarchy is
writable (a container whose cgroup filesystem is read-only), the tree is found by session: the
host is a session leader (the launcher starts it with a new session), and every process in that
session is killed; a process that called setsid() is no longer in it and escapes.

The same code runs in the launcher (agent or supervisor: create, end and remove the cgroup) and
in the host (join its cgroup at start, end the rest of its tree on exit), so it uses nothing but
the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from storage_driver_agent.drivers import inuse

log = logging.getLogger(__name__)

TREES_DIR: Final = "storage-driver-hosts"
KILL_TIMEOUT: Final = 5.0
# v1 hierarchies to use, best first: pids and freezer are cheap and present nearly everywhere.
V1_PREFERENCE: Final = ("pids", "freezer", "name=systemd", "cpu", "memory")
V1_NOT_CONTROLLERS: Final = frozenset({"rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode"})


# --- finding a cgroup hierarchy (pure parsing) -----------------------------------------------


@dataclass(frozen=True)
class CgroupMount:
    mount_point: Path
    root: str  # the part of the hierarchy this mount shows (mountinfo field 4)
    version: int  # 1 or 2
    controllers: frozenset[str]  # v1: the hierarchy's controllers (and name=...); v2: empty


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup mounts in /proc/self/mountinfo."""
    mounts = []
    for mount in inuse.parse_mountinfo(text):
        point = Path(mount.point)
        if mount.fstype == "cgroup2":
            mounts.append(CgroupMount(point, mount.root, 2, frozenset()))
        elif mount.fstype == "cgroup":
            words = {o for o in mount.options.split(",") if "=" not in o or o.startswith("name=")}
            mounts.append(CgroupMount(point, mount.root, 1, frozenset(words - V1_NOT_CONTROLLERS)))
    return mounts


def own_cgroups(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {hierarchy key: path}; the v2 hierarchy's key is ''."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            found[""] = path
        for controller in controllers.split(","):
            if controller:
                found[controller] = path
    return found


def candidate_dirs(mounts: Iterable[CgroupMount], own: dict[str, str]) -> list[tuple[str, Path]]:
    """Where host cgroups could go, best first, as (kind, directory to create them in):
    below this process's own cgroup in the v2 hierarchy, then in a v1 hierarchy."""
    found: list[tuple[str, Path]] = []
    by_version = sorted(mounts, key=lambda m: (m.version != 2, _v1_rank(m)))
    for mount in by_version:
        key = "" if mount.version == 2 else next((c for c in V1_PREFERENCE if c in mount.controllers), "")
        if mount.version == 1 and not key:
            key = next(iter(sorted(mount.controllers)), "")
        path = own.get(key)
        if path is None:
            continue
        relative = os.path.relpath(path, mount.root) if path.startswith(mount.root) else "."
        directory = mount.mount_point if relative.startswith("..") else mount.mount_point / relative
        kind = "cgroup v2" if mount.version == 2 else f"cgroup v1 ({key})"
        found.append((kind, Path(os.path.normpath(directory)) / TREES_DIR))
    return found


def _v1_rank(mount: CgroupMount) -> int:
    for rank, name in enumerate(V1_PREFERENCE):
        if name in mount.controllers:
            return rank
    return len(V1_PREFERENCE)


def group_name(socket: Path) -> str:
    """A host's cgroup name, derived from its socket (what identifies a host slot): readable,
    and distinct for two agents (two state directories) on one machine."""
    return f"{socket.stem}-{hosts_dir_suffix(socket.parent)}"


def hosts_dir_suffix(hosts_dir: Path) -> str:
    return hashlib.sha256(str(hosts_dir).encode()).hexdigest()[:8]


# --- processes -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of the session `sid`, found through /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat_fields(int(entry.name))
        if stat is not None and stat[0] not in ("Z", "X") and int(stat[3]) == sid:
            members.append(int(entry.name))
    return members


def group_members(group: Path) -> list[int]:
    try:
        text = (group / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split() if _alive(int(p))]


def _alive(pid: int) -> bool:
    stat = _stat_fields(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _kill_until_gone(members: Callable[[], list[int]], keep: int | None, timeout: float) -> list[int]:
    """SIGKILL every member until none is left. A process forked meanwhile is a member too, and
    a killed process forks no more, so this ends."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in members() if p != keep]
        if not pids:
            return sorted(killed)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        if time.monotonic() > deadline:
            log.warning("processes of a driver host outlived SIGKILL", extra={"pids": pids})
            return sorted(killed)
        time.sleep(0.005)


# --- the two ways to hold a tree -------------------------------------------------------------


@dataclass(frozen=True)
class ProcessTrees:
    """How the launcher keeps and ends host process trees: in cgroups under `base`, or (base
    None) by session."""

    kind: str  # "cgroup v2", "cgroup v1 (pids)", "session"
    base: Path | None = None
    reason: str = ""  # why this kind (for the log line at start)

    def group(self, socket: Path) -> Path | None:
        return None if self.base is None else self.base / group_name(socket)

    def prepare(self, socket: Path) -> list[str]:
        """Before spawning the host of `socket`: its cgroup, emptied of anything a previous host of
        that slot left; returns the arguments that tell the host to join it."""
        group = self.group(socket)
        if group is None:
            return []
        if group.exists():
            self.end(socket, None)
        group.mkdir(parents=True, exist_ok=True)
        return ["--cgroup", str(group)]

    def remove_empty(self, hosts_dir: Path) -> list[str]:
        """At start, before any host is spawned: remove the empty cgroups of this hosts directory
        (a host that ended on its own cannot remove its own); returns their names."""
        if self.base is None:
            return []
        removed = []
        for group in sorted(self.base.glob(f"*-{hosts_dir_suffix(hosts_dir)}")):
            with contextlib.suppress(OSError):  # EBUSY: a host of a running driver is in it
                group.rmdir()
                removed.append(group.name)
        return removed

    def members(self, socket: Path, pid: int) -> list[int]:
        group = self.group(socket)
        return group_members(group) if group is not None else session_members(pid)

    def end(self, socket: Path, pid: int | None, timeout: float = KILL_TIMEOUT) -> list[int]:
        """Kill every process of the host's tree (the host too, if it still runs); remove its
        cgroup. `pid` is the host's (its session id); returns the pids killed."""
        group = self.group(socket)
        if group is None:
            return [] if pid is None else _kill_until_gone(lambda: session_members(pid), None, timeout)
        if not group.exists():
            return []
        with contextlib.suppress(OSError):
            (group / "cgroup.kill").write_text("1")  # v2 on Linux 5.14+: the kernel kills them all
        killed = _kill_until_gone(lambda: group_members(group), None, timeout)
        with contextlib.suppress(OSError):
            group.rmdir()
        return killed


def end_own_tree(group: Path | None, timeout: float = 2.0) -> list[int]:
    """In the host, before it exits: kill every other process of its tree (its cgroup, else its
    session), so that a host ending on its own (adoption window, SIGTERM) leaves nothing behind."""
    me = os.getpid()
    if group is not None:
        return _kill_until_gone(lambda: group_members(group), me, timeout)
    return _kill_until_gone(lambda: session_members(os.getsid(0)), me, timeout)


def join(group: Path) -> None:
    """Move this process into `group` (the host does it first thing, before any driver code),
    unless it was created there (template.HostForker): a move costs the kernel a grace period."""
    procs = group / "cgroup.procs"
    if str(os.getpid()) not in procs.read_text().split():
        procs.write_text(str(os.getpid()))


# --- choosing ---------------------------------------------------------------------------------

AUTO: Final = "auto"
OFF: Final = "off"


def _usable(base: Path) -> str | None:
    """None if host cgroups can be made under `base` and a process moved into one; else why not."""
    import subprocess  # here only: the host imports this module and starts nothing

    probe = base / f"probe-{os.getpid()}"
    child: subprocess.Popen[bytes] | None = None
    try:
        probe.mkdir(parents=True, exist_ok=True)
        child = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL)
        (probe / "cgroup.procs").write_text(str(child.pid))
        return None
    except OSError as exc:
        return f"{base}: {exc.strerror or exc}"
    finally:
        if child is not None:
            child.kill()
            child.wait()
        with contextlib.suppress(OSError):
            probe.rmdir()


def choose(setting: str = AUTO, proc: Path = Path("/proc/self")) -> ProcessTrees:
    """The ProcessTrees for this node: `setting` is auto (the first usable cgroup hierarchy,
    else sessions), off (sessions), or a directory to create host cgroups in."""
    if setting == OFF:
        return ProcessTrees("session", None, "host cgroups are turned off")
    if setting != AUTO:
        base = Path(setting)
        if (why := _usable(base)) is not None:
            raise ValueError(f"--host-cgroup {setting}: cannot create and join cgroups there ({why})")
        return ProcessTrees(_kind_of(base), base, "as configured")
    try:
        candidates = candidate_dirs(
            parse_mountinfo((proc / "mountinfo").read_text()), own_cgroups((proc / "cgroup").read_text())
        )
    except OSError as exc:
        return ProcessTrees("session", None, f"cannot read the cgroup mounts: {exc}")
    problems = []
    for kind, base in candidates:
        why = _usable(base)
        if why is None:
            return ProcessTrees(kind, base, "the first writable cgroup hierarchy")
        problems.append(why)
    return ProcessTrees(
        "session",
        None,
        "no writable cgroup hierarchy (" + ("; ".join(problems) or "none mounted") + ")",
    )


def _kind_of(base: Path) -> str:
    return "cgroup v2" if (base.parent / "cgroup.controllers").exists() else "cgroup v1"


def describe(trees: ProcessTrees) -> str:
    """The log line at start: how host trees are held, and what escapes."""
    if trees.base is not None:
        return f"driver host process trees are held in {trees.kind} groups under {trees.base}"
    return (
        f"driver host process trees are tracked by session only ({trees.reason}): a process a driver "
        "starts that calls setsid() leaves the session and survives unload"
    )


def add_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--host-cgroup, for the agent (direct launcher) and the supervisor."""
    parser.add_argument(
        "--host-cgroup",
        default=os.environ.get("STORAGE_AGENT_HOST_CGROUP", AUTO),
        help="where each driver host gets a cgroup, so unloading ends every process a driver started: "
        "auto (the first writable cgroup hierarchy, else process sessions), off (process sessions only), "
        "or a cgroup directory (default: $STORAGE_AGENT_HOST_CGROUP, else %(default)s)",
    )
