"""List-then-watch of a server-side-filtered set of objects, resuming after disconnects.

`on_sync(items)` receives the full set after each (re)list, `on_event(type, object)` every change
after it. A watch that ends normally resumes from the last resourceVersion; one that is too old
(410 Gone) or fails lists again, with a backoff on errors. An event not newer than the last one
taken (a duplicate, a replay) is dropped (`WatchOrder`): acting on an older spec or an older
device state again would load, unload or bind what the newer one had already settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from storage_driver_api.kube import ApiError, KubeClient
from storage_driver_api.logs import fields
from storage_driver_api.resource import Resource
from storage_driver_api.watchorder import WatchOrder

from storage_driver_agent import metrics

log = logging.getLogger(__name__)

Obj = dict[str, Any]


async def list_watch(
    kube: KubeClient,
    resource: Resource,
    *,
    on_sync: Callable[[list[Obj]], None],
    on_event: Callable[[str, Obj], None],
    stop: asyncio.Event,
    label_selector: str | None = None,
    field_selector: str | None = None,
    watch_timeout: int = 300,
) -> None:
    delay = 0.5
    what = f"{resource.plural} ({label_selector or field_selector or 'all'})"
    metrics.watch_started(resource.kind)
    while not stop.is_set():
        try:
            items, version = await kube.list(
                resource, label_selector=label_selector, field_selector=field_selector
            )
            metrics.WATCH_LISTS.labels(resource.kind).inc()
            metrics.WATCH_SYNCED.labels(resource.kind).set(1)
            on_sync(items)
            order = WatchOrder(version)
            delay = 0.5
            while not stop.is_set():
                version = await _watch_until_end(
                    kube,
                    resource=resource,
                    version=version,
                    order=order,
                    on_event=on_event,
                    stop=stop,
                    label_selector=label_selector,
                    field_selector=field_selector,
                    timeout=watch_timeout,
                )
        except ApiError as exc:
            if exc.gone:
                log.debug("watch expired; listing again", extra=fields(resource=what))
                continue
            metrics.WATCH_FAILURES.labels(resource.kind).inc()
            metrics.WATCH_SYNCED.labels(resource.kind).set(0)
            log.warning(
                "list/watch failed; retrying", extra=fields(resource=what, error=str(exc), retry_in=delay)
            )
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            metrics.WATCH_FAILURES.labels(resource.kind).inc()
            metrics.WATCH_SYNCED.labels(resource.kind).set(0)
            log.warning(
                "list/watch failed; retrying", extra=fields(resource=what, error=repr(exc), retry_in=delay)
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 30.0)


async def _watch_until_end(
    kube: KubeClient,
    *,
    resource: Resource,
    version: str,
    order: WatchOrder,
    on_event: Callable[[str, Obj], None],
    stop: asyncio.Event,
    label_selector: str | None,
    field_selector: str | None,
    timeout: int,
) -> str:
    """Watch from version until the server ends the stream or stop is set; returns the last version."""
    latest = version

    async def consume() -> None:
        nonlocal latest
        async for event in kube.watch(
            resource,
            resource_version=latest,
            label_selector=label_selector,
            field_selector=field_selector,
            timeout_seconds=timeout,
        ):
            event_version = (event.object.get("metadata") or {}).get("resourceVersion")
            if not order.take(event_version):
                log.debug(
                    "stale watch event dropped", extra=fields(resource=resource.plural, version=event_version)
                )
                continue  # and never resume from it: that would ask for the replay again
            latest = str(event_version or latest)
            if event.type != "BOOKMARK":
                metrics.WATCH_EVENTS.labels(resource.kind).inc()
                on_event(event.type, event.object)

    watcher = asyncio.ensure_future(consume())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not watcher.done():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    if watcher.done() and not watcher.cancelled() and (exc := watcher.exception()) is not None:
        raise exc
    return latest
