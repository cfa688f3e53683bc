"""The /metrics endpoint the agent and the supervisor share: a registry served on HOST:PORT.

Apart from metrics.py (the agent's metrics, which read the API models): the supervisor serves
its own registry and imports nothing of the agent's API side.
"""

from __future__ import annotations

import asyncio
import logging

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry
from storage_driver_api.logs import fields

from storage_driver_agent.config import parse_address

log = logging.getLogger("storage_driver_agent.metrics")

# Without this every counter also gets a `_created` series, which no dashboard here reads.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


async def serve(address: str, registry: CollectorRegistry, stop: asyncio.Event) -> None:
    """Serve `registry` on http://HOST:PORT/metrics until `stop`."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(
            body=prometheus_client.generate_latest(registry),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_address(address)
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(
            f"cannot serve metrics on {address}: {exc}; choose another --metrics address"
        ) from exc
    log.info("metrics serving", extra=fields(address=f"{host}:{port}", path="/metrics"))
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
