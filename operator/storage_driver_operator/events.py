"""Posting Kubernetes Events about StorageDrivers (cluster-scoped, so they go to `default`, where
kubectl describe and kopf look for them)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket

import aiohttp
from storage_driver_api.constants import STORAGE_DRIVERS
from storage_driver_api.kube import EVENTS, ApiError, KubeClient
from storage_driver_api.logs import fields

from storage_driver_operator.status import Event
from storage_driver_operator.views import StorageDriverView

log = logging.getLogger(__name__)

COMPONENT = "storage-operator"
MAX_MESSAGE = 1024


def event_body(driver: StorageDriverView, event: Event, namespace: str, at: dt.datetime) -> dict[str, object]:
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            # Unique per event (as the kubelet names them): object name + a time-based suffix.
            "generateName": f"{driver.name[:200]}.",
            "namespace": namespace,
        },
        "involvedObject": {
            "apiVersion": STORAGE_DRIVERS.api_version,
            "kind": STORAGE_DRIVERS.kind,
            "name": driver.name,
            "uid": driver.uid,
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:MAX_MESSAGE],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": COMPONENT, "host": socket.gethostname()},
        "reportingComponent": COMPONENT,
        "reportingInstance": f"{socket.gethostname()}-{os.getpid()}",
    }


async def post(kube: KubeClient, driver: StorageDriverView, event: Event, namespace: str) -> None:
    """Post one Event; a failure is logged, never raised (Events are best effort)."""
    body = event_body(driver, event, namespace, dt.datetime.now(dt.UTC))
    try:
        await kube.create(EVENTS, body, namespace=namespace)
    except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning(
            "cannot post event",
            extra=fields(storage_driver=driver.name, reason=event.reason, error=str(exc)),
        )
