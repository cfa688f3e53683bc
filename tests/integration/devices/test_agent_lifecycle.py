"""Starting and stopping the device part of the agent when the world is not as it should be."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_driver_agent.devices.options import Options
from storage_driver_agent.devices.service import DeviceAgent, DeviceDiscoveryError
from storage_driver_api.kube import Credentials, KubeClient


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An API server address that accepts connections and never answers (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def test_stopping_does_not_wait_for_a_hung_api_server(silent_server: str) -> None:
    async with KubeClient(Credentials(server=silent_server), request_timeout=60) as kube:
        agent = DeviceAgent("devices-hung", Options(), kube)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(1.0)  # the first pass is now waiting for the silent server
        assert not task.done()
        assert agent.published is None  # nothing could be read yet
        stop.set()
        await asyncio.wait_for(task, 30)  # the request itself would wait 60 s


async def test_a_wrong_host_root_refuses_to_start_instead_of_marking_every_device_absent(
    tmp_path: Path, silent_server: str
) -> None:
    async with KubeClient(Credentials(server=silent_server)) as kube:
        agent = DeviceAgent("devices-nowhere", Options(host_root=tmp_path), kube)
        with pytest.raises(DeviceDiscoveryError, match="--host-root must be where the host's / is mounted"):
            await agent.run(asyncio.Event())
