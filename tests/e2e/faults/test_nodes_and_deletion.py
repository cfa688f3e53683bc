"""Issue 13, scenarios 5 and 6, on the real control plane (its garbage collector included) with a
real storage-operator, a real storage-agent and its driver hosts, and a real loop device.

5. A Node deleted and created again with the same name: what belonged to the old one is
   collected, nothing of it is reused, and the new one converges (the driver runs there again,
   once).
6. A StorageDriver deleted while the operator is down, while the agent is down (and comes back,
   or never does), and while its node is gone for good: the finalizer is released exactly when
   nothing runs the driver any more, or when nothing can report it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage_driver_api.constants import (
    LEASE_PREFIX,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import LEASES, NODES, KubeClient
from storage_driver_operator.views import parse_time

from tests.e2e.drivers.test_agent import driver
from tests.e2e.faults.conftest import load_driver, unique_size
from tests.e2e.faults.nothing_lost import starts_and_stops
from tests.harness.drivers import Agent, journal, pid_alive
from tests.harness.loopdev import LoopDevice
from tests.harness.waiting import consistently, eventually
from tests.integration.operator.conftest import Operator

NAME = "fault-probe"


def owner_uids(obj: dict[str, Any]) -> list[str]:
    return [o["uid"] for o in obj["metadata"].get("ownerReferences") or []]


async def per_node_objects(kube: KubeClient, agent: Agent) -> dict[str, dict[str, Any]]:
    """The NodeDriverConfig, the Lease and the NodeDevices of the agent's node, by kind/name."""
    found: dict[str, dict[str, Any]] = {}
    config = await kube.get_or_none(NODE_DRIVER_CONFIGS, agent.node)
    if config is not None:
        found[f"NodeDriverConfig/{agent.node}"] = config
    lease = await kube.get_or_none(LEASES, LEASE_PREFIX + agent.node, namespace=agent.namespace)
    if lease is not None:
        found[f"Lease/{LEASE_PREFIX + agent.node}"] = lease
    devices, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={node_label_value(agent.node)}")
    for item in devices:
        found[f"NodeDevice/{item['metadata']['name']}"] = item
    return found


def reported_loaded(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The probe driver's status entry when the NodeDriverConfig's status claims its current
    generation and says the driver is Loaded."""
    status = (config or {}).get("status") or {}
    if config is None or status.get("observedGeneration") != config["metadata"]["generation"]:
        return None
    entry = next((d for d in status.get("drivers") or [] if d["name"] == NAME), None)
    return dict(entry) if entry and entry["phase"] == "Loaded" else None


async def test_a_node_deleted_and_created_again_is_collected_and_converges(
    clean_cluster: KubeClient,
    agent: Agent,
    operator: Operator,
    loop_devices: Callable[..., LoopDevice],
    make_node: Callable[..., Any],
) -> None:
    kube = clean_cluster
    agent.start()
    device = loop_devices(size_bytes=unique_size())
    trail = agent.root / "probe.journal"
    published, _ = await load_driver(kube, agent, device, trail, NAME)
    old_node = (await kube.get(NODES, agent.node))["metadata"]["uid"]
    before = await per_node_objects(kube, agent)
    assert {
        f"NodeDriverConfig/{agent.node}",
        f"Lease/{LEASE_PREFIX + agent.node}",
        f"NodeDevice/{published}",
    } <= set(before)
    assert all(owner_uids(obj) == [old_node] for obj in before.values())
    old_uids = {obj["metadata"]["uid"] for obj in before.values()}

    await kube.delete(NODES, agent.node)

    async def collected() -> bool:
        now = await per_node_objects(kube, agent)
        return not any(o["metadata"]["uid"] in old_uids or old_node in owner_uids(o) for o in now.values())

    await eventually(collected, timeout=60, what="the garbage collector to delete the old node's objects")
    new_node = (await make_node(agent.node))["metadata"]["uid"]
    assert new_node != old_node

    async def converged() -> dict[str, Any] | None:
        entry = reported_loaded(await kube.get_or_none(NODE_DRIVER_CONFIGS, agent.node))
        return entry if entry and entry.get("boundDevices") == [published] else None

    try:
        entry = await eventually(converged, timeout=90, what="the new node to run the driver with its device")
    except AssertionError:
        now = await per_node_objects(kube, agent)
        print(
            "--- the new node's objects ---",
            {k: (v["metadata"]["uid"], owner_uids(v)) for k, v in now.items()},
        )
        raise
    assert entry is not None
    after = await per_node_objects(kube, agent)
    # Everything per-node is new, and owned by the new Node: nothing of the old one is reused.
    assert {
        f"NodeDriverConfig/{agent.node}",
        f"Lease/{LEASE_PREFIX + agent.node}",
        f"NodeDevice/{published}",
    } <= set(after)
    for key, obj in after.items():
        assert obj["metadata"]["uid"] not in old_uids, f"{key} is the old node's object"
        assert owner_uids(obj) == [new_node], f"{key} is not owned by the new Node"

    # The device's boundDrivers is its own write, a moment after the NodeDriverConfig's status.
    async def bound() -> bool:
        device = await kube.get(NODE_DEVICES, published)
        return (device.get("status") or {}).get("boundDrivers") == [NAME]

    await eventually(bound, timeout=30, what="the new NodeDevice to name the driver bound to it")
    # One host runs the driver; the journal shows no second copy at any time (every start
    # after the first followed a stop).
    assert list(agent.hosts().values()) == [NAME]
    starts, stops = starts_and_stops(trail)
    assert starts == stops + 1, journal(trail)

    async def counted() -> bool:
        sd = await kube.get(STORAGE_DRIVERS, NAME)
        return (sd.get("status") or {}).get("loadedNodes") == 1

    # The operator counts the node's report once it has seen it.
    await eventually(counted, timeout=30, what="the StorageDriver to count the new node's load")


# --- scenario 6: deleting a StorageDriver while a part is missing --------------------------------


async def finalizer_held(kube: KubeClient) -> bool:
    sd = await kube.get_or_none(STORAGE_DRIVERS, NAME)
    return (
        sd is not None
        and bool(sd["metadata"].get("deletionTimestamp"))
        and bool(sd["metadata"].get("finalizers"))
    )


async def gone(kube: KubeClient) -> bool:
    return await kube.get_or_none(STORAGE_DRIVERS, NAME) is None


def stops(trail: Path) -> int:
    return sum(1 for e in journal(trail) if e["event"] == "stop")


async def test_a_node_driver_config_deleted_by_hand_comes_back_with_the_truth(
    clean_cluster: KubeClient,
    agent: Agent,
    operator: Operator,
    loop_devices: Callable[..., LoopDevice],
) -> None:
    """`kubectl delete nodedriverconfig <node>` while a driver runs: the object comes back (a new
    uid), and its status, once it claims the spec's generation, says what runs on the node. The
    status the agent last wrote for the old object (Loaded, at a generation the new object shares)
    is never written to the new one: it would claim a spec the agent has not acted on (the agent
    acts on the empty spec it created, and the driver starts again once the operator writes its
    own)."""
    kube = clean_cluster
    agent.start()
    device = loop_devices(size_bytes=unique_size())
    trail = agent.root / "probe.journal"
    published, _ = await load_driver(kube, agent, device, trail, NAME)
    old = (await kube.get(NODE_DRIVER_CONFIGS, agent.node))["metadata"]["uid"]

    await kube.delete(NODE_DRIVER_CONFIGS, agent.node)

    async def claimed() -> dict[str, Any] | None:
        config = await kube.get_or_none(NODE_DRIVER_CONFIGS, agent.node)
        return reported_loaded(config) if config is not None and config["metadata"]["uid"] != old else None

    entry = await eventually(claimed, timeout=60, what="the recreated NodeDriverConfig to report the driver")
    assert entry is not None and entry.get("boundDevices") == [published]
    config = await kube.get(NODE_DRIVER_CONFIGS, agent.node)
    assert owner_uids(config) == [(await kube.get(NODES, agent.node))["metadata"]["uid"]]
    # Read the moment the status says Loaded: a host runs the driver, and the journal's last
    # word is a start (a stop after it would mean the status describes a host already gone).
    assert list(agent.hosts().values()) == [NAME]
    starts, stops = starts_and_stops(trail)
    assert starts == stops + 1, journal(trail)


async def test_deleted_while_the_operator_is_down_it_unloads_when_the_operator_returns(
    clean_cluster: KubeClient, agent: Agent, operator: Operator, loop_devices: Callable[..., LoopDevice]
) -> None:
    kube = clean_cluster
    agent.start()
    device = loop_devices(size_bytes=unique_size())
    trail = agent.root / "probe.journal"
    _, entry = await load_driver(kube, agent, device, trail, NAME)
    operator.stop()
    await kube.delete(STORAGE_DRIVERS, NAME)

    # Nobody may release the finalizer, and nothing unloads, while the operator is away.
    async def waiting() -> bool:
        return await finalizer_held(kube) and pid_alive(entry["pid"]) and stops(trail) == 0

    await consistently(waiting, duration=5, what="the deletion to wait for the operator")
    await operator.start()
    await eventually(lambda: gone(kube), timeout=60, what="the StorageDriver to go after the unload")
    assert not pid_alive(entry["pid"]) and stops(trail) == 1
    assert await driver(kube, agent.node, NAME) is None


async def test_deleted_while_the_agent_is_down_it_waits_for_the_agent_that_returns(
    clean_cluster: KubeClient, agent: Agent, operator: Operator, loop_devices: Callable[..., LoopDevice]
) -> None:
    kube = clean_cluster
    agent.start("--lease-duration", "20")
    device = loop_devices(size_bytes=unique_size())
    trail = agent.root / "probe.journal"
    _, entry = await load_driver(kube, agent, device, trail, NAME)
    agent.kill()  # the host stays, for the next agent to adopt
    await kube.delete(STORAGE_DRIVERS, NAME)

    async def waiting() -> bool:
        return await finalizer_held(kube) and pid_alive(entry["pid"])

    # The operator removed the entry from the spec, but the agent's Lease is fresh and its last
    # report says Loaded: the driver may still run, so the finalizer stays.
    async def unlisted() -> bool:
        config = await kube.get(NODE_DRIVER_CONFIGS, agent.node)
        return NAME not in [d["name"] for d in config["spec"].get("drivers") or []]

    await eventually(unlisted, timeout=30, what="the operator to drop the driver from the node's spec")
    await consistently(waiting, duration=4, what="the deletion to wait for the agent")
    agent.start("--lease-duration", "20")
    await eventually(
        lambda: gone(kube), timeout=60, what="the StorageDriver to go after the adopted host unloads"
    )
    assert not pid_alive(entry["pid"]) and stops(trail) == 1


async def test_deleted_while_the_agent_stays_away_it_goes_when_the_lease_expires(
    clean_cluster: KubeClient, agent: Agent, operator: Operator, loop_devices: Callable[..., LoopDevice]
) -> None:
    kube = clean_cluster
    agent.start("--lease-duration", "10", "--adoption-window", "5")
    device = loop_devices(size_bytes=unique_size())
    trail = agent.root / "probe.journal"
    _, entry = await load_driver(kube, agent, device, trail, NAME)
    agent.kill()
    lease = await kube.get(LEASES, LEASE_PREFIX + agent.node, namespace=agent.namespace)
    await kube.delete(STORAGE_DRIVERS, NAME)
    renewed = parse_time(lease["spec"]["renewTime"])
    assert renewed is not None
    expires = renewed + 10

    # Held while the Lease is fresh (nothing says the driver stopped) ...
    while time.time() < expires - 1.5:
        assert await finalizer_held(kube), "the finalizer went while the agent's Lease was fresh"
        await asyncio.sleep(0.3)
    # ... and released once it expired: nothing there can report, and the host, with no agent to
    # adopt it, stopped its driver after the adoption window.
    await eventually(lambda: gone(kube), timeout=30, what="the finalizer released after the Lease expired")
    await eventually(lambda: _dead(entry["pid"]), timeout=30, what="the unadopted host to stop on its own")


async def test_deleted_after_its_node_is_gone_for_good_it_goes_at_once(
    clean_cluster: KubeClient, agent: Agent, operator: Operator, loop_devices: Callable[..., LoopDevice]
) -> None:
    kube = clean_cluster
    agent.start("--lease-duration", "120", "--adoption-window", "5")
    device = loop_devices(size_bytes=unique_size())
    trail = agent.root / "probe.journal"
    _, entry = await load_driver(kube, agent, device, trail, NAME)
    agent.kill()  # the machine is gone: nothing will report from it again
    await kube.delete(NODES, agent.node)

    async def node_gone() -> bool:
        return await kube.get_or_none(NODES, agent.node) is None

    await eventually(node_gone, what="the Node to be deleted")
    started = time.monotonic()
    await kube.delete(STORAGE_DRIVERS, NAME)
    # Well before the Lease (120 s) could expire: a node that no longer exists counts as done.
    await eventually(lambda: gone(kube), timeout=30, what="the finalizer released for a node that is gone")
    assert time.monotonic() - started < 30
    await eventually(lambda: _dead(entry["pid"]), timeout=30, what="the orphaned host to stop on its own")


async def _dead(pid: int) -> bool:
    return not pid_alive(pid)
