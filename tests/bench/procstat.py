"""What a benchmark reads about a process from /proc: resident memory, its peak, unique and
proportional memory, CPU time and wake-ups."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def status_kib(pid: int) -> dict[str, int]:
    """The numeric fields of /proc/PID/status (the memory ones in KiB: VmRSS, VmHWM, RssAnon, ...)."""
    return _numbers(Path(f"/proc/{pid}/status"))


def _numbers(status: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in status.read_text().splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            values[key] = int(words[0])
    return values


def rss_kib(pid: int) -> int:
    return status_kib(pid).get("VmRSS", 0)


def rss_peak_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB: resident now, and its peak (since the start or `reset_peak`)."""
    values = status_kib(pid)
    return values["VmRSS"], values["VmHWM"]


def reset_peak(pid: int) -> bool:
    """Restart VmHWM from the current RSS (Linux 4.0+), so that it is the peak of a window;
    False where the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def smaps_kib(pid: int) -> tuple[int, int]:
    """(USS, PSS) in KiB: the memory only this process holds, and its share of what it shares."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields["Private_Clean"] + fields["Private_Dirty"], fields["Pss"]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (all its threads, live and ended)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wakeups(pid: int) -> int:
    """Voluntary context switches of the process's live threads: each is a sleep that ended,
    i.e. a wake-up (a thread that has ended takes its count with it)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += _numbers(task / "status").get("voluntary_ctxt_switches", 0)
    return total


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"
