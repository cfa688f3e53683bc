"""Scenario 8, adversarial input against real processes: a Node whose name has 253 characters,
served end to end by a real agent and operator; and driver files that are not Python, loop
forever at import, fork and exit at import, or allocate without bound, next to a driver that
keeps running through it all. Each bad driver is refused or contained with a reason that names
it, nothing of it keeps running, and the agent goes on serving."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from storage_driver_api.constants import LEASE_PREFIX, STORAGE_DRIVERS, lease_name
from storage_driver_api.kube import LEASES, KubeClient

from tests.e2e.drivers.test_agent import driver, set_drivers, status, wait_phase
from tests.e2e.faults.conftest import event, load_driver, unique_size
from tests.harness.drivers import Agent, desired_driver, pid_alive, short_tmpdir, write_probe
from tests.harness.localcluster import ClusterConfig
from tests.harness.loopdev import LoopDevice
from tests.harness.waiting import consistently, eventually
from tests.integration.operator.conftest import Operator

LONGEST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # a Node name of 253 characters

# --- a node name at the limit ----------------------------------------------------------------


@pytest.fixture
def long_agent(cluster: ClusterConfig, make_node: Callable[..., Any], test_namespace: str) -> Iterator[Agent]:
    runner = Agent(LONGEST, cluster.kubeconfig, test_namespace, short_tmpdir("sdo-long-"))
    write_probe(runner.driver_dir)
    yield runner
    runner.cleanup()
    print(f"--- agent log ---\n{runner.log(200)}")
    shutil.rmtree(runner.root, ignore_errors=True)


async def test_a_node_with_a_253_character_name_is_served_end_to_end(
    clean_cluster: KubeClient,
    make_node: Callable[..., Any],
    long_agent: Agent,
    operator: Operator,
    loop_devices: Callable[..., LoopDevice],
) -> None:
    kube = clean_cluster
    assert len(LONGEST) == 253
    # A kubelet labels its Node with its hostname, which (a label value) has at most 63 characters.
    await make_node(LONGEST, labels={"kubernetes.io/hostname": "long-node"})
    long_agent.start()
    device = loop_devices(size_bytes=unique_size())
    published, _ = await load_driver(kube, long_agent, device, long_agent.root / "probe.journal", "long")
    assert len(published) <= 253 and published.startswith(LONGEST[:200])

    # The agent's Lease exists (a plain `storage-agent-<node>` would be 267 characters, which the
    # API server refuses), names the node in full, and the operator counts the node as live.
    lease = await kube.get_or_none(LEASES, lease_name(LONGEST), namespace=long_agent.namespace)
    assert lease is not None and lease_name(LONGEST) != LEASE_PREFIX + LONGEST
    assert lease["spec"]["holderIdentity"] == LONGEST

    async def counted() -> bool:
        obj = await kube.get_or_none(STORAGE_DRIVERS, "long")
        return ((obj or {}).get("status") or {}).get("loadedNodes") == 1

    await eventually(counted, timeout=30, what="the StorageDriver to count the long-named node")
    # Events about the node's objects are accepted too (their names are cut to fit).
    await eventually(
        lambda: event(kube, "NodeDriverConfig", LONGEST, "Loaded", "long"),
        timeout=30,
        what="the agent's Loaded Event",
    )


# --- driver files that fight back ------------------------------------------------------------

DECLARATION = """
from storage_driver_sdk import DeviceType, storage_driver


@storage_driver("__NAME__", version="1.0.0", supported_devices=[DeviceType.LOOP])
class Driver:
    def start(self, config): ...
    def attach(self, device): ...
    def detach(self, device): ...
    def stop(self): ...
"""

ADVERSARIES = {
    # Not Python at all: the first bytes of an ELF binary.
    "notpython.py": None,
    "spin.py": DECLARATION.replace("__NAME__", "Spin") + "\nwhile True:\n    pass\n",
    "hog.py": DECLARATION.replace("__NAME__", "Hog")
    + "\n_blocks = []\nwhile True:\n    _blocks.append(bytearray(16 << 20))\n",
    # The host forks at import and exits; the child goes on as if it were the host.
    "forker.py": "import os\n"
    "if os.fork() > 0:\n    os._exit(0)\n"
    "open(__file__ + '.pids', 'a').write(f'{os.getpid()}\\n')\n" + DECLARATION.replace("__NAME__", "Forker"),
}


def write_adversaries(directory: Path) -> None:
    for name, text in ADVERSARIES.items():
        path = directory / name
        if text is None:
            path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + os.urandom(64))
        else:
            path.write_text(text)


def forked_children(directory: Path) -> list[int]:
    pids = directory / "forker.py.pids"
    return [int(p) for p in pids.read_text().split()] if pids.exists() else []


async def test_driver_files_that_fight_back_are_refused_or_contained_and_the_agent_serves_on(
    clean_cluster: KubeClient, agent: Agent
) -> None:
    kube = clean_cluster
    write_adversaries(agent.driver_dir)
    agent.start("--load-timeout", "5", "--driver-memory-limit", "200Mi", "--restart-backoff-max", "2")
    node = agent.node
    bad = [
        desired_driver("notpython", path="notpython.py"),
        desired_driver("spin", path="spin.py", driver_name="Spin"),
        desired_driver("hog", path="hog.py", driver_name="Hog"),
        desired_driver("forker", path="forker.py", driver_name="Forker"),
    ]
    await set_drivers(kube, node, [desired_driver("steady"), *bad])
    steady = await wait_phase(kube, node, "steady", "Loaded")

    # The directory scan says what is wrong with the file that is not Python, and the driver
    # naming it is refused with that reason; nothing was started for it.
    async def scanned() -> dict[str, Any] | None:
        for item in (await status(kube, node)).get("available") or []:
            if item.get("file") == "notpython.py" and item.get("error"):
                return dict(item)
        return None

    listed = await eventually(scanned, timeout=30, what="notpython.py listed with its scan error")
    print(f"notpython.py: {listed}")
    refused = await wait_phase(kube, node, "notpython", "Failed")
    assert refused["lastError"]["reason"] == "InvalidDriverFile", refused
    assert "notpython.py" in refused["lastError"]["message"]

    # An import that never ends is cut off by the load timeout; an import that allocates
    # without bound hits the memory limit.
    spin = await wait_phase(kube, node, "spin", "Failed", timeout=60)
    assert spin["lastError"]["reason"] == "LoadTimeout", spin
    hog = await wait_phase(kube, node, "hog", "Failed", timeout=60)
    assert hog["lastError"]["reason"] == "MemoryLimitExceeded", hog

    # Forking at import and exiting: the forked copy answered the load in the host's place.
    # Found broken: the agent took it as loaded, reported the exited host's pid and kept the copy
    # running, unknown to it. Now the load fails, saying so, and the copy ends with the tree.
    forker = await wait_phase(kube, node, "forker", "Failed", timeout=60)
    assert forker["lastError"]["reason"] == "HostForked", forker
    assert "must not fork" in forker["lastError"]["message"]
    assert forked_children(agent.driver_dir)

    async def forks_ended() -> bool:
        return not [p for p in forked_children(agent.driver_dir) if pid_alive(p)]

    await eventually(forks_ended, timeout=30, what="every forked copy to be gone while it is retried")

    # Everything bad removed: none of it keeps running, the steady driver never restarted.
    await set_drivers(kube, node, [desired_driver("steady")])

    async def only_steady() -> bool:
        entries = (await status(kube, node)).get("drivers") or []
        return [e["name"] for e in entries] == ["steady"] and list(agent.hosts()) == [steady["pid"]]

    await eventually(only_steady, timeout=60, what="only the steady driver to be left")

    async def children_gone() -> bool:
        return not [p for p in forked_children(agent.driver_dir) if pid_alive(p)]

    await eventually(children_gone, timeout=30, what="the forker's children to be gone")
    after = await driver(kube, node, "steady")
    assert after is not None and after["pid"] == steady["pid"] and after.get("restarts", 0) == 0
    assert agent.process is not None and agent.process.running

    async def still_serving() -> bool:
        entry = await driver(kube, node, "steady")
        return bool(entry and entry["phase"] == "Loaded")

    await consistently(still_serving, duration=2, what="the steady driver Loaded")
