"""The periodic sweep: deletes per-node objects whose Node is gone (orphans.py decides which).

Every `--gc-interval` it lists Nodes, NodeDevices, NodeDriverConfigs and the agents' Leases
from the API (not from the cache, so a lagging watch cannot make a live Node look gone),
checks each candidate's Node once more, and deletes the object with its uid as a precondition,
so an object created again under the same name meanwhile is never touched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp
from storage_driver_api.constants import NODE_DEVICES, NODE_DRIVER_CONFIGS
from storage_driver_api.kube import LEASES, NODES, ApiError, KubeClient
from storage_driver_api.logs import fields
from storage_driver_api.resource import Resource

from storage_driver_operator.orphans import PerNodeObject, orphans
from storage_driver_operator.views import lease_node

log = logging.getLogger(__name__)

MIN_AGE: Final = 60.0
RESOURCES: Final = {r.plural: r for r in (NODE_DEVICES, NODE_DRIVER_CONFIGS, LEASES)}


def _created(obj: dict[str, Any]) -> float | None:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    try:
        return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() if stamp else None
    except ValueError:
        return None


def _object(res: Resource, obj: dict[str, Any], node: str | None) -> PerNodeObject | None:
    meta = obj.get("metadata") or {}
    if not node or not meta.get("uid"):
        return None
    return PerNodeObject(
        res.plural, str(meta["name"]), meta.get("namespace"), str(meta["uid"]), node, _created(obj)
    )


class Sweeper:
    def __init__(
        self,
        kube: KubeClient,
        lease_namespace: str,
        interval: float,
        *,
        min_age: float = MIN_AGE,
        clock: Callable[[], float] = time.time,
    ):
        self.kube = kube
        self.lease_namespace = lease_namespace
        self.interval = interval
        self.min_age = min_age
        self.clock = clock
        self.removed = 0

    async def per_node_objects(self) -> list[PerNodeObject]:
        found: list[PerNodeObject | None] = []
        devices, _ = await self.kube.list(NODE_DEVICES)
        found += [_object(NODE_DEVICES, d, (d.get("spec") or {}).get("nodeName")) for d in devices]
        configs, _ = await self.kube.list(NODE_DRIVER_CONFIGS)
        found += [_object(NODE_DRIVER_CONFIGS, c, c["metadata"]["name"]) for c in configs]
        leases, _ = await self.kube.list(LEASES, namespace=self.lease_namespace)
        found += [_object(LEASES, lease, lease_node(lease)) for lease in leases]
        return [o for o in found if o is not None]

    async def sweep_once(self) -> list[PerNodeObject]:
        """Delete the orphans found now; returns those deleted."""
        nodes, _ = await self.kube.list(NODES)
        live = {str(n["metadata"]["name"]) for n in nodes}
        deleted = []
        for obj in orphans(await self.per_node_objects(), live, self.clock(), self.min_age):
            if await self.kube.get_or_none(NODES, obj.node) is not None:
                continue  # the Node was created after the list
            try:
                await self.kube.delete(RESOURCES[obj.kind], obj.name, obj.namespace, uid=obj.uid)
            except ApiError as exc:
                if not exc.conflict:
                    log.warning(
                        "cannot delete an orphan", extra=fields(object=obj.describe(), error=str(exc))
                    )
                continue
            deleted.append(obj)
            log.info("deleted an object whose Node is gone", extra=fields(object=obj.describe()))
        self.removed += len(deleted)
        return deleted

    async def run(self) -> None:
        """Sweep every interval until cancelled; the first sweep one interval after start."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep_once()
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("sweep failed; trying again next interval", extra=fields(error=str(exc)))
