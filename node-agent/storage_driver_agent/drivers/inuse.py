"""Whether a device is still in use, and what that means for a detach or an unload.

Pure: the reads of /proc/self/mountinfo and /sys/class/block happen in usage.py; this module
parses what they return, names what holds a device, and decides whether the action the state
machine chose may run now.

A block device is in use while a filesystem of it (or of one of its partitions) is mounted, or
while another device is built on it (its `holders/` in sysfs: device-mapper, md, bcache). An
action that would detach such a device (an unload, or a Bind that drops it) waits, and the
reconcile loop asks again after a recheck interval, unless the StorageDriver's
`unloadPolicy.force` says to detach anyway. A reload (new version, file or config) is not held
back: the same device is attached to the new host at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from storage_driver_agent.drivers.statemachine import Action, Bind, DriverState, Stop, StopReason, Wait

Holders = tuple[str, ...]
UNGUARDED_STOPS: Final = frozenset({StopReason.RELOAD})


@dataclass(frozen=True)
class Mount:
    """One line of /proc/<pid>/mountinfo."""

    device: str  # major:minor of the mounted filesystem's device (field 3)
    root: str  # the directory of that filesystem the mount shows (field 4)
    point: str  # where it is mounted (field 5)
    fstype: str
    source: str  # e.g. /dev/loop3
    options: str = ""  # the filesystem's own options


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        chunk = text[i + 1 : i + 4]
        if text[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Every mount in a mountinfo file; lines that do not have its shape are skipped."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or len(extra) < 2:
            continue
        mounts.append(
            Mount(
                device=fields[2],
                root=_unescape(fields[3]),
                point=_unescape(fields[4]),
                fstype=extra[0],
                source=_unescape(extra[1]),
                options=extra[2] if len(extra) > 2 else "",
            )
        )
    return mounts


@dataclass(frozen=True)
class BlockDevice:
    """What sysfs says of one block device: its number, its partitions' and their holders."""

    name: str  # kernel name, e.g. loop3
    numbers: Mapping[str, str] = field(
        default_factory=dict
    )  # kernel name -> major:minor (itself and partitions)
    holders: Mapping[str, Holders] = field(default_factory=dict)  # kernel name -> holders/ entries


def holders_of(device: BlockDevice, mounts: Sequence[Mount]) -> Holders:
    """What holds the device, in words: 'loop3 mounted at /mnt', 'loop3p1 held by dm-0'. Empty
    when it is free. Each mount point is named once (a bind mount of the same filesystem counts
    as another mount point)."""
    found: list[str] = []
    by_number = {number: name for name, number in device.numbers.items()}
    for mount in mounts:
        name = by_number.get(mount.device)
        if name is not None:
            text = f"{name} mounted at {mount.point}"
            if text not in found:
                found.append(text)
    for name in sorted(device.holders):
        found.extend(f"{name} held by {holder}" for holder in sorted(device.holders[name]))
    return tuple(found)


def detaching(action: Action, state: DriverState) -> frozenset[str]:
    """The devices `action` would detach and that in-use checks guard."""
    host = state.host
    if isinstance(action, Stop) and action.reason not in UNGUARDED_STOPS and host is not None:
        return host.attached
    if isinstance(action, Bind):
        return action.detach
    return frozenset()


@dataclass(frozen=True)
class Guarded:
    """The action that may run now, and the devices in use it waits for or detaches anyway."""

    action: Action
    blocked: Mapping[str, Holders] = field(default_factory=dict)  # waited for
    forced: Mapping[str, Holders] = field(default_factory=dict)  # detached although in use


def guard(
    action: Action,
    state: DriverState,
    in_use: Mapping[str, Holders],
    *,
    force: bool,
    now: float,
    recheck: float,
) -> Guarded:
    """`action` unless it would detach a device in use: then, without `force`, a Wait for the
    next check (an unload) or the same Bind without those devices (a detach)."""
    busy = {name: in_use[name] for name in sorted(detaching(action, state)) if in_use.get(name)}
    if not busy:
        return Guarded(action)
    if force:
        return Guarded(action, forced=busy)
    retry = Wait(now + recheck)
    if isinstance(action, Bind):
        rest = replace(action, detach=action.detach - frozenset(busy))
        return Guarded(rest if rest.attach or rest.detach else retry, blocked=busy)
    return Guarded(retry, blocked=busy)


def describe(blocked: Mapping[str, Holders]) -> str:
    """'dev-a (loop3 mounted at /mnt); dev-b (held by dm-0)' for messages and Events."""
    return "; ".join(f"{name} ({', '.join(holders)})" for name, holders in sorted(blocked.items()))
