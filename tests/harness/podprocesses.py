"""What a pod's containers really are on this machine, seen from the host: their processes,
cgroups, user, capabilities and root filesystem, read from /proc and containerd, not from the
pod's spec (which says what was asked, not what ran)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.daemons import ClusterConfig
from tests.harness.localnode import ctr

CAP_SYS_ADMIN = 1 << 21  # what a privileged container has and no other of the chart's


@dataclass(frozen=True)
class HostProcess:
    pid: int
    cmdline: list[str]
    cgroup: str  # the pids hierarchy's path (every process is in it, on v1 and v2)

    def status(self) -> dict[str, str]:
        lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}

    @property
    def uid(self) -> int:
        return int(self.status()["Uid"].split()[1])  # effective

    @property
    def effective_capabilities(self) -> int:
        return int(self.status()["CapEff"], 16)

    def mount_options(self, mount_point: str) -> set[str]:
        """The options of the mount at `mount_point` in the process's own mount namespace."""
        for line in Path(f"/proc/{self.pid}/mountinfo").read_text().splitlines():
            fields = line.split()
            if fields[4] == mount_point:
                return set(fields[5].split(","))
        raise AssertionError(f"no mount at {mount_point} for pid {self.pid}")

    def alive(self) -> bool:
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"


def _cgroup_of(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "pids" in controllers.split(",") or controllers == "":
                return path
    except OSError:
        return None
    return None


def processes(match: str) -> list[HostProcess]:
    """Every live process whose pids cgroup path contains `match` (a pod uid, a container id)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        cgroup = _cgroup_of(int(proc.name))
        if cgroup is None or match not in cgroup:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        except OSError:
            continue
        process = HostProcess(int(proc.name), cmdline, cgroup)
        if process.alive():
            found.append(process)
    return sorted(found, key=lambda p: p.pid)


def container_id(pod: dict[str, Any], container: str) -> str:
    for status in pod["status"].get("containerStatuses") or []:
        if status["name"] == container and status.get("containerID"):
            return str(status["containerID"]).split("://", 1)[1]
    raise AssertionError(f"container {container} of pod {pod['metadata']['name']} has not started")


def container_main_process(cfg: ClusterConfig, pod: dict[str, Any], container: str) -> HostProcess:
    """The container's first process (its pid 1), as containerd knows it."""
    cid = container_id(pod, container)
    for line in ctr(cfg, "tasks", "list").splitlines()[1:]:
        task, pid, *_ = line.split()
        if task == cid:
            for process in processes(cid):
                if process.pid == int(pid):
                    return process
    raise AssertionError(f"containerd has no running task for container {container} ({cid})")


def driver_hosts(match: str = "") -> list[HostProcess]:
    """Driver host processes on this machine (optionally only in cgroups matching `match`)."""
    return [
        p
        for p in (processes(match) if match else processes("/"))
        if "storage_driver_agent.drivers.host" in p.cmdline
    ]


# The interpreter of the project's images (images/Containerfile): a driver host started by a
# pod runs it, one started by a process-level test runs the checkout's.
IMAGE_PYTHON = "/opt/storage-driver-operator/bin/python"


def image_driver_hosts() -> list[HostProcess]:
    """Driver hosts on this machine that the project's pods started (their images' interpreter)."""
    return [p for p in driver_hosts() if p.cmdline[:1] == [IMAGE_PYTHON]]
