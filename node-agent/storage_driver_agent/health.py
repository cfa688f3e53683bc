"""The agent's health endpoints, for the kubelet's probes: `/healthz` answers while the agent's
event loop runs; `/readyz` once its devices are published and its driver runtime has read the
node's NodeDriverConfig and NodeDevices (until then it names what it waits for)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiohttp import web
from storage_driver_api.logs import fields

from storage_driver_agent.config import parse_address

log = logging.getLogger("storage_driver_agent.health")


async def serve(address: str, ready: Mapping[str, asyncio.Event], stop: asyncio.Event) -> None:
    """Serve until `stop`; `ready` maps each part of the agent to the event it sets when ready."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        waiting = sorted(name for name, event in ready.items() if not event.is_set())
        if waiting:
            return web.Response(status=503, text=f"waiting for: {', '.join(waiting)}\n")
        return web.Response(text="ready\n")

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_address(address)
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("health endpoints serving", extra=fields(address=f"{host}:{port}"))
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
