"""The body of a core/v1 Event, as the operator and the agent post them.

Events about cluster-scoped objects (all of this project's kinds) go to the `default`
namespace, where `kubectl describe` looks for them.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

EVENT_NAMESPACE = "default"
MAX_MESSAGE = 1024


def event_body(
    involved: dict[str, Any],
    *,
    reason: str,
    message: str,
    warning: bool,
    component: str,
    host: str,
    instance: str,
    at: dt.datetime,
    namespace: str = EVENT_NAMESPACE,
) -> dict[str, Any]:
    """An Event about `involved` (apiVersion, kind, name and, when known, uid)."""
    stamp = at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        # Unique per event, as the kubelet names them: the object's name and a random suffix (the
        # name cut so that a DNS subdomain stays one: no label may end in '-' or '.').
        "metadata": {
            "name": f"{involved['name'][:200].rstrip('-.')}.{secrets.token_hex(8)}",
            "namespace": namespace,
        },
        "involvedObject": involved,
        "type": "Warning" if warning else "Normal",
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": component, "host": host},
        "reportingComponent": component,
        "reportingInstance": instance,
    }
