"""The agent's --health address and its /healthz and /readyz answers (the kubelet's probes)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import urllib.error
import urllib.request

import pytest
from storage_driver_agent import health
from storage_driver_agent.config import AgentConfig, parse_address


@pytest.mark.parametrize(
    ("address", "expected"),
    [("0.0.0.0:8090", ("0.0.0.0", 8090)), ("127.0.0.1:1", ("127.0.0.1", 1)), ("[::]:8090", ("::", 8090))],
)
def test_addresses_parse(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["8090", ":8090", "host:", "host:port", "host:0", "host:65536"])
def test_a_bad_address_is_refused_with_the_expected_form(address: str) -> None:
    parser = argparse.ArgumentParser()
    AgentConfig.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--health", address])
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_address(address)


def test_health_is_off_unless_asked_for() -> None:
    parser = argparse.ArgumentParser()
    AgentConfig.add_arguments(parser)
    assert AgentConfig.from_args(parser.parse_args([])).health_address == ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_ready_only_when_every_part_is_and_alive_throughout() -> None:
    port = free_port()
    ready = {"devices": asyncio.Event(), "drivers": asyncio.Event()}
    stop = asyncio.Event()
    server = asyncio.create_task(health.serve(f"127.0.0.1:{port}", ready, stop))
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            await asyncio.to_thread(get, f"{base}/healthz")
            break
        except OSError:
            await asyncio.sleep(0.02)
    assert await asyncio.to_thread(get, f"{base}/healthz") == (200, "ok\n")
    assert await asyncio.to_thread(get, f"{base}/readyz") == (503, "waiting for: devices, drivers\n")
    ready["devices"].set()
    assert await asyncio.to_thread(get, f"{base}/readyz") == (503, "waiting for: drivers\n")
    ready["drivers"].set()
    assert await asyncio.to_thread(get, f"{base}/readyz") == (200, "ready\n")
    stop.set()
    await server
