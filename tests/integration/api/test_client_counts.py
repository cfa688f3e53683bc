"""The client counts every answer by verb and status (the agent's `api_requests_total`, the
"API errors" panel): against the real API server, and with no server at all ("error")."""

from __future__ import annotations

import dataclasses
import socket

import aiohttp
import pytest
from storage_driver_api.kube import NODES, ApiError, KubeClient

from tests.harness import localcluster


async def test_answers_are_counted_by_verb_and_status(kube: KubeClient) -> None:
    node = localcluster.local_node_name()
    start = kube.responses.copy()
    await kube.get(NODES, node)
    assert await kube.get_or_none(NODES, "no-such-node-here") is None
    with pytest.raises(ApiError):
        await kube.patch(NODES, "no-such-node-here", {"metadata": {"labels": {"x": "y"}}})
    _, version = await kube.list(NODES)
    async for _ in kube.watch(NODES, resource_version=version, timeout_seconds=1):
        pass
    counted = kube.responses - start
    assert counted == {("GET", "200"): 2, ("GET", "404"): 1, ("PATCH", "404"): 1, ("WATCH", "200"): 1}


async def test_no_answer_counts_as_error(kube: KubeClient) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    credentials = dataclasses.replace(kube.credentials, server=f"https://127.0.0.1:{port}")
    async with KubeClient(credentials) as unreachable:
        with pytest.raises(aiohttp.ClientConnectionError):
            await unreachable.get(NODES, "any")
        assert unreachable.responses == {("GET", "error"): 1}
