"""A real storage-operator against the local control plane: StorageDrivers applied and changed,
devices added and removed, node labels and kernels changed; the NodeDriverConfigs, statuses
and Events are right after each step. The tests write what agents would (simulated)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

from storage_driver_api.constants import (
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    STORAGE_DRIVERS,
    UNLOAD_AFTER_ANNOTATION,
    opt_in_label,
)
from storage_driver_api.kube import EVENTS, NODES, KubeClient

from tests.conftest import kubectl
from tests.harness.localcluster import ClusterConfig
from tests.harness.waiting import consistently, eventually
from tests.integration.operator import simulated as sim
from tests.integration.operator.conftest import Operator

NodeFactory = Callable[..., Any]


async def live_node(make_node: NodeFactory, kube: KubeClient, name: str, **kwargs: Any) -> str:
    """A simulated Node whose agent is alive (fresh Lease)."""
    obj = await make_node(name, **kwargs)
    await sim.renew_lease(kube, name)
    return str(obj["metadata"]["uid"])


async def devices_of(kube: KubeClient, node: str, driver: str) -> list[str] | None:
    drivers = await sim.spec_drivers(kube, node)
    if drivers is None or driver not in drivers:
        return None
    return list(drivers[driver].get("devices") or [])


async def wait_devices(
    kube: KubeClient, node: str, driver: str, expected: list[str] | None, timeout: float = 30
) -> None:
    async def probe() -> bool:
        return await devices_of(kube, node, driver) == expected

    await eventually(probe, timeout=timeout, what=f"{node} spec for {driver} to bind {expected}")


async def wait_status(
    kube: KubeClient, name: str, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        status = await sim.driver_status(kube, name)
        return status if status and check(status) else {}

    found: dict[str, Any] = await eventually(probe, timeout=30, what=what)
    return found


async def event_reasons(kube: KubeClient, name: str) -> list[str]:
    obj = await kube.get(STORAGE_DRIVERS, name)
    items, _ = await kube.list(
        EVENTS, namespace="default", field_selector=f"involvedObject.uid={obj['metadata']['uid']}"
    )
    return [item["reason"] for item in items]


async def has_event(kube: KubeClient, name: str, reason: str) -> bool:
    return reason in await event_reasons(kube, name)


async def test_apply_loads_where_it_matches_and_says_why_not_elsewhere(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory, cluster: ClusterConfig
) -> None:
    kube = clean_cluster
    a = await live_node(make_node, kube, "op-a")
    b = await live_node(make_node, kube, "op-b")
    c = await live_node(make_node, kube, "op-c", kernel="5.4.0-150-generic")
    await sim.add_device(kube, "op-a", "op-a-loop0", node_uid=a, sizeBytes=8388608)
    await sim.add_device(kube, "op-b", "op-b-nvme0", "nvme-namespace", node_uid=b)
    await sim.add_device(kube, "op-c", "op-c-loop0", node_uid=c)
    await kube.create(
        STORAGE_DRIVERS,
        sim.storage_driver("loop-info", minimumPlatform={"kernelVersion": {"atLeast": "6.0"}}),
    )

    await wait_devices(kube, "op-a", "loop-info", ["op-a-loop0"])
    entry = (await sim.spec_drivers(kube, "op-a") or {})["loop-info"]
    assert entry["version"] == "1.0.0"
    assert entry["source"] == {
        "kind": "url",
        "path": "managed/loop-info.py",
        "url": "https://drivers.example/loop-info.py",
        "sha256": sim.sha256_of("loop-info"),
    }
    assert await sim.spec_drivers(kube, "op-b") is None  # no NodeDriverConfig needed there
    assert await sim.spec_drivers(kube, "op-c") is None
    status = await wait_status(
        kube, "loop-info", lambda s: s.get("desiredNodes") == 1, "status to count the desired node"
    )
    assert (status["matchingNodes"], status["loadedNodes"]) == (1, 0)
    ready = sim.condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Loading")
    assert "NoMatchingDevices 2" in ready["message"] and "PlatformTooOld 1" in ready["message"]

    await sim.report_loaded(kube, "op-a")
    status = await wait_status(
        kube, "loop-info", lambda s: sim.condition(s, "Ready").get("status") == "True", "Ready=True"
    )
    assert status["loadedNodes"] == 1
    assert sim.condition(status, "Ready")["reason"] == "Loaded"
    assert (
        status["observedGeneration"]
        == (await kube.get(STORAGE_DRIVERS, "loop-info"))["metadata"]["generation"]
    )

    table = kubectl(cluster, "get", "sd", "loop-info")
    assert table.splitlines()[0].split()[:6] == ["NAME", "VERSION", "MATCHING", "LOADED", "FAILED", "READY"]
    assert table.splitlines()[1].split()[:6] == ["loop-info", "1.0.0", "1", "1", "0", "True"]

    async def events() -> bool:
        reasons = await event_reasons(kube, "loop-info")
        return {"LoadRequested", "Loaded", "Ready"} <= set(reasons)

    await eventually(events, what="LoadRequested, Loaded and Ready events")


async def test_hot_plug_in_and_out_with_a_conservative_unload(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    uid = await live_node(make_node, kube, "hp-a")
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("loop-info", unloadDelaySeconds=3))
    await sim.add_device(kube, "hp-a", "hp-a-loop0", node_uid=uid)
    await wait_devices(kube, "hp-a", "loop-info", ["hp-a-loop0"])
    await sim.add_device(kube, "hp-a", "hp-a-loop1", node_uid=uid)
    await wait_devices(kube, "hp-a", "loop-info", ["hp-a-loop0", "hp-a-loop1"])

    # Both devices leave: the driver stays (bound to nothing) for unloadDelaySeconds, then goes.
    await sim.set_present(kube, "hp-a-loop0", False)
    await sim.set_present(kube, "hp-a-loop1", False)
    await wait_devices(kube, "hp-a", "loop-info", [])
    await wait_devices(kube, "hp-a", "loop-info", None, timeout=30)


async def test_a_flap_shorter_than_the_delay_unloads_nothing(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    uid = await live_node(make_node, kube, "fl-a")
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("loop-info", unloadDelaySeconds=4))
    await sim.add_device(kube, "fl-a", "fl-a-loop0", node_uid=uid)
    await wait_devices(kube, "fl-a", "loop-info", ["fl-a-loop0"])
    await sim.set_present(kube, "fl-a-loop0", False)
    await wait_devices(kube, "fl-a", "loop-info", [])
    await sim.set_present(kube, "fl-a-loop0", True)
    await wait_devices(kube, "fl-a", "loop-info", ["fl-a-loop0"])

    async def still_there() -> bool:
        return await devices_of(kube, "fl-a", "loop-info") == ["fl-a-loop0"]

    await consistently(still_there, duration=6, what="the driver to stay through the flap")


async def test_a_device_deleted_before_the_delay_ends_still_waits_out_the_delay(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    """The agent deletes absent NodeDevices after its retention period, which may be shorter
    than a StorageDriver's unloadDelaySeconds: the delay still counts from the removal."""
    kube = clean_cluster
    uid = await live_node(make_node, kube, "dd-a")
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("loop-info", unloadDelaySeconds=8))
    await sim.add_device(kube, "dd-a", "dd-a-loop0", node_uid=uid)
    await wait_devices(kube, "dd-a", "loop-info", ["dd-a-loop0"])
    # Taken before the removal: the operator counts from the removal time the NodeDevice records,
    # which the API keeps to the second (truncated), so the unload may come up to 1 s before
    # `delay` has passed since the removal itself, never before `delay - 1` since this moment.
    removed = time.monotonic()
    await sim.set_present(kube, "dd-a-loop0", False)
    await wait_devices(kube, "dd-a", "loop-info", [])
    await kube.delete(NODE_DEVICES, "dd-a-loop0")

    async def kept() -> bool:
        return await devices_of(kube, "dd-a", "loop-info") == []

    await consistently(kept, duration=4, what="the driver to stay for the rest of the delay")
    await wait_devices(kube, "dd-a", "loop-info", None, timeout=30)
    assert time.monotonic() - removed >= 7  # not before the delay (minus clock granularity)


async def test_an_operator_restart_during_the_delay_unloads_nothing_early(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    """The device is absent and then deleted (the agent's retention), and the operator restarts:
    nothing in its memory remembers the device, yet the delay holds, from what the
    NodeDriverConfig records."""
    kube = clean_cluster
    delay = 20
    uid = await live_node(make_node, kube, "rs-a")
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("loop-info", unloadDelaySeconds=delay))
    await sim.add_device(kube, "rs-a", "rs-a-loop0", node_uid=uid)
    await wait_devices(kube, "rs-a", "loop-info", ["rs-a-loop0"])
    # Before the removal, as in the test above (the recorded removal time is truncated).
    removed = time.monotonic()
    await sim.set_present(kube, "rs-a-loop0", False)
    await wait_devices(kube, "rs-a", "loop-info", [])
    annotations = (await kube.get(NODE_DRIVER_CONFIGS, "rs-a"))["metadata"].get("annotations") or {}
    assert set(json.loads(annotations[UNLOAD_AFTER_ANNOTATION])) == {"loop-info"}
    await kube.delete(NODE_DEVICES, "rs-a-loop0")
    await operator.restart()

    async def kept() -> bool:
        return await devices_of(kube, "rs-a", "loop-info") == []

    # Without the record, the new operator unloads at its first plan, right after it is ready.
    left = delay - (time.monotonic() - removed) - 2
    assert left > 1, f"the restart took too long to tell ({delay - left - 2:.0f}s)"
    await consistently(kept, duration=min(4.0, left), what="the driver to stay through the restart")
    await wait_devices(kube, "rs-a", "loop-info", None, timeout=40)
    assert time.monotonic() - removed >= delay - 1  # not before the delay (minus clock granularity)
    annotations = (await kube.get(NODE_DRIVER_CONFIGS, "rs-a"))["metadata"].get("annotations") or {}
    assert UNLOAD_AFTER_ANNOTATION not in annotations  # the record went with the driver


async def set_boot_id(kube: KubeClient, node: str, boot_id: str) -> None:
    """What the kubelet does when the node has rebooted."""
    await kube.patch(NODES, node, {"status": {"nodeInfo": {"bootID": boot_id}}}, subresource="status")


async def test_a_loaded_report_from_before_a_reboot_does_not_count(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    uid = await live_node(make_node, kube, "rb-a")
    await set_boot_id(kube, "rb-a", "boot-1")
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("loop-info"))
    await sim.add_device(kube, "rb-a", "rb-a-loop0", node_uid=uid)
    await wait_devices(kube, "rb-a", "loop-info", ["rb-a-loop0"])
    await sim.report_loaded(kube, "rb-a", boot_id="boot-1")
    await wait_status(kube, "loop-info", lambda s: s.get("loadedNodes") == 1, "loadedNodes=1")

    await set_boot_id(kube, "rb-a", "boot-2")  # rebooted; the agent has not reported since
    status = await wait_status(
        kube,
        "loop-info",
        lambda s: s.get("loadedNodes") == 0,
        "the report from before the reboot to stop counting",
    )
    assert sim.condition(status, "Ready")["status"] == "False"
    assert await devices_of(kube, "rb-a", "loop-info") == ["rb-a-loop0"]  # the spec stays, to reload

    await sim.report_loaded(kube, "rb-a", boot_id="boot-2")
    await wait_status(kube, "loop-info", lambda s: s.get("loadedNodes") == 1, "the new report to count")


async def test_a_silent_agent_holds_the_unload_until_it_reports_again(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    uid = await live_node(make_node, kube, "sl-a")
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("loop-info", unloadDelaySeconds=1))
    await sim.add_device(kube, "sl-a", "sl-a-loop0", node_uid=uid)
    await wait_devices(kube, "sl-a", "loop-info", ["sl-a-loop0"])
    # The agent stops renewing (its Lease expired long ago); its last report says absent.
    await sim.renew_lease(kube, "sl-a", at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    await sim.set_present(kube, "sl-a-loop0", False)
    await wait_devices(kube, "sl-a", "loop-info", [])

    async def held() -> bool:
        return await devices_of(kube, "sl-a", "loop-info") == []

    await consistently(held, duration=4, what="the driver to stay while the agent is silent")
    await sim.renew_lease(kube, "sl-a")
    await wait_devices(kube, "sl-a", "loop-info", None)


async def test_spec_changes_apply_to_every_node(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    a = await live_node(make_node, kube, "sc-a")
    b = await live_node(make_node, kube, "sc-b")
    await sim.add_device(kube, "sc-a", "sc-a-loop0", node_uid=a, sizeBytes=10 * 2**20)
    await sim.add_device(kube, "sc-b", "sc-b-nvme0", "nvme-namespace", node_uid=b, sizeBytes=2**40)
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("disk-info"))
    await wait_devices(kube, "sc-a", "disk-info", ["sc-a-loop0"])

    selector = [{"key": "sizeBytes", "operator": "Gt", "values": [str(2**30)]}]
    patch = {"spec": {"supportedDevices": ["loop", "nvme-namespace"], "deviceSelector": selector}}
    await kube.patch(STORAGE_DRIVERS, "disk-info", patch)
    await wait_devices(kube, "sc-b", "disk-info", ["sc-b-nvme0"])
    await wait_devices(kube, "sc-a", "disk-info", None)  # a user's change applies at once

    await kube.patch(STORAGE_DRIVERS, "disk-info", {"spec": {"config": {"interval": 5}, "priority": 3}})

    async def updated() -> bool:
        entry = (await sim.spec_drivers(kube, "sc-b") or {}).get("disk-info") or {}
        return entry.get("config") == {"interval": 5} and entry.get("priority") == 3

    await eventually(updated, what="config and priority to reach the node")


async def test_node_labels_opt_in_and_kernel_versions(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    uid = await live_node(make_node, kube, "nl-a", labels={"storage": "no"})
    await sim.add_device(kube, "nl-a", "nl-a-loop0", node_uid=uid)
    await kube.create(
        STORAGE_DRIVERS,
        sim.storage_driver(
            "picky",
            autoLoad=False,
            nodeSelector={"matchLabels": {"storage": "yes"}},
            minimumPlatform={"kernelVersion": {"atLeast": "6.0"}},
        ),
    )
    await wait_status(kube, "picky", lambda s: s.get("observedGeneration") == 1, "a first status")
    assert await devices_of(kube, "nl-a", "picky") is None

    await kube.patch(NODES, "nl-a", {"metadata": {"labels": {"storage": "yes"}}})
    status = await wait_status(
        kube, "picky", lambda s: "NotOptedIn 1" in sim.condition(s, "Ready").get("message", ""), "NotOptedIn"
    )
    assert status["desiredNodes"] == 0
    await kube.patch(NODES, "nl-a", {"metadata": {"labels": {opt_in_label("picky"): "true"}}})
    await wait_devices(kube, "nl-a", "picky", ["nl-a-loop0"])

    # The node reboots into an older kernel: the driver leaves at once.
    node = await kube.get(NODES, "nl-a")
    info = {**node["status"]["nodeInfo"], "kernelVersion": "5.10.0-28-amd64"}
    await kube.patch(NODES, "nl-a", {"status": {"nodeInfo": info}}, subresource="status")
    await wait_devices(kube, "nl-a", "picky", None)
    await wait_status(
        kube,
        "picky",
        lambda s: "PlatformTooOld 1" in sim.condition(s, "Ready").get("message", ""),
        "PlatformTooOld",
    )
    await kube.patch(NODES, "nl-a", {"metadata": {"labels": {opt_in_label("picky"): None}}})
    info["kernelVersion"] = "6.1.0-18-amd64"
    await kube.patch(NODES, "nl-a", {"status": {"nodeInfo": info}}, subresource="status")
    await wait_status(
        kube,
        "picky",
        lambda s: "NotOptedIn 1" in sim.condition(s, "Ready").get("message", ""),
        "NotOptedIn again",
    )
    assert await devices_of(kube, "nl-a", "picky") is None


async def test_capacity_keeps_the_higher_priority_and_reports_the_rest(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    uid = await live_node(make_node, kube, "cap-a")
    await sim.add_device(kube, "cap-a", "cap-a-loop0", node_uid=uid)
    await sim.report(kube, "cap-a", max_loaded=1)  # the agent runs at most one driver
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("low"))
    await wait_devices(kube, "cap-a", "low", ["cap-a-loop0"])
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("high", priority=10))
    await wait_devices(kube, "cap-a", "high", ["cap-a-loop0"])
    assert list(await sim.spec_drivers(kube, "cap-a") or {}) == ["high"]
    status = await wait_status(
        kube, "low", lambda s: bool(s.get("failingNodes")), "low to list its failing node"
    )
    assert status["failingNodes"][0]["node"] == "cap-a"
    assert status["failingNodes"][0]["reason"] == "CapacityExceeded"
    degraded = sim.condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "CapacityExceeded")
    await eventually(  # Events are posted after the status write that reports the change
        lambda: has_event(kube, "low", "CapacityExceeded"), what="a CapacityExceeded Event about low"
    )


async def test_a_host_path_driver_waits_for_the_file_on_the_node(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    uid = await live_node(make_node, kube, "hp-file")
    await sim.add_device(kube, "hp-file", "hp-file-loop0", node_uid=uid)
    content = "driver source"
    await kube.create(
        STORAGE_DRIVERS,
        sim.storage_driver(
            "pinned", source={"hostPath": {"path": "loop_info.py", "sha256": sim.sha256_of(content)}}
        ),
    )
    status = await wait_status(kube, "pinned", lambda s: bool(s.get("failingNodes")), "DriverNotAvailable")
    assert status["failingNodes"][0]["reason"] == "DriverNotAvailable"
    assert await devices_of(kube, "hp-file", "pinned") is None

    # A file with another hash is still not the driver.
    await sim.report(kube, "hp-file", available=[sim.available_entry("loop_info.py", "other content")])
    status = await wait_status(
        kube,
        "pinned",
        lambda s: "pins" in (s.get("failingNodes") or [{}])[0].get("message", ""),
        "the hash named",
    )
    # Nor is the right file declaring another version: the agent would refuse to load it.
    await sim.report(
        kube, "hp-file", available=[sim.available_entry("loop_info.py", content, version="0.9.0")]
    )
    await wait_status(
        kube,
        "pinned",
        lambda s: "declares version 0.9.0" in (s.get("failingNodes") or [{}])[0].get("message", ""),
        "the declared version named",
    )
    assert await devices_of(kube, "hp-file", "pinned") is None
    await sim.report(kube, "hp-file", available=[sim.available_entry("loop_info.py", content)])
    await wait_devices(kube, "hp-file", "pinned", ["hp-file-loop0"])
    entry = (await sim.spec_drivers(kube, "hp-file") or {})["pinned"]
    assert entry["source"] == {"kind": "hostPath", "path": "loop_info.py", "sha256": sim.sha256_of(content)}


async def test_an_invalid_spec_is_reported_and_changes_nothing_on_the_nodes(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    uid = await live_node(make_node, kube, "inv-a")
    await sim.add_device(kube, "inv-a", "inv-a-loop0", node_uid=uid)
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("shaky"))
    await wait_devices(kube, "inv-a", "shaky", ["inv-a-loop0"])

    # A regular expression the schema accepts as a string but that does not compile.
    bad = [{"key": "model", "operator": "Regex", "values": ["(["]}]
    await kube.patch(STORAGE_DRIVERS, "shaky", {"spec": {"deviceSelector": bad, "version": "2.0.0"}})
    status = await wait_status(
        kube, "shaky", lambda s: sim.condition(s, "Ready").get("reason") == "InvalidSpec", "InvalidSpec"
    )
    message = sim.condition(status, "Ready")["message"]
    assert message.startswith("spec.deviceSelector[0].values:"), message
    await eventually(lambda: has_event(kube, "shaky", "InvalidSpec"), what="an InvalidSpec Event about shaky")
    await sim.add_device(kube, "inv-a", "inv-a-loop1", node_uid=uid)

    async def unchanged() -> bool:
        entry = (await sim.spec_drivers(kube, "inv-a") or {}).get("shaky") or {}
        return entry.get("devices") == ["inv-a-loop0"] and entry.get("version") == "1.0.0"

    await consistently(unchanged, duration=3, what="the node's entry to stay as it was")
    await kube.patch(STORAGE_DRIVERS, "shaky", {"spec": {"deviceSelector": []}})
    await wait_devices(kube, "inv-a", "shaky", ["inv-a-loop0", "inv-a-loop1"])


async def test_deleting_a_node_is_left_to_the_garbage_collector(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    uid = await live_node(make_node, kube, "gone-a")
    other = await live_node(make_node, kube, "gone-b")
    await sim.add_device(kube, "gone-a", "gone-a-loop0", node_uid=uid)
    await sim.add_device(kube, "gone-b", "gone-b-loop0", node_uid=other)
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("loop-info"))
    await wait_devices(kube, "gone-a", "loop-info", ["gone-a-loop0"])
    await wait_devices(kube, "gone-b", "loop-info", ["gone-b-loop0"])
    await wait_status(kube, "loop-info", lambda s: s.get("desiredNodes") == 2, "two desired nodes")

    await kube.delete(NODES, "gone-a")

    async def collected() -> bool:
        return (
            await sim.spec_drivers(kube, "gone-a") is None
            and await kube.get_or_none(NODE_DEVICES, "gone-a-loop0") is None
        )

    await eventually(collected, timeout=60, what="the NodeDriverConfig and NodeDevice to be collected")

    async def not_recreated() -> bool:
        return await sim.spec_drivers(kube, "gone-a") is None

    await consistently(not_recreated, duration=3, what="the operator not to recreate it")
    await wait_status(kube, "loop-info", lambda s: s.get("desiredNodes") == 1, "one desired node left")
