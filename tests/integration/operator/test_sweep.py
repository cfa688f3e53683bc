"""The sweep deletes, on the real API server, the per-node objects whose Node is gone (what an
ungraceful end left without an owner), and nothing else."""

from __future__ import annotations

from storage_driver_api.constants import (
    API_VERSION,
    LEASE_NAMESPACE_DEFAULT,
    LEASE_PREFIX,
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
)
from storage_driver_api.kube import LEASES, KubeClient
from storage_driver_operator.sweep import Sweeper

from tests.conftest import NodeFactory
from tests.integration.operator import simulated as sim


def config_body(node: str) -> dict[str, object]:
    return {
        "apiVersion": API_VERSION,
        "kind": NODE_DRIVER_CONFIGS.kind,
        "metadata": {"name": node},
        "spec": {"drivers": []},
    }


async def test_the_sweep_deletes_what_a_gone_node_left_and_keeps_the_rest(
    clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    await make_node("gc-live")
    for node in ("gc-live", "gc-gone"):  # written without an owner: the collector cannot help
        await sim.add_device(kube, node, f"{node}-loop0")
        await kube.create(NODE_DRIVER_CONFIGS, config_body(node))
        await sim.renew_lease(kube, node)

    sweeper = Sweeper(kube, LEASE_NAMESPACE_DEFAULT, interval=600, min_age=0)
    deleted = await sweeper.sweep_once()
    assert sorted((o.kind, o.name) for o in deleted) == [
        ("leases", LEASE_PREFIX + "gc-gone"),
        ("nodedevices", "gc-gone-loop0"),
        ("nodedriverconfigs", "gc-gone"),
    ]
    assert await kube.get_or_none(NODE_DEVICES, "gc-gone-loop0") is None
    assert await kube.get_or_none(NODE_DRIVER_CONFIGS, "gc-gone") is None
    assert await kube.get_or_none(LEASES, LEASE_PREFIX + "gc-gone", LEASE_NAMESPACE_DEFAULT) is None
    assert await kube.get_or_none(NODE_DEVICES, "gc-live-loop0") is not None
    assert await kube.get_or_none(NODE_DRIVER_CONFIGS, "gc-live") is not None
    assert await kube.get_or_none(LEASES, LEASE_PREFIX + "gc-live", LEASE_NAMESPACE_DEFAULT) is not None
    # Young objects wait (their Node may be newer than the sweep's list of Nodes).
    await sim.add_device(kube, "gc-later", "gc-later-loop0")
    assert await Sweeper(kube, LEASE_NAMESPACE_DEFAULT, interval=600).sweep_once() == []
