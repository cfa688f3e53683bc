"""Applies the writes `diff.plan` decided, and keeps the agent's view of its node's NodeDevices.

The view is the last list (server-side label selector: only this node's objects) updated with
the response to every write, so that a steady node costs no reads. Anything unexpected (an
object deleted or changed behind the agent's back: 404, 409) marks the view stale; the next
pass lists again and plans from the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from storage_driver_api.constants import NODE_DEVICES, NODE_LABEL, node_label_value
from storage_driver_api.kube import NODES, ApiError, KubeClient
from storage_driver_api.logs import fields

from storage_driver_agent.devices.diff import Action, Create, Delete, Owner, SetPresence, UpdateSpec

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class NodeNotFound(Exception):
    """The agent's Node object does not exist (yet, or any more): nothing can be owned by it."""


class Publisher:
    def __init__(self, kube: KubeClient, node_name: str):
        self.kube = kube
        self.node_name = node_name
        self.objects: dict[str, Obj] = {}
        self.owner: Owner | None = None
        self.stale = True
        self.writes = 0

    @property
    def selector(self) -> str:
        return f"{NODE_LABEL}={node_label_value(self.node_name)}"

    async def refresh(self) -> None:
        """Re-read the Node (its uid owns the NodeDevices) and list the node's NodeDevices."""
        node = await self.kube.get_or_none(NODES, self.node_name)
        if node is None:
            self.owner = None
            raise NodeNotFound(f"Node {self.node_name!r} does not exist")
        self.owner = Owner(self.node_name, str(node["metadata"]["uid"]))
        items, _ = await self.kube.list(NODE_DEVICES, label_selector=self.selector)
        self.objects = {item["metadata"]["name"]: item for item in items}
        self.stale = False

    async def apply(self, actions: Sequence[Action]) -> None:
        """Apply every action; ApiErrors that a re-list resolves mark the view stale, others
        (the API server unreachable or failing) propagate so that the caller backs off."""
        for action in actions:
            try:
                await self._apply(action)
            except ApiError as exc:
                if exc.not_found or exc.conflict:
                    log.debug(
                        "NodeDevice changed behind the agent; re-listing",
                        extra=fields(nodedevice=action.name, error=str(exc)),
                    )
                    self.stale = True
                elif exc.status in (400, 422):
                    log.error(
                        "the API server refused a NodeDevice write",
                        extra=fields(nodedevice=action.name, action=type(action).__name__, error=str(exc)),
                    )
                else:
                    self.stale = True
                    raise

    async def _apply(self, action: Action) -> None:
        if isinstance(action, Create):
            created = await self.kube.create(NODE_DEVICES, action.body)
            self.writes += 1
            self.objects[action.name] = created
            spec = action.spec
            log.info(
                "device arrived",
                extra=fields(
                    nodedevice=action.name,
                    device=spec.kernel_name,
                    type=str(spec.type),
                    size_bytes=spec.size_bytes,
                    identity=f"{spec.identity.kind}:{spec.identity.value}",
                ),
            )
            await self._write_conditions(action.name, action.conditions)
        elif isinstance(action, UpdateSpec):
            self.objects[action.name] = await self.kube.patch(NODE_DEVICES, action.name, action.patch)
            self.writes += 1
            log.info("device changed", extra=fields(nodedevice=action.name, changed=",".join(action.changed)))
        elif isinstance(action, SetPresence):
            await self._write_conditions(action.name, action.conditions)
            log.info(
                "device present" if action.present else "device gone",
                extra=fields(nodedevice=action.name, device=action.kernel_name),
            )
        elif isinstance(action, Delete):
            body = {
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "preconditions": {"uid": action.uid, "resourceVersion": action.resource_version},
            }
            try:
                await self.kube.request("DELETE", NODE_DEVICES.path(action.name), body=body)
            except ApiError as exc:
                if not exc.not_found:
                    raise
            self.writes += 1
            self.objects.pop(action.name, None)
            log.info(
                "NodeDevice of an earlier Node deleted"
                if action.earlier_node
                else "NodeDevice deleted after retention",
                extra=fields(nodedevice=action.name, device=action.kernel_name),
            )

    async def _write_conditions(self, name: str, conditions: list[dict[str, Any]]) -> None:
        """Replace the condition list, unless another writer changed it since the agent read it."""
        current = self.objects.get(name) or {}
        known = (current.get("status") or {}).get("conditions")
        if known:
            # Guard the list itself, not the object's resourceVersion: the driver runtime writes
            # status.boundDrivers of the same objects, and a resourceVersion guard made the first
            # write after each binding fail (409) and cost a re-list before the retry.
            patch: Any = [
                {"op": "test", "path": "/status/conditions", "value": known},
                {"op": "replace", "path": "/status/conditions", "value": conditions},
            ]
            try:
                written = await self.kube.patch(
                    NODE_DEVICES, name, patch, subresource="status", patch_type="json"
                )
            except ApiError as exc:
                # A failed test op is a 422 with no details, like a refused value: the object says which.
                if exc.status == 422 and await self._conditions_of(name) != known:
                    raise ApiError(
                        409, "Conflict", f"another writer changed the conditions of {name}"
                    ) from exc
                raise
        else:
            # A new object: only a write based on its version may give it a condition list.
            version = (current.get("metadata") or {}).get("resourceVersion")
            patch = {"status": {"conditions": conditions}}
            if version:
                patch["metadata"] = {"resourceVersion": version}
            written = await self.kube.patch(NODE_DEVICES, name, patch, subresource="status")
        self.objects[name] = written
        self.writes += 1

    async def _conditions_of(self, name: str) -> Any:
        obj = await self.kube.get(NODE_DEVICES, name)
        return (obj.get("status") or {}).get("conditions")
