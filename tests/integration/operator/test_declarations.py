"""A hostPath driver file's declared device types, as the node's agent reports them in
status.available, take effect in the real operator: a file that does not declare the type the
StorageDriver asks for is not sent to the node, which the StorageDriver reports with the reason;
once the file declares it, the node gets the driver with its device."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage_driver_api.constants import STORAGE_DRIVERS
from storage_driver_api.kube import KubeClient

from tests.harness.localcluster import ClusterConfig
from tests.integration.operator import simulated as sim
from tests.integration.operator.conftest import Operator
from tests.integration.operator.test_reconcile import live_node, wait_devices, wait_status

NodeFactory = Callable[..., Any]


async def test_declared_device_types_decide_what_a_node_binds(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    uid = await live_node(make_node, kube, "decl-1")
    await sim.add_device(kube, "decl-1", "decl-1-loop0", node_uid=uid)
    file = {**sim.available_entry("loop_info.py"), "supportedDevices": ["scsi-disk"]}
    await sim.report(kube, "decl-1", drivers=[], available=[file])
    await kube.create(
        STORAGE_DRIVERS, sim.storage_driver("declared", source={"hostPath": {"path": "loop_info.py"}})
    )

    status = await wait_status(
        kube, "declared", lambda s: bool(s.get("failingNodes")), "the node to be reported failing"
    )
    (failing,) = status["failingNodes"]
    assert failing["reason"] == "DriverNotAvailable"
    assert failing["message"] == (
        "loop_info.py declares supported devices scsi-disk, not loop "
        "(the StorageDriver's supportedDevices asks for it)"
    )
    assert (await sim.spec_drivers(kube, "decl-1") or {}).get("declared") is None

    # The node's file now declares loop devices: the operator sends it with the device.
    await sim.report(kube, "decl-1", available=[{**file, "supportedDevices": ["loop", "scsi-disk"]}])
    await wait_devices(kube, "decl-1", "declared", ["decl-1-loop0"])


async def test_a_storage_driver_without_declared_fields_follows_each_nodes_file(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    """supportedDevices and autoLoad unset: each node's file decides; its declared platform
    keeps a node with an older kernel out, with the reason in the StorageDriver's status."""
    kube = clean_cluster
    for name in ("decl-2", "decl-3"):
        uid = await live_node(make_node, kube, name)
        await sim.add_device(kube, name, f"{name}-loop0", node_uid=uid)
        await sim.add_device(kube, name, f"{name}-zram0", "zram", node_uid=uid)
    base = sim.available_entry("loop_info.py")
    await sim.report(kube, "decl-2", drivers=[], available=[{**base, "supportedDevices": ["zram"]}])
    too_new = {
        **base,
        "supportedDevices": ["loop"],
        "minimumPlatform": {"kernelVersion": {"atLeast": "99.0"}},
    }
    await sim.report(kube, "decl-3", drivers=[], available=[too_new])
    body = sim.storage_driver("from-file", source={"hostPath": {"path": "loop_info.py"}})
    del body["spec"]["supportedDevices"]
    await kube.create(STORAGE_DRIVERS, body)

    await wait_devices(kube, "decl-2", "from-file", ["decl-2-zram0"])
    status = await wait_status(
        kube, "from-file", lambda s: s.get("desiredNodes") == 1, "the StorageDriver to count decl-2"
    )
    assert status["matchingNodes"] == 1
    assert (await sim.spec_drivers(kube, "decl-3") or {}).get("from-file") is None

    # decl-3's file no longer declares a minimum platform: it gets the driver on its loop device.
    await sim.report(kube, "decl-3", available=[{**base, "supportedDevices": ["loop"]}])
    await wait_devices(kube, "decl-3", "from-file", ["decl-3-loop0"])


async def test_directory_autoload_follows_the_files_and_the_devices(
    clean_cluster: KubeClient, make_node: NodeFactory, cluster: ClusterConfig, tmp_path: Path
) -> None:
    """With --directory-autoload: a reported auto_load file goes on the node with its declared
    devices; a StorageDriver declaring the same driver name takes it over; without it again, the
    file returns; the last matching device gone unloads it after the unload delay."""
    kube = clean_cluster
    handle = Operator(cluster, tmp_path, "--directory-autoload")
    await handle.start()
    try:
        uid = await live_node(make_node, kube, "auto-1")
        await sim.add_device(kube, "auto-1", "auto-1-loop0", node_uid=uid)
        file = {
            **sim.available_entry("auto.py", driver_name="Auto Driver"),
            "supportedDevices": ["loop"],
            "autoLoad": True,
        }
        await sim.report(kube, "auto-1", drivers=[], available=[file])
        await wait_devices(kube, "auto-1", "file:auto.py", ["auto-1-loop0"])

        # A StorageDriver for the same driver: it decides, and the file's entry gives way.
        claim = sim.storage_driver(
            "auto-sd", driverName="Auto Driver", source={"hostPath": {"path": "auto.py"}}
        )
        await kube.create(STORAGE_DRIVERS, claim)
        await wait_devices(kube, "auto-1", "auto-sd", ["auto-1-loop0"])
        assert "file:auto.py" not in (await sim.spec_drivers(kube, "auto-1") or {})
        await kube.delete(STORAGE_DRIVERS, "auto-sd")
        await wait_devices(kube, "auto-1", "auto-sd", None)
        # The agent has nothing of auto-sd left to unload.
        await sim.report_loaded(kube, "auto-1")
        await wait_devices(kube, "auto-1", "file:auto.py", ["auto-1-loop0"])

        # The device goes: held for the unload delay (30 s by default), then unloaded (by an
        # agent that is alive: its Lease, 40 s long, is renewed now).
        await sim.renew_lease(kube, "auto-1")
        await sim.set_present(kube, "auto-1-loop0", False)
        await wait_devices(kube, "auto-1", "file:auto.py", [])
        await wait_devices(kube, "auto-1", "file:auto.py", None, timeout=60)
    finally:
        handle.stop()
        print(f"--- operator log (last lines) ---\n{handle.log()}")
