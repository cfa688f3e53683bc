"""Finding where driver host cgroups can go, from /proc/self/mountinfo and /proc/self/cgroup."""

from __future__ import annotations

from pathlib import Path

from storage_driver_agent.drivers.proctree import (
    TREES_DIR,
    candidate_dirs,
    group_name,
    own_cgroups,
    parse_mountinfo,
)

HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_SELF = """\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/0d66
1:cpu:/
0::/
"""


def test_a_hybrid_node_offers_its_v2_hierarchy_first_then_v1_pids() -> None:
    dirs = candidate_dirs(parse_mountinfo(HYBRID_MOUNTS), own_cgroups(HYBRID_SELF))
    assert dirs[:3] == [
        ("cgroup v2", Path("/sys/fs/cgroup/unified") / TREES_DIR),
        ("cgroup v1 (pids)", Path("/sys/fs/cgroup/pids") / TREES_DIR),
        ("cgroup v1 (freezer)", Path("/sys/fs/cgroup/freezer") / TREES_DIR),
    ]
    # Below this process's own cgroup, where it is not the root.
    assert ("cgroup v1 (memory)", Path("/sys/fs/cgroup/memory/process_api/0d66") / TREES_DIR) in dirs


def test_mount_options_are_not_taken_for_controllers() -> None:
    systemd = [m for m in parse_mountinfo(HYBRID_MOUNTS) if m.mount_point.name == "systemd"]
    assert systemd[0].controllers == {"name=systemd"}


def test_a_pure_v2_node_inside_a_pod_uses_the_pods_own_cgroup() -> None:
    # Without a cgroup namespace the mount shows the whole hierarchy and /proc/self/cgroup the
    # full path; with one, both are "/".
    mounts = "28 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    own = own_cgroups("0::/kubepods/burstable/pod1/abc\n")
    assert candidate_dirs(parse_mountinfo(mounts), own) == [
        ("cgroup v2", Path("/sys/fs/cgroup/kubepods/burstable/pod1/abc") / TREES_DIR)
    ]
    namespaced = candidate_dirs(parse_mountinfo(mounts), own_cgroups("0::/\n"))
    assert namespaced == [("cgroup v2", Path("/sys/fs/cgroup") / TREES_DIR)]


def test_a_mount_of_part_of_the_hierarchy_maps_the_path_below_its_root() -> None:
    mounts = "40 31 0:36 /kubepods/pod1 /sys/fs/cgroup/pids ro,nosuid - cgroup cgroup rw,pids\n"
    own = own_cgroups("8:pids:/kubepods/pod1/ctr\n")
    assert candidate_dirs(parse_mountinfo(mounts), own) == [
        ("cgroup v1 (pids)", Path("/sys/fs/cgroup/pids/ctr") / TREES_DIR)
    ]


def test_no_cgroup_mount_means_no_candidate() -> None:
    assert candidate_dirs(parse_mountinfo("22 1 0:5 / /proc rw - proc proc rw\n"), own_cgroups("")) == []


def test_group_names_differ_per_state_directory_and_stay_readable() -> None:
    a = group_name(Path("/var/lib/a/hosts/loop-info-0123456789.sock"))
    b = group_name(Path("/var/lib/b/hosts/loop-info-0123456789.sock"))
    assert a != b and a.startswith("loop-info-0123456789-") and len(a) < 64
