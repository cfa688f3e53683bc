"""Why the agent's DaemonSet needs no host network (docs/security.md), checked on this kernel:
kernel uevents of a real loop device reach a listener in a fresh network namespace, and do not
reach one in a fresh user namespace (so the agent must not run with `hostUsers: false`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.conftest import require
from tests.harness.loopdev import LoopDevice

# Binds a NETLINK_KOBJECT_UEVENT socket to the kernel's multicast group 1, says "ready", then
# prints the first line (ACTION@DEVPATH) of every uevent until stdin closes.
LISTENER = r"""
import select, socket, sys
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15)
sock.bind((0, 1))
print("ready", flush=True)
while True:
    ready, _, _ = select.select([sock, sys.stdin], [], [], 30)
    if sys.stdin in ready or not ready:
        break
    print(sock.recv(65536).split(b"\0")[0].decode(errors="replace"), flush=True)
"""


@contextmanager
def listener(*unshare: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        ["unshare", *unshare, sys.executable, "-c", LISTENER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line == "ready", (
            f"listener in unshare {unshare} did not start: {line!r} {process.stderr.read() if process.stderr else ''}"
        )
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def events_of(process: subprocess.Popen[str], device: LoopDevice) -> list[str]:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()  # the listener stops reading and exits
    process.wait(timeout=40)
    return [line for line in process.stdout.read().splitlines() if line.endswith(f"/block/{device.name}")]


def test_uevents_reach_network_namespaces_but_not_user_namespaces(
    loop_devices: Callable[..., LoopDevice],
) -> None:
    require(None if shutil.which("unshare") else "unshare (util-linux) is missing")
    with listener("--net") as in_netns, listener("--user", "--map-root-user", "--net") as in_userns:
        device = loop_devices(size_bytes=4 * 1024 * 1024)
        time.sleep(1.0)  # uevents are delivered at once; this leaves room for a slow machine
        netns_events = events_of(in_netns, device)
        userns_events = events_of(in_userns, device)
    assert netns_events, (
        f"no uevent for {device.name} in a separate network namespace: hostNetwork would be needed"
    )
    assert userns_events == [], f"uevents reached a user namespace: {userns_events}"
