"""Whether a device is in use, and which detaches and unloads wait for it (drivers/inuse.py), and
the thin reader of sysfs and the mount table (drivers/usage.py) on a recorded tree."""

from __future__ import annotations

from pathlib import Path

from storage_driver_agent.drivers.inuse import (
    BlockDevice,
    Guarded,
    Mount,
    detaching,
    guard,
    holders_of,
    parse_mountinfo,
)
from storage_driver_agent.drivers.statemachine import (
    IDLE,
    Bind,
    Desired,
    DriverState,
    Host,
    SourceRef,
    Start,
    Stop,
    StopReason,
    Wait,
)
from storage_driver_agent.drivers.usage import UsageReader

MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/a
45 27 7:3 / /tmp/data\\040dir rw,relatime - ext4 /dev/loop3 rw
46 27 7:3 /sub /srv/bind rw,relatime - ext4 /dev/loop3 rw
47 27 259:2 / /boot rw - vfat /dev/nvme0n1p2 rw,fmask=0022
48 27 7:3 / /tmp/data\\040dir rw,relatime - ext4 /dev/loop3 rw
malformed line without separator
"""


def test_the_mount_table_is_read_with_its_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 5
    assert mounts[1] == Mount("7:3", "/", "/tmp/data dir", "ext4", "/dev/loop3", "rw")
    assert mounts[2].root == "/sub" and mounts[2].point == "/srv/bind"


def test_a_mounted_device_names_each_mount_point_once() -> None:
    loop3 = BlockDevice("loop3", {"loop3": "7:3"})
    assert holders_of(loop3, parse_mountinfo(MOUNTINFO)) == (
        "loop3 mounted at /tmp/data dir",
        "loop3 mounted at /srv/bind",
    )


def test_a_disk_is_in_use_through_its_partitions_and_holders() -> None:
    disk = BlockDevice(
        "nvme0n1",
        {"nvme0n1": "259:0", "nvme0n1p1": "259:1", "nvme0n1p2": "259:2"},
        {"nvme0n1p1": ("dm-0", "md127")},
    )
    assert holders_of(disk, parse_mountinfo(MOUNTINFO)) == (
        "nvme0n1p2 mounted at /boot",
        "nvme0n1p1 held by dm-0",
        "nvme0n1p1 held by md127",
    )


def test_a_device_nothing_uses_is_free() -> None:
    assert holders_of(BlockDevice("loop4", {"loop4": "7:4"}), parse_mountinfo(MOUNTINFO)) == ()


# --- which actions wait ------------------------------------------------------------------------

DESIRED = Desired("d", "Probe", "1.0.0", SourceRef("hostPath", "p.py"), "{}")
HOST = Host(10, "Probe", "1.0.0", "a" * 64, "{}", frozenset({"dev-a", "dev-b"}))
STATE = DriverState("d", desired=DESIRED, host=HOST)
HELD = {"dev-a": ("loop3 mounted at /mnt",)}


def test_an_unload_detaches_every_attached_device_and_a_reload_is_not_guarded() -> None:
    assert detaching(Stop(StopReason.REMOVED), STATE) == {"dev-a", "dev-b"}
    assert detaching(Stop(StopReason.CAPACITY), STATE) == {"dev-a", "dev-b"}
    assert detaching(Stop(StopReason.SOURCE_REMOVED), STATE) == {"dev-a", "dev-b"}
    assert detaching(Stop(StopReason.RELOAD), STATE) == frozenset()
    assert detaching(Bind(frozenset({"dev-c"}), frozenset({"dev-b"})), STATE) == {"dev-b"}
    assert detaching(Start(frozenset({"dev-a"})), STATE) == frozenset()
    assert detaching(Stop(StopReason.REMOVED), DriverState("d")) == frozenset()


def test_an_unload_waits_while_a_device_is_in_use() -> None:
    guarded = guard(Stop(StopReason.REMOVED), STATE, HELD, force=False, now=100.0, recheck=2.0)
    assert guarded == Guarded(Wait(102.0), blocked=HELD)


def test_force_unloads_anyway_and_says_what_was_in_use() -> None:
    stop = Stop(StopReason.REMOVED)
    assert guard(stop, STATE, HELD, force=True, now=100.0, recheck=2.0) == Guarded(stop, forced=HELD)


def test_a_free_device_changes_nothing() -> None:
    stop = Stop(StopReason.REMOVED)
    assert guard(stop, STATE, {}, force=False, now=0.0, recheck=2.0) == Guarded(stop)
    # In use, but not what this action detaches.
    bind = Bind(frozenset(), frozenset({"dev-b"}))
    assert guard(bind, STATE, HELD, force=False, now=0.0, recheck=2.0) == Guarded(bind)
    assert guard(IDLE, STATE, HELD, force=False, now=0.0, recheck=2.0) == Guarded(IDLE)


def test_a_bind_keeps_the_device_in_use_and_does_the_rest() -> None:
    bind = Bind(frozenset({"dev-c"}), frozenset({"dev-a", "dev-b"}))
    guarded = guard(bind, STATE, HELD, force=False, now=5.0, recheck=2.0)
    assert guarded == Guarded(Bind(frozenset({"dev-c"}), frozenset({"dev-b"})), blocked=HELD)
    only = Bind(frozenset(), frozenset({"dev-a"}))
    assert guard(only, STATE, HELD, force=False, now=5.0, recheck=2.0) == Guarded(Wait(7.0), blocked=HELD)


# --- the reader, on a recorded sysfs tree --------------------------------------------------------


def _block(root: Path, name: str, dev: str, holders: tuple[str, ...] = ()) -> Path:
    path = root / "sys" / "class" / "block" / name
    path.mkdir(parents=True)
    (path / "dev").write_text(dev + "\n")
    (path / "holders").mkdir()
    for holder in holders:
        (path / "holders" / holder).mkdir()
    return path


def test_the_reader_finds_mounts_partitions_and_holders(tmp_path: Path) -> None:
    disk = _block(tmp_path, "sdb", "8:16")
    part = disk / "sdb1"
    part.mkdir()
    (part / "partition").write_text("1\n")
    (part / "dev").write_text("8:17\n")
    (part / "holders").mkdir()
    (part / "holders" / "dm-0").mkdir()
    (disk / "queue").mkdir()  # not a partition
    _block(tmp_path, "loop3", "7:3")
    _block(tmp_path, "loop4", "7:4")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    reader = UsageReader(mountinfo, tmp_path)
    specs = {
        "n-sdb": {"kernelName": "sdb"},
        "n-loop3": {"kernelName": "loop3"},
        "n-loop4": {"kernelName": "loop4"},
        "n-nvme": {"kernelName": "nvme0"},  # not a block device
    }
    found = reader.in_use(["n-sdb", "n-loop3", "n-loop4", "n-nvme", "n-gone"], specs)
    assert found == {
        "n-sdb": ("sdb1 held by dm-0",),
        "n-loop3": ("loop3 mounted at /tmp/data dir", "loop3 mounted at /srv/bind"),
    }


def test_without_a_mount_table_nothing_counts_as_mounted(tmp_path: Path) -> None:
    _block(tmp_path, "loop3", "7:3", holders=("dm-1",))
    reader = UsageReader(tmp_path / "missing", tmp_path)
    assert reader.in_use(["n"], {"n": {"kernelName": "loop3"}}) == {"n": ("loop3 held by dm-1",)}
