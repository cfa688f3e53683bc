"""A hostPath driver file's declared device types, as the node's agent reports them in
status.available, take effect in the real operator: a file that does not declare the type the
StorageDriver asks for is not sent to the node, which the StorageDriver reports with the reason;
once the file declares it, the node gets the driver with its device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from storage_driver_api.constants import STORAGE_DRIVERS
from storage_driver_api.kube import KubeClient

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
