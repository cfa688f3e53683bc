"""Posting Kubernetes Events about StorageDrivers (cluster-scoped, so they go to `default`, where
kubectl describe and kopf look for them)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket

import aiohttp
from storage_driver_api.constants import STORAGE_DRIVERS
from storage_driver_api.events import event_body
from storage_driver_api.kube import EVENTS, ApiError, KubeClient
from storage_driver_api.logs import fields

from storage_driver_operator.status import Event
from storage_driver_operator.views import StorageDriverView

log = logging.getLogger(__name__)

COMPONENT = "storage-operator"


async def post(kube: KubeClient, driver: StorageDriverView, event: Event, namespace: str) -> None:
    """Post one Event; a failure is logged, never raised (Events are best effort)."""
    body = event_body(
        {
            "apiVersion": STORAGE_DRIVERS.api_version,
            "kind": STORAGE_DRIVERS.kind,
            "name": driver.name,
            "uid": driver.uid,
        },
        reason=event.reason,
        message=event.message,
        warning=event.type == "Warning",
        component=COMPONENT,
        host=socket.gethostname(),
        instance=f"{socket.gethostname()}-{os.getpid()}",
        at=dt.datetime.now(dt.UTC),
        namespace=namespace,
    )
    try:
        await kube.create(EVENTS, body, namespace=namespace)
    except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning(
            "cannot post event",
            extra=fields(storage_driver=driver.name, reason=event.reason, error=str(exc)),
        )
