"""A real storage-agent on the local control plane, running real driver hosts.

Each test starts the agent for a simulated Node with its own state and driver directories,
writes NodeDriverConfig.spec as the operator would, and checks what a user sees: the status,
the processes, the NodeDevices' boundDrivers, Events, the Lease, and the drivers' own journals.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from storage_driver_api.constants import (
    LEASE_PREFIX,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    node_label_value,
)
from storage_driver_api.kube import EVENTS, LEASES, NODES, KubeClient

from tests.harness.drivers import (
    Agent,
    boot_id,
    desired_driver,
    iter_events,
    journal,
    parent_pid,
    pid_alive,
    probe_source,
    short_tmpdir,
    write_probe,
)
from tests.harness.localcluster import ClusterConfig
from tests.harness.loopdev import LoopDevice, detach
from tests.harness.processes import ComponentProcess, console_script
from tests.harness.waiting import consistently, eventually

NODE = "runtime-node"
EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "drivers"


@pytest.fixture
async def node(make_node: Callable[..., Any]) -> str:
    await make_node(NODE)
    return NODE


@pytest.fixture
def agent(cluster: ClusterConfig, node: str, test_namespace: str) -> Iterator[Agent]:
    runner = Agent(node, cluster.kubeconfig, test_namespace, short_tmpdir())
    runner.driver_dir.mkdir(parents=True)
    yield runner
    runner.cleanup()
    print(f"--- agent log ({runner.log_path}) ---\n{runner.log(200)}")
    shutil.rmtree(runner.root, ignore_errors=True)


# --- helpers ---------------------------------------------------------------------------------


async def set_drivers(kube: KubeClient, node: str, drivers: list[dict[str, Any]]) -> None:
    await kube.patch(NODE_DRIVER_CONFIGS, node, {"spec": {"drivers": drivers}})


async def status(kube: KubeClient, node: str) -> dict[str, Any]:
    obj = await kube.get(NODE_DRIVER_CONFIGS, node)
    return dict(obj.get("status") or {})


async def driver(kube: KubeClient, node: str, name: str) -> dict[str, Any] | None:
    for entry in (await status(kube, node)).get("drivers") or []:
        if entry["name"] == name:
            return dict(entry)
    return None


async def wait_phase(
    kube: KubeClient, node: str, name: str, phase: str, timeout: float = 60
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        entry = await driver(kube, node, name)
        return entry if entry and entry["phase"] == phase else None

    return await until(probe, timeout=timeout, what=f"{name} to be {phase} on {node}")


async def until(
    probe: Callable[[], Awaitable[dict[str, Any] | None]], *, what: str, timeout: float = 30
) -> dict[str, Any]:
    """eventually() for probes that return an object once it is there."""
    result = await eventually(probe, timeout=timeout, what=what)
    assert result is not None
    return result


async def wait_gone(kube: KubeClient, node: str, name: str) -> None:
    async def probe() -> bool:
        return await driver(kube, node, name) is None

    await eventually(probe, timeout=60, what=f"{name} to leave the status of {node}")


async def events(kube: KubeClient, node: str) -> list[tuple[str, str]]:
    items, _ = await kube.list(EVENTS, namespace="default")
    return sorted(iter_events(items, node), key=lambda e: e[1])


async def wait_event(kube: KubeClient, node: str, reason: str, text: str) -> None:
    async def probe() -> bool:
        return any(r == reason and text in m for r, m in await events(kube, node))

    await eventually(probe, timeout=30, what=f"a {reason} event mentioning {text!r}")


async def no_host_left(agent: Agent) -> bool:
    return not agent.hosts()


async def published_device(kube: KubeClient, node: str, device: LoopDevice) -> str:
    """The name of the NodeDevice the agent's device part publishes for an attached loop device."""

    async def probe() -> str | None:
        items, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={node_label_value(node)}")
        for item in items:
            present = any(
                c["type"] == "Present" and c["status"] == "True"
                for c in item.get("status", {}).get("conditions", [])
            )
            # The backing file too: a kernel name (loop4) is reused by the next loop device
            # attached, and another test's may still be published under it.
            ours = item["spec"].get("backingFile") == str(device.backing_file)
            if item["spec"]["kernelName"] == device.name and ours and present:
                return str(item["metadata"]["name"])
        return None

    name = await eventually(probe, what=f"the agent to publish {device.name}")
    assert name is not None
    return name


# --- load, bind, unload ----------------------------------------------------------------------


async def test_load_bind_and_unload_a_real_driver_on_a_real_loop_device(
    clean_cluster: KubeClient, agent: Agent, node: str, loop_devices: Callable[..., LoopDevice]
) -> None:
    kube = clean_cluster
    shutil.copy(EXAMPLES / "loop_info.py", agent.driver_dir / "loop_info.py")
    agent.start()
    device = loop_devices(size_bytes=4 * 1024 * 1024)
    device_name = await published_device(kube, node, device)

    # The agent created the node's NodeDriverConfig, owned by the Node.
    ndc = await kube.get(NODE_DRIVER_CONFIGS, node)
    assert [o["kind"] for o in ndc["metadata"]["ownerReferences"]] == ["Node"]

    await set_drivers(
        kube,
        node,
        [
            desired_driver(
                "loop-info", path="loop_info.py", driver_name="Loop Info Driver", devices=[device_name]
            )
        ],
    )
    await wait_phase(kube, node, "loop-info", "Loaded")
    await eventually(lambda: _bound(kube, node, "loop-info", [device_name]), what="the device to be bound")
    entry = await until(lambda: driver(kube, node, "loop-info"), what="the status entry")
    pid = entry["pid"]
    assert agent.hosts() == {pid: "loop-info"}  # a live process running this driver
    assert entry["sha256"] == hashlib.sha256((EXAMPLES / "loop_info.py").read_bytes()).hexdigest()
    (bound,) = entry["devices"]
    assert bound["facts"]["sizeBytes"] == str(4 * 1024 * 1024)
    assert bound["facts"]["backingFile"] == str(device.backing_file)

    # The device's boundDrivers is its own write, a moment after the NodeDriverConfig's status.
    await eventually(lambda: _bound_devices(kube, device_name, ["loop-info"]), what="boundDrivers")
    full = await status(kube, node)
    assert (full["desiredCount"], full["loadedCount"], full["failedCount"]) == (1, 1, 0)
    assert full["observedGeneration"] == (await kube.get(NODE_DRIVER_CONFIGS, node))["metadata"]["generation"]
    assert full["conditions"][0]["status"] == "True"
    assert full["capacity"] == {"maxLoadedDrivers": 100}
    assert full["bootId"] == boot_id()
    await wait_event(kube, node, "Loaded", f"loop-info: loaded Loop Info Driver 1.0.0 (pid {pid})")

    lease = await kube.get(LEASES, LEASE_PREFIX + node, namespace=agent.namespace)
    assert lease["spec"]["holderIdentity"] == node and lease["spec"]["leaseDurationSeconds"] == 40

    async def renewed() -> bool:
        again = await kube.get(LEASES, LEASE_PREFIX + node, namespace=agent.namespace)
        return bool(again["spec"]["renewTime"] != lease["spec"]["renewTime"])

    await eventually(renewed, what="the lease to be renewed")

    await set_drivers(kube, node, [])
    await eventually(lambda: _dead(pid), timeout=5, what="the host to stop within the grace period (5 s)")
    await wait_gone(kube, node, "loop-info")
    await eventually(lambda: _bound_devices(kube, device_name, []), what="boundDrivers to be emptied")
    await wait_event(kube, node, "Unloaded", f"loop-info: unloaded Loop Info Driver 1.0.0 (pid {pid})")


async def _dead(pid: int) -> bool:
    return not pid_alive(pid)


async def _bound(kube: KubeClient, node: str, name: str, devices: list[str]) -> bool:
    entry = await driver(kube, node, name)
    return entry is not None and entry.get("boundDevices") == devices


async def _bound_devices(kube: KubeClient, device: str, drivers: list[str]) -> bool:
    obj = await kube.get(NODE_DEVICES, device)
    return bool((obj.get("status") or {}).get("boundDrivers", []) == drivers)


async def test_deleting_the_node_collects_the_agents_lease(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    """The Lease is owned by its Node: the real garbage collector (kube-controller-manager)
    deletes it with the Node, and the agent, still running, does not create an ownerless one."""
    kube = clean_cluster
    uid = (await kube.get(NODES, node))["metadata"]["uid"]
    agent.start()

    async def owned() -> dict[str, Any] | None:
        lease = await kube.get_or_none(LEASES, LEASE_PREFIX + node, namespace=agent.namespace)
        return lease if lease and lease["metadata"].get("ownerReferences") else None

    lease = await until(owned, what="the Lease, owned by its Node")
    assert lease["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}
    ]
    await kube.delete(NODES, node)

    async def collected() -> bool:
        return await kube.get_or_none(LEASES, LEASE_PREFIX + node, namespace=agent.namespace) is None

    await eventually(collected, timeout=60, what="the garbage collector to delete the Lease")
    await consistently(collected, duration=5, what="no new Lease without a Node")


async def test_devices_are_attached_and_detached_as_they_come_and_go(
    clean_cluster: KubeClient, agent: Agent, node: str, loop_devices: Callable[..., LoopDevice]
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    trail = agent.root / "probe.journal"
    agent.start()
    await set_drivers(kube, node, [desired_driver("probe", config={"journal": str(trail)})])
    entry = await wait_phase(kube, node, "probe", "Loaded")
    assert entry["boundDevices"] == []

    device = loop_devices()  # hot-plug: the agent's device part publishes it
    expected = await published_device(kube, node, device)
    await set_drivers(
        kube, node, [desired_driver("probe", devices=[expected], config={"journal": str(trail)})]
    )
    await eventually(lambda: _bound(kube, node, "probe", [expected]), what="the new device to be attached")
    detach(device)  # hot-unplug: the device part marks it absent, the driver detaches it
    await eventually(lambda: _bound(kube, node, "probe", []), what="the removed device to be detached")
    assert [(e["event"], e.get("device")) for e in journal(trail)] == [
        ("start", None),
        ("attach", expected),
        ("detach", expected),
    ]


async def test_a_driver_hung_in_attach_is_killed_reported_and_restarted(
    clean_cluster: KubeClient, agent: Agent, node: str, loop_devices: Callable[..., LoopDevice]
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    trail = agent.root / "hangs.journal"
    config = {"journal": str(trail), "hangInAttach": str(agent.root / "hung-once")}
    agent.start("--call-timeout", "2", "--restart-backoff", "3")
    await set_drivers(kube, node, [desired_driver("hangs", config=config)])
    first = await wait_phase(kube, node, "hangs", "Loaded")

    device = loop_devices()
    expected = await published_device(kube, node, device)
    await set_drivers(kube, node, [desired_driver("hangs", devices=[expected], config=config)])
    # attach() never returns: after --call-timeout the host is killed, and waits out the backoff.
    failed = await wait_phase(kube, node, "hangs", "Failed", timeout=30)
    assert failed["lastError"]["reason"] == "Hung"
    assert f"attach({expected}) did not return within 2s" in failed["lastError"]["message"]
    assert failed["message"].startswith("Hung; retrying after backoff")
    assert not pid_alive(first["pid"])
    await wait_event(kube, node, "Hung", f"hangs: attach({expected}) did not return within 2s")
    # The restarted host attaches the device (this time attach() returns).
    await eventually(lambda: _bound(kube, node, "hangs", [expected]), timeout=30, what="recovery")
    entry = await driver(kube, node, "hangs")
    assert entry is not None and entry["phase"] == "Loaded" and entry["restarts"] == 1
    assert entry["pid"] != first["pid"]
    assert [e["event"] for e in journal(trail)] == ["start", "attach", "hang", "start", "attach"]


async def test_status_is_written_only_when_something_changes(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    agent.start()
    await set_drivers(kube, node, [desired_driver("probe")])
    await wait_phase(kube, node, "probe", "Loaded")
    await asyncio.sleep(1.0)
    version = (await kube.get(NODE_DRIVER_CONFIGS, node))["metadata"]["resourceVersion"]

    async def unchanged() -> bool:
        current = await kube.get(NODE_DRIVER_CONFIGS, node)
        return bool(current["metadata"]["resourceVersion"] == version)

    # The agent renews its Lease every 2 s here; the NodeDriverConfig stays untouched.
    await consistently(unchanged, duration=5, what="NodeDriverConfig unchanged in steady state")


async def test_a_burst_of_spec_changes_loses_no_load_and_doubles_none(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    names = ["a", "b", "c", "d"]
    trails = {name: agent.root / f"{name}.journal" for name in names}
    agent.start()

    def spec(step: int) -> list[dict[str, Any]]:
        chosen = [n for i, n in enumerate(names) if (step >> i) & 1]
        return [desired_driver(n, config={"journal": str(trails[n]), "step": step % 3}) for n in chosen]

    for step in range(1, 25):  # 24 patches as fast as the API takes them: adds, removals, config changes
        await set_drivers(kube, node, spec(step))
    final = spec(0b1011)
    await set_drivers(kube, node, final)
    for entry in final:
        await wait_phase(kube, node, entry["name"], "Loaded")
    await wait_gone(kube, node, "c")
    await eventually(lambda: _hosts_are(agent, {"a", "b", "d"}), what="exactly one host per desired driver")
    for name, trail in trails.items():
        events = [e["event"] for e in journal(trail)]
        # One life at a time: every start is stopped before the next start.
        assert events == ["start", "stop"] * (len(events) // 2) + (["start"] if len(events) % 2 else []), (
            name,
            events,
        )
        assert (len(events) % 2 == 1) == (name != "c"), (name, events)
        assert name == "c" or journal(trail)[-1]["config"]["step"] == 0b1011 % 3


async def _hosts_are(agent: Agent, names: set[str]) -> bool:
    hosts = agent.hosts()
    return sorted(hosts.values()) == sorted(names)


# --- misbehaving drivers ---------------------------------------------------------------------


async def test_a_driver_that_ignores_stop_is_killed_after_the_grace_period(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    trail = agent.root / "stubborn.journal"
    agent.start("--terminate-timeout", "1")
    config = {"journal": str(trail), "hangInStop": True, "ignoreSigterm": True}
    await set_drivers(kube, node, [desired_driver("stubborn", config=config, grace=1)])
    pid = (await wait_phase(kube, node, "stubborn", "Loaded"))["pid"]
    await set_drivers(kube, node, [])
    await eventually(lambda: _dead(pid), timeout=30, what="the stubborn host to be killed")
    await wait_gone(kube, node, "stubborn")
    await wait_event(
        kube, node, "UnloadFailed", "did not finish within the grace period of 1s; the host was killed"
    )
    assert [e["event"] for e in journal(trail)] == ["start", "stop"]


async def test_nothing_a_driver_started_outlives_a_crash_or_an_unload(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    """The driver starts a child and a double-forked setsid() daemon in start(): a crash restart
    and an unload each end them with their host (the host's cgroup)."""
    kube = clean_cluster
    write_probe(agent.driver_dir)
    trail = agent.root / "spawner.journal"
    agent.start()
    assert "driver host process trees are held in cgroup" in agent.log(200)
    config = {"journal": str(trail), "spawnChildren": True}
    await set_drivers(kube, node, [desired_driver("spawner", config={**config, "crashAfter": 0.5})])

    async def restarted() -> dict[str, Any] | None:
        entry = await driver(kube, node, "spawner")
        return entry if entry and entry["restarts"] >= 1 else None

    await until(restarted, timeout=60, what="a restart after the crash")
    first = next(e for e in journal(trail) if e["event"] == "spawned")
    await eventually(
        lambda: _all_dead([first["child"], first["daemon"]]), what="the crashed host's processes to end"
    )

    await set_drivers(kube, node, [desired_driver("spawner", config=config)])
    await wait_phase(kube, node, "spawner", "Loaded")

    async def steady() -> dict[str, Any] | None:
        spawned = [e for e in journal(trail) if e["event"] == "spawned"]
        last = spawned[-1]
        return last if pid_alive(last["pid"]) and pid_alive(last["daemon"]) else None

    last = await until(steady, what="the reloaded driver's processes")
    await set_drivers(kube, node, [])
    await wait_gone(kube, node, "spawner")
    await eventually(
        lambda: _all_dead([last["pid"], last["child"], last["daemon"]]),
        what="every process of the driver to end",
    )


async def _all_dead(pids: list[int]) -> bool:
    return not any(pid_alive(p) for p in pids)


async def test_a_crashing_driver_is_reported_and_restarted_with_backoff(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    write_probe(agent.driver_dir, "steady.py", driver_name="Steady Driver")
    trail = agent.root / "crasher.journal"
    agent.start()
    await set_drivers(
        kube,
        node,
        [
            desired_driver("crasher", config={"journal": str(trail), "crashAfter": 0.3, "exitCode": 7}),
            desired_driver("steady", path="steady.py", driver_name="Steady Driver"),
        ],
    )
    steady_pid = (await wait_phase(kube, node, "steady", "Loaded"))["pid"]

    async def restarted_three_times() -> dict[str, Any] | None:
        entry = await driver(kube, node, "crasher")
        return entry if entry and entry["restarts"] >= 3 else None

    entry = await until(restarted_three_times, timeout=90, what="three restarts")
    assert entry["lastError"]["reason"] == "Crashed"
    assert "exited with code 7" in entry["lastError"]["message"]
    starts = [e for e in journal(trail) if e["event"] == "start"]
    assert len({e["pid"] for e in starts}) == len(starts) >= 4  # a new host each time
    # Backoff: the pause before each restart grows (0.5 s, 1 s, 2 s, ...).
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(starts)]
    assert gaps[2] > gaps[0] + 1.0, gaps
    await wait_event(kube, node, "Crashed", "crasher: the driver host exited with code 7")
    # The other driver and the agent are untouched.
    still = await driver(kube, node, "steady")
    assert still is not None and (still["pid"], still["phase"], still["restarts"]) == (
        steady_pid,
        "Loaded",
        0,
    )
    assert agent.process is not None and agent.process.running


async def test_a_driver_over_its_memory_limit_is_contained_and_reported(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    write_probe(agent.driver_dir, "steady.py", driver_name="Steady Driver")
    agent.start("--driver-memory-limit", "200Mi")
    await set_drivers(
        kube,
        node,
        [
            desired_driver("hog", config={"allocateInStart": 1024 * 2**20}),
            desired_driver("steady", path="steady.py", driver_name="Steady Driver"),
        ],
    )
    entry = await wait_phase(kube, node, "hog", "Failed")
    assert entry["lastError"]["reason"] == "MemoryLimitExceeded"
    await wait_phase(kube, node, "steady", "Loaded")
    await wait_event(kube, node, "LoadFailed", "hog: MemoryLimitExceeded")


async def test_capacity_exceeded(clean_cluster: KubeClient, agent: Agent, node: str) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    agent.start("--max-loaded-drivers", "1")
    await set_drivers(kube, node, [desired_driver("low", priority=0), desired_driver("high", priority=5)])
    await wait_phase(kube, node, "high", "Loaded")
    low = await wait_phase(kube, node, "low", "Failed")
    assert low["lastError"]["reason"] == "CapacityExceeded"
    full = await status(kube, node)
    assert full["capacity"] == {"maxLoadedDrivers": 1} and full["failedCount"] == 1
    assert len(agent.hosts()) == 1


async def test_an_unhealthy_driver_is_reported(clean_cluster: KubeClient, agent: Agent, node: str) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    agent.start("--health-interval", "1")
    await set_drivers(
        kube, node, [desired_driver("sick", config={"unhealthy": True}), desired_driver("well")]
    )

    async def reported() -> dict[str, Any] | None:
        entry = await driver(kube, node, "sick")
        return entry if entry and entry.get("message", "").startswith("unhealthy") else None

    entry = await until(reported, what="the unhealthy driver to be reported")
    assert entry["phase"] == "Loaded" and entry["message"] == "unhealthy: probe says so"
    assert entry["lastError"]["reason"] == "Unhealthy"
    well = await driver(kube, node, "well")
    assert well is not None and not well.get("message") and "lastError" not in well


# --- sources ---------------------------------------------------------------------------------


async def test_a_wrong_sha256_is_refused_and_nothing_runs(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    agent.start()
    source = {"kind": "hostPath", "path": "probe.py", "sha256": "0" * 64}
    await set_drivers(kube, node, [desired_driver("pinned", source=source)])
    entry = await wait_phase(kube, node, "pinned", "Failed")
    assert entry["lastError"]["reason"] == "ChecksumMismatch"
    assert "0" * 64 in entry["lastError"]["message"]
    assert agent.hosts() == {}
    await wait_event(kube, node, "LoadFailed", "pinned: ChecksumMismatch")


async def test_url_sources_are_verified_before_anything_is_written(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    kube = clean_cluster
    data = probe_source().encode()
    app = web.Application()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=data)

    app.router.add_get("/probe.py", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/probe.py"
    try:
        agent.start()
        bad = {"kind": "url", "path": "bad.py", "url": url, "sha256": "1" * 64}
        good = {
            "kind": "url",
            "path": "remote/probe.py",
            "url": url,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        await set_drivers(
            kube, node, [desired_driver("bad", source=bad), desired_driver("good", source=good)]
        )
        entry = await wait_phase(kube, node, "bad", "Failed")
        assert (
            entry["lastError"]["reason"] == "ChecksumMismatch"
            and "nothing was written" in entry["lastError"]["message"]
        )
        await wait_phase(kube, node, "good", "Loaded")
        assert sorted(
            p.relative_to(agent.driver_dir).as_posix() for p in agent.driver_dir.rglob("*") if p.is_file()
        ) == ["remote/probe.py"]
    finally:
        await runner.cleanup()


# --- the driver directory --------------------------------------------------------------------


async def test_the_driver_directory_is_reflected_in_status_available(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    kube = clean_cluster
    agent.start()

    async def available() -> dict[str, dict[str, Any]]:
        return {a["file"]: a for a in (await status(kube, node)).get("available") or []}

    await eventually(lambda: _equals(available, {}), what="an empty inventory")
    sha = write_probe(agent.driver_dir, "added.py")
    (agent.driver_dir / "broken.py").write_text("def broken(:\n")
    found = await eventually(lambda: _has_keys(available, {"added.py", "broken.py"}), what="the new files")
    assert found["added.py"]["sha256"] == sha and found["added.py"]["driverName"] == "Probe Driver"
    assert (
        found["added.py"]["supportedDevices"] == ["loop"] and found["added.py"]["className"] == "ProbeDriver"
    )
    assert found["broken.py"]["error"] == "syntax error at line 1: invalid syntax"
    (agent.driver_dir / "added.py").unlink()
    await eventually(lambda: _has_keys(available, {"broken.py"}), what="the removed file to leave")


async def _equals(probe: Callable[[], Any], value: Any) -> bool:
    return bool(await probe() == value)


async def _has_keys(probe: Callable[[], Any], keys: set[str]) -> Any:
    result = await probe()
    return result if set(result) == keys else None


async def test_a_changed_file_reloads_and_a_removed_file_unloads(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    agent.start()
    await set_drivers(kube, node, [desired_driver("probe")])
    first = await wait_phase(kube, node, "probe", "Loaded")
    (agent.driver_dir / "probe.py").write_text(probe_source() + "\n# a fix\n")
    new_sha = hashlib.sha256((agent.driver_dir / "probe.py").read_bytes()).hexdigest()

    async def reloaded() -> dict[str, Any] | None:
        entry = await driver(kube, node, "probe")
        return entry if entry and entry.get("sha256") == new_sha and entry["phase"] == "Loaded" else None

    second = await until(reloaded, what="the changed file to be loaded")
    assert second["pid"] != first["pid"] and not pid_alive(first["pid"])
    (agent.driver_dir / "probe.py").unlink()
    entry = await wait_phase(kube, node, "probe", "Failed")
    assert entry["lastError"]["reason"] == "SourceNotFound"
    assert not pid_alive(second["pid"])
    assert agent.hosts() == {}


# --- agent restarts --------------------------------------------------------------------------


async def test_sigkilled_agent_leaves_drivers_running_and_the_next_adopts_them(
    clean_cluster: KubeClient, agent: Agent, node: str, loop_devices: Callable[..., LoopDevice]
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    trails = {name: agent.root / f"{name}.journal" for name in ("one", "two")}
    agent.start()
    device_name = await published_device(kube, node, loop_devices())
    await set_drivers(
        kube,
        node,
        [
            desired_driver(name, devices=[device_name], config={"journal": str(t)})
            for name, t in trails.items()
        ],
    )
    before = {name: (await wait_phase(kube, node, name, "Loaded"))["pid"] for name in trails}
    await eventually(lambda: _bound(kube, node, "two", [device_name]), what="binding")
    loaded_events = [e for e in await events(kube, node) if e[0] == "Loaded"]

    agent.kill()  # SIGKILL: no chance to clean up
    await asyncio.sleep(1.0)
    assert all(pid_alive(pid) for pid in before.values()), "a driver host died with the agent"

    agent.start()
    after = {name: (await wait_phase(kube, node, name, "Loaded"))["pid"] for name in trails}
    assert after == before
    assert "adopted a running driver host" in agent.log(200)
    await asyncio.sleep(2.0)  # give a wrong second load every chance to happen
    for trail in trails.values():
        assert [e["event"] for e in journal(trail)] == ["start", "attach"]  # loaded and bound once
    assert [e for e in await events(kube, node) if e[0] == "Loaded"] == loaded_events
    assert (await kube.get(NODE_DEVICES, device_name))["status"]["boundDrivers"] == ["one", "two"]


async def test_after_a_reboot_the_agent_reloads_what_the_spec_says_once(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    """A new boot id (simulated: the old host still runs) means nothing from before runs any
    more: the agent adopts nothing, loads the spec again, and no driver runs twice."""
    kube = clean_cluster
    write_probe(agent.driver_dir)
    agent.start()
    await set_drivers(kube, node, [desired_driver("probe")])
    before = await wait_phase(kube, node, "probe", "Loaded")
    agent.stop()
    agent.env["STORAGE_AGENT_BOOT_ID"] = "simulated-reboot"
    agent.start()

    async def reloaded() -> dict[str, Any] | None:
        full = await status(kube, node)
        entry = await driver(kube, node, "probe")
        if entry is None or full.get("bootId") != "simulated-reboot" or entry["phase"] != "Loaded":
            return None
        return entry if entry["pid"] != before["pid"] else None

    after = await until(reloaded, timeout=60, what="the driver loaded again after the reboot")
    assert not pid_alive(before["pid"])
    assert list(agent.hosts()) == [after["pid"]]


async def test_an_agent_that_stays_away_leaves_no_driver_host_behind(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    trail = agent.root / "probe.journal"
    agent.start("--adoption-window", "2")
    await set_drivers(kube, node, [desired_driver("probe", config={"journal": str(trail)})])
    pid = (await wait_phase(kube, node, "probe", "Loaded"))["pid"]
    agent.kill()
    await eventually(lambda: no_host_left(agent), timeout=30, what="the orphaned host to stop")
    assert not pid_alive(pid)
    assert [e["event"] for e in journal(trail)] == ["start", "stop"]  # stopped cleanly
    assert not list((agent.state_dir / "hosts").glob("*.sock"))


async def test_with_the_supervisor_an_agent_restart_does_not_bounce_drivers(
    clean_cluster: KubeClient, agent: Agent, node: str
) -> None:
    kube = clean_cluster
    write_probe(agent.driver_dir)
    trail = agent.root / "probe.journal"
    supervisor = ComponentProcess(
        "supervisor",
        [
            console_script("storage-agent"),
            "supervise",
            "--state-dir",
            str(agent.state_dir),
            "--log-format",
            "text",
        ],
        agent.root / "supervisor.log",
    ).start()
    try:
        supervisor.wait_for_log("supervisor listening")
        agent.start("--launcher", "supervisor")
        await set_drivers(kube, node, [desired_driver("probe", config={"journal": str(trail)})])
        pid = (await wait_phase(kube, node, "probe", "Loaded"))["pid"]
        assert parent_pid(pid) == supervisor.pid  # the supervisor's child, not the agent's

        agent.kill()
        agent.start("--launcher", "supervisor")
        assert (await wait_phase(kube, node, "probe", "Loaded"))["pid"] == pid

        await set_drivers(kube, node, [])  # unload through the supervisor
        await eventually(lambda: _dead(pid), what="the supervised host to stop")
        await wait_gone(kube, node, "probe")
        assert [e["event"] for e in journal(trail)] == ["start", "stop"]
    finally:
        agent.stop()
        supervisor.stop()
        print(f"--- supervisor log ---\n{supervisor.log(50)}")


# --- helpers for the fixtures ----------------------------------------------------------------


@pytest.fixture(autouse=True)
async def _no_leftover_hosts(agent: Agent) -> AsyncIterator[None]:
    yield
    agent.cleanup()
    assert await no_host_left(agent)
