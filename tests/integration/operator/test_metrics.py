"""The operator's Prometheus endpoint (what the chart's ServiceMonitor scrapes) reports what
its cache and the StorageDriver statuses hold."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from storage_driver_api.constants import STORAGE_DRIVERS
from storage_driver_api.kube import KubeClient

from tests.harness.localcluster import ClusterConfig
from tests.harness.processes import ComponentProcess, console_script
from tests.harness.waiting import eventually
from tests.integration.operator import simulated as sim
from tests.integration.operator.conftest import Operator


async def scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def test_metrics_report_cache_and_driver_state(
    operator: Operator, clean_cluster: KubeClient, make_node: Callable[..., Any]
) -> None:
    kube = clean_cluster
    node = await make_node("metrics-node")
    await sim.renew_lease(kube, "metrics-node")
    for index in range(3):
        await sim.add_device(
            kube, "metrics-node", f"metrics-node-loop{index}", node_uid=node["metadata"]["uid"]
        )
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("metrics-driver"))
    await eventually(lambda: sim.spec_drivers(kube, "metrics-node"), what="the node's spec")
    await sim.report_loaded(kube, "metrics-node")

    async def loaded() -> dict[str, float] | None:
        samples = await scrape(operator.metrics)
        key = 'storage_driver_operator_storagedriver_nodes{state="loaded",storagedriver="metrics-driver"}'
        return samples if samples.get(key) == 1 else None

    found = await eventually(loaded, what="the metrics to show the driver loaded on the node")
    assert found is not None
    samples = found
    assert samples["storage_driver_operator_ready"] == 1
    assert samples['storage_driver_operator_cached_objects{kind="nodedevices"}'] == 3
    assert samples['storage_driver_operator_cache_synced{kind="nodes"}'] == 1
    assert (
        samples[
            'storage_driver_operator_storagedriver_nodes{state="matching",storagedriver="metrics-driver"}'
        ]
        == 1
    )
    assert samples['storage_driver_operator_storagedriver_ready{storagedriver="metrics-driver"}'] == 1
    assert (
        samples["storage_driver_operator_spec_writes_total"]
        + samples["storage_driver_operator_spec_creates_total"]
        >= 1
    )
    # The operator's own families and the process's (as the agent serves them), nothing else.
    assert all(re.fullmatch(r"(storage_driver_operator|process)_[a-z_]+(\{.*\})?", name) for name in samples)
    assert samples["process_resident_memory_bytes"] > 0


async def test_a_taken_metrics_port_is_a_clear_error(cluster: ClusterConfig, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = ComponentProcess(
            "storage-operator",
            [
                console_script("storage-operator"),
                "--liveness",
                "",
                "--metrics",
                f"http://127.0.0.1:{port}/metrics",
            ],
            tmp_path / "operator.log",
            env={"KUBECONFIG": str(cluster.kubeconfig)},
        ).start()
        assert process.process is not None
        assert process.process.wait(timeout=60) == 2
    assert "cannot serve metrics; choose another --metrics address" in process.log()
