"""A real `storage-operator` process against the local control plane, restartable mid-test."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from storage_driver_api.constants import LEASE_NAMESPACE_DEFAULT, LEASE_PREFIX
from storage_driver_api.kube import LEASES, KubeClient

from tests.harness.localcluster import ClusterConfig
from tests.harness.processes import ComponentProcess, console_script
from tests.harness.waiting import eventually
from tests.integration.operator.simulated import ensure_lease_namespace


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Operator:
    """One operator at a time; each start logs to its own file."""

    def __init__(self, cluster: ClusterConfig, logs: Path, *extra: str) -> None:
        self.cluster = cluster
        self.logs = logs
        self.extra = extra
        self.port = free_port()
        self.metrics_port = free_port()
        self.starts = 0
        self.process: ComponentProcess | None = None

    @property
    def liveness(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    async def start(self, *, wait: bool = True) -> ComponentProcess:
        self.starts += 1
        self.process = ComponentProcess(
            "storage-operator",
            [
                console_script("storage-operator"),
                "--liveness",
                self.liveness,
                "--metrics",
                self.metrics,
                "--log-format",
                "text",
                "--status-interval",
                "0.2",
                *self.extra,
            ],
            self.logs / f"operator-{self.starts}.log",
            env={"KUBECONFIG": str(self.cluster.kubeconfig)},
        ).start()
        if wait:
            await self.wait_ready()
        return self.process

    async def wait_ready(self) -> str:
        """The operator's `ready` log line (it says how many spec writes the start made)."""
        process = self.process
        assert process is not None

        async def ready() -> str:
            if not process.running:
                raise AssertionError(f"storage-operator exited:\n{process.log()}")
            return next((line for line in process.log(10_000).splitlines() if " ready " in line), "")

        line: str = await eventually(ready, timeout=60, what="the operator to be ready")
        return line

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    async def restart(self) -> str:
        self.stop()
        await self.start(wait=False)
        return await self.wait_ready()

    def log(self) -> str:
        return self.process.log(200) if self.process else ""


async def remove_agent_leases(kube: KubeClient) -> None:
    leases, _ = await kube.list(LEASES, namespace=LEASE_NAMESPACE_DEFAULT)
    for lease in leases:
        if lease["metadata"]["name"].startswith(LEASE_PREFIX):
            await kube.delete(LEASES, lease["metadata"]["name"], LEASE_NAMESPACE_DEFAULT)


@pytest.fixture(autouse=True)
async def no_agent_leases(clean_cluster: KubeClient) -> AsyncIterator[None]:
    """No agent Lease of an earlier test (simulated node names repeat), before and after."""
    await ensure_lease_namespace(clean_cluster)
    await remove_agent_leases(clean_cluster)
    yield
    await remove_agent_leases(clean_cluster)


@pytest.fixture
async def operator(
    clean_cluster: KubeClient, cluster: ClusterConfig, tmp_path: Path
) -> AsyncIterator[Operator]:
    """A running storage-operator (stopped, with its log shown on failure, after the test)."""
    handle = Operator(cluster, tmp_path)
    await handle.start()
    try:
        yield handle
    finally:
        handle.stop()
        print(f"--- operator log (last lines) ---\n{handle.log()}")
