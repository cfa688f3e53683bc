"""A device in use is not detached: a real storage-operator and storage-agent, a real loop device
with an ext4 filesystem mounted on it, and the probe driver recording every call it gets.

Deleting the StorageDriver, or changing its deviceSelector so the device no longer matches,
must leave the device attached while it is mounted, say so (NodeDriverConfig, StorageDriver,
Events), keep the deletion's finalizer, and unload once it is unmounted; with
`unloadPolicy.force` the unload goes ahead at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage_driver_api.constants import NODE_DRIVER_CONFIGS, STORAGE_DRIVERS
from storage_driver_api.kube import KubeClient

from tests.e2e.drivers.test_agent import driver
from tests.e2e.faults.conftest import condition, event, events_about, load_driver, unique_size
from tests.harness.drivers import Agent, journal, pid_alive
from tests.harness.loopdev import LoopDevice, mount_filesystem, unmount
from tests.harness.waiting import consistently, eventually
from tests.integration.operator.conftest import Operator

NAME = "in-use"


async def loaded_with_a_mounted_device(
    kube: KubeClient,
    agent: Agent,
    loop_devices: Callable[..., LoopDevice],
    mounts: list[Path],
    **spec: Any,
) -> tuple[str, Path, dict[str, Any], Path]:
    """The StorageDriver loaded with its device bound, a filesystem of the device mounted (a
    directory name with a space, as mountinfo escapes it); the NodeDevice, the mount point, the
    driver's status entry and its journal."""
    agent.start("--in-use-recheck", "0.5")
    device = loop_devices(size_bytes=unique_size())
    point = agent.root / "data dir"
    mount_filesystem(device, point)
    mounts.append(point)
    trail = agent.root / "probe.journal"
    name, entry = await load_driver(kube, agent, device, trail, NAME, **spec)
    return name, point, entry, trail


def mounted(point: Path) -> bool:
    return os.path.ismount(point)


def detaches(trail: Path) -> list[dict[str, Any]]:
    return [e for e in journal(trail) if e["event"] in ("detach", "stop")]


async def test_a_mounted_device_blocks_the_unload_until_it_is_unmounted(
    clean_cluster: KubeClient,
    agent: Agent,
    operator: Operator,
    loop_devices: Callable[..., LoopDevice],
    mounts: list[Path],
) -> None:
    kube = clean_cluster
    device, point, loaded, trail = await loaded_with_a_mounted_device(kube, agent, loop_devices, mounts)
    held = f"mounted at {point}"
    await kube.delete(STORAGE_DRIVERS, NAME)

    # The node says what holds the device, and the driver keeps running with it attached.
    async def blocked() -> dict[str, Any] | None:
        entry = await driver(kube, agent.node, NAME)
        return entry if entry and entry.get("unloadBlocked") else None

    entry = await eventually(blocked, timeout=30, what="the agent to report UnloadBlocked")
    assert entry is not None
    assert entry["phase"] == "Unloading" and entry["pid"] == loaded["pid"]
    (blocker,) = entry["unloadBlocked"]
    assert blocker["name"] == device and any(held in h for h in blocker["heldBy"])
    assert entry["message"].startswith("unload blocked:") and held in entry["message"]
    ndc = await condition(kube, NODE_DRIVER_CONFIGS, agent.node, "UnloadBlocked")
    assert ndc["status"] == "True" and held in ndc["message"]
    await eventually(
        lambda: event(kube, "NodeDriverConfig", agent.node, "UnloadBlocked", held),
        what="the agent's UnloadBlocked Event",
    )

    # The StorageDriver says so too, and stays (its finalizer waits for the unload).
    async def reported() -> bool:
        progressing = await condition(kube, STORAGE_DRIVERS, NAME, "Progressing")
        return progressing.get("reason") == "UnloadBlocked" and held in progressing.get("message", "")

    await eventually(reported, timeout=30, what="the StorageDriver to report UnloadBlocked")
    degraded = await condition(kube, STORAGE_DRIVERS, NAME, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "UnloadBlocked")
    await eventually(
        lambda: event(kube, "StorageDriver", NAME, "UnloadBlocked", held),
        what="the operator's UnloadBlocked Event",
    )

    async def still_attached() -> bool:
        sd = await kube.get_or_none(STORAGE_DRIVERS, NAME)
        return sd is not None and pid_alive(loaded["pid"]) and detaches(trail) == []

    await consistently(still_attached, duration=4, what="the driver attached while the device is mounted")
    announced = [
        r for r, _ in await events_about(kube, "NodeDriverConfig", agent.node) if r == "UnloadBlocked"
    ]
    assert len(announced) == 1, "one Event while the same mount holds it"

    # Free: the unload completes, the finalizer goes, and the StorageDriver with it.
    unmount(point)

    async def deleted() -> bool:
        return await kube.get_or_none(STORAGE_DRIVERS, NAME) is None

    await eventually(deleted, timeout=30, what="the StorageDriver to be deleted after the unmount")
    assert not pid_alive(loaded["pid"])
    assert [(e["event"], e.get("device")) for e in detaches(trail)] == [("detach", device), ("stop", None)]
    freed = await condition(kube, NODE_DRIVER_CONFIGS, agent.node, "UnloadBlocked")
    assert (freed["status"], freed["reason"]) == ("False", "NoDeviceInUse")
    await eventually(
        lambda: event(kube, "NodeDriverConfig", agent.node, "Unloaded", f"{NAME}: unloaded"),
        what="the Unloaded Event",
    )


async def test_a_mounted_device_keeps_the_driver_when_its_match_is_removed(
    clean_cluster: KubeClient,
    agent: Agent,
    operator: Operator,
    loop_devices: Callable[..., LoopDevice],
    mounts: list[Path],
) -> None:
    kube = clean_cluster
    device, point, loaded, trail = await loaded_with_a_mounted_device(kube, agent, loop_devices, mounts)
    held = f"mounted at {point}"
    # No device matches any more: the operator drops the driver from the node at once.
    await kube.patch(
        STORAGE_DRIVERS,
        NAME,
        {"spec": {"deviceSelector": [{"key": "sizeBytes", "operator": "Lt", "values": ["1"]}]}},
    )

    async def failing() -> list[dict[str, Any]]:
        sd = await kube.get(STORAGE_DRIVERS, NAME)
        return [
            f for f in (sd.get("status") or {}).get("failingNodes") or [] if f["reason"] == "UnloadBlocked"
        ]

    (node_failing,) = await eventually(failing, timeout=30, what="the StorageDriver to list the node")
    assert node_failing["node"] == agent.node and held in node_failing["message"]
    degraded = await condition(kube, STORAGE_DRIVERS, NAME, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "UnloadBlocked")
    entry = await driver(kube, agent.node, NAME)
    assert entry is not None and entry["pid"] == loaded["pid"] and entry["boundDevices"] == [device]
    assert detaches(trail) == []

    unmount(point)

    async def unloaded() -> bool:
        return await driver(kube, agent.node, NAME) is None

    await eventually(unloaded, timeout=30, what="the unload after the unmount")
    assert [(e["event"], e.get("device")) for e in detaches(trail)] == [("detach", device), ("stop", None)]

    async def ready_again() -> bool:
        ready = await condition(kube, STORAGE_DRIVERS, NAME, "Ready")
        return ready.get("status") == "True"

    await eventually(ready_again, timeout=30, what="the StorageDriver Ready with nothing failing")


async def test_force_detaches_a_mounted_device(
    clean_cluster: KubeClient,
    agent: Agent,
    operator: Operator,
    loop_devices: Callable[..., LoopDevice],
    mounts: list[Path],
) -> None:
    kube = clean_cluster
    device, point, loaded, trail = await loaded_with_a_mounted_device(
        kube, agent, loop_devices, mounts, unloadPolicy={"force": True}
    )
    ndc = await kube.get(NODE_DRIVER_CONFIGS, agent.node)
    assert [d.get("forceUnload") for d in ndc["spec"]["drivers"]] == [True]
    await kube.delete(STORAGE_DRIVERS, NAME)

    async def deleted() -> bool:
        return await kube.get_or_none(STORAGE_DRIVERS, NAME) is None

    await eventually(deleted, timeout=30, what="the StorageDriver deleted although its device is mounted")
    assert not pid_alive(loaded["pid"])
    assert [(e["event"], e.get("device")) for e in detaches(trail)] == [("detach", device), ("stop", None)]
    await eventually(
        lambda: event(kube, "NodeDriverConfig", agent.node, "UnloadForced", f"mounted at {point}"),
        what="the UnloadForced Event naming the mount",
    )
    assert mounted(point), "force detaches the driver; it does not unmount anything"
