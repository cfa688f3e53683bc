"""What the agent tells the cluster about its drivers: NodeDriverConfig.status (only when it
changed), NodeDevice.status.boundDrivers, Kubernetes Events, and the node's liveness Lease."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from storage_driver_api.constants import API_VERSION, NODE_DEVICES, NODE_DRIVER_CONFIGS, lease_name
from storage_driver_api.events import EVENT_NAMESPACE, event_body
from storage_driver_api.kube import EVENTS, LEASES, NODES, TRANSPORT_ERRORS, ApiError, KubeClient
from storage_driver_api.logs import fields

from storage_driver_agent.drivers.status import merge_patch, write_delay
from storage_driver_agent.stopping import sleep_or_stop, wait_or_stop

log = logging.getLogger(__name__)

COMPONENT: Final = "storage-agent"
MAX_QUEUED_EVENTS: Final = 1000
# The longest the agent's other writes wait for a due status write (one the API server keeps
# refusing must not hold the Events and boundDrivers back for long).
STATUS_FIRST_SECONDS: Final = 1.0


class StatusWriter:
    """Writes NodeDriverConfig.status whenever the submitted status differs from the last written.

    A status submitted while an action runs is held back for a moment (status.write_delay), so
    that a quick load costs one write; any other is written at once. Changes submitted while a
    write is in flight become one write of the newest. The agent is the status's only writer, so
    each write is the merge patch from what it wrote last (or what the object held when the agent
    started) to the new status: only what changed is sent, which the API server processes far
    faster than a replacement of the whole status.

    A due status write goes before the agent's other writes (`first`): it is what the operator
    and users wait for, and on a small API server parallel writes slow each other down."""

    def __init__(self, kube: KubeClient, name: str):
        self.kube = kube
        self.name = name
        self.latest: dict[str, Any] | None = None
        self.settling = False  # an action runs: `latest` is about to change again
        self.written: dict[str, Any] | None = None
        self.writes = 0
        self._held_since: float | None = None
        self._wake = asyncio.Event()
        self._in_flight = False
        self._missing = False  # the last write found no object: written once it exists
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, status: dict[str, Any], *, settling: bool = False) -> None:
        if status != self.latest or settling != self.settling:
            self.latest, self.settling = status, settling
            self._wake.set()
            self._update_idle()

    def server_has(self, status: dict[str, Any]) -> None:
        """The status a new object holds (first read, or the object was deleted and created
        again). What was submitted before is dropped: it was computed for the old object's spec,
        and a recreated object's generation starts again at the same small numbers, so written
        to the new one it would claim a spec not yet acted on. The next submit is written."""
        self.written = status
        self.latest, self.settling, self._held_since = None, False, None
        self._missing = False
        self._wake.set()
        self._update_idle()

    def _update_idle(self) -> None:
        due = (
            not self.settling
            and not self._missing
            and self.latest is not None
            and self.written is not None
            and self.latest != self.written
        )
        if self._in_flight or due:
            self._idle.clear()
        else:
            self._idle.set()

    async def first(self) -> None:
        """Returns once no status write is due or in flight (a held one is not due), or after
        STATUS_FIRST_SECONDS."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STATUS_FIRST_SECONDS)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.2
        while not stop.is_set():
            if not await wait_or_stop(self._wake, stop):
                return
            self._wake.clear()
            status, written = self.latest, self.written
            if status is None or written is None or status == written:
                self._held_since = None
                continue
            now = loop.time()
            if wait := write_delay(self.settling, self._held_since, now):
                self._held_since = now if self._held_since is None else self._held_since
                await wait_or_stop(self._wake, stop, wait)
                self._wake.set()  # look again: a newer status, or the hold is over
                continue
            self._held_since = None
            self._in_flight = True
            try:
                await self.kube.patch(
                    NODE_DRIVER_CONFIGS,
                    self.name,
                    {"status": merge_patch(written, status)},
                    subresource="status",
                )
                self.written = status
                self.writes += 1
                delay = 0.2
            except ApiError as exc:
                self._missing = exc.not_found
                if not exc.not_found:  # missing: written again once the object exists
                    log.warning("cannot write NodeDriverConfig status", extra=fields(error=str(exc)))
                    await sleep_or_stop(stop, delay)
                    delay = min(delay * 2, 10.0)
                    self._wake.set()
            except TRANSPORT_ERRORS as exc:
                log.warning("cannot write NodeDriverConfig status", extra=fields(error=repr(exc)))
                await sleep_or_stop(stop, delay)
                delay = min(delay * 2, 10.0)
                self._wake.set()
            finally:
                self._in_flight = False
                self._update_idle()


class BindingWriter:
    """Keeps NodeDevice.status.boundDrivers equal to the drivers whose hosts have the device
    attached; patches only the devices whose list changed, and only that field."""

    def __init__(self, kube: KubeClient, first: Callable[[], Awaitable[None]] | None = None):
        self.kube = kube
        self.first = first  # waits for writes that go before ours
        self.sent: dict[str, list[str]] = {}
        self._wanted: dict[str, list[str]] = {}
        self._known: dict[str, list[str]] = {}
        self._wake = asyncio.Event()

    def submit(self, wanted: Mapping[str, list[str]], known: Mapping[str, list[str]]) -> None:
        """wanted: device -> drivers bound now; known: device -> boundDrivers as the API shows it."""
        self._wanted = dict(wanted)
        self._known = dict(known)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not await wait_or_stop(self._wake, stop):
                return
            self._wake.clear()
            for device, current in self._known.items():
                wanted = self._wanted.get(device, [])
                if self.sent.get(device, current) == wanted:
                    continue
                if self.first is not None:
                    await self.first()
                try:
                    await self.kube.patch(
                        NODE_DEVICES, device, {"status": {"boundDrivers": wanted}}, subresource="status"
                    )
                    self.sent[device] = wanted
                except ApiError as exc:
                    if exc.not_found:
                        self.sent.pop(device, None)
                        continue
                    log.warning(
                        "cannot write NodeDevice boundDrivers", extra=fields(device=device, error=str(exc))
                    )
                    await sleep_or_stop(stop, 1.0)
                    self._wake.set()
                    break
                except TRANSPORT_ERRORS as exc:
                    log.warning(
                        "cannot write NodeDevice boundDrivers", extra=fields(device=device, error=repr(exc))
                    )
                    await sleep_or_stop(stop, 1.0)
                    self._wake.set()
                    break


class EventRecorder:
    """Emits core/v1 Events about the node's NodeDriverConfig without blocking the caller."""

    def __init__(
        self,
        kube: KubeClient,
        node: str,
        config_uid: Callable[[], str | None],
        first: Callable[[], Awaitable[None]] | None = None,
    ):
        self.kube = kube
        self.node = node
        self.config_uid = config_uid
        self.first = first  # waits for writes that go before ours
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUED_EVENTS)
        self.emitted: list[tuple[str, str]] = []  # (reason, message), the most recent ones

    def emit(self, reason: str, message: str, *, warning: bool = False) -> None:
        involved: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "NodeDriverConfig", "name": self.node}
        if uid := self.config_uid():
            involved["uid"] = uid
        body = event_body(
            involved,
            reason=reason,
            message=message,
            warning=warning,
            component=COMPONENT,
            host=self.node,
            instance=self.node,
            at=dt.datetime.now(dt.UTC),
        )
        self.emitted = [*self.emitted[-99:], (reason, message)]
        try:
            self._queue.put_nowait(body)
        except asyncio.QueueFull:
            log.warning("event queue full; dropping an event", extra=fields(reason=reason, message=message))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            getter = asyncio.ensure_future(self._queue.get())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not getter.done():
                getter.cancel()
                return
            body = getter.result()
            if self.first is not None:
                await self.first()
            try:
                await self.kube.create(EVENTS, body, namespace=EVENT_NAMESPACE)
            except (ApiError, *TRANSPORT_ERRORS) as exc:
                log.warning("cannot create an Event", extra=fields(reason=body["reason"], error=str(exc)))


def _micro_time(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseKeeper:
    """The node agent's liveness: one coordination.k8s.io Lease, renewed every few seconds.

    The Lease is owned by its Node (an ownerReference), so deleting the Node has the garbage
    collector delete the Lease too, as it does the node's NodeDevices and NodeDriverConfig."""

    def __init__(self, kube: KubeClient, node: str, namespace: str, duration: int = 40, renew: float = 10.0):
        self.kube = kube
        self.node = node
        self.namespace = namespace
        self.duration = duration
        self.renew = renew
        self.name = lease_name(node)
        self._warned = False
        self._owner_uid: str | None = None

    async def _owner(self) -> list[dict[str, Any]]:
        """The Lease's ownerReferences: the Node, once it exists (read again after a 404, since a
        Node deleted and created again has a new uid and the collector removed the old Lease)."""
        if self._owner_uid is None:
            node = await self.kube.get_or_none(NODES, self.node)
            self._owner_uid = str(node["metadata"]["uid"]) if node is not None else None
        if self._owner_uid is None:
            return []
        return [{"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self._owner_uid}]

    async def renew_once(self) -> None:
        now = _micro_time(dt.datetime.now(dt.UTC))
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": self.duration, "renewTime": now}
        owners = await self._owner()
        patch: dict[str, Any] = {"spec": spec}
        if owners:
            patch["metadata"] = {"ownerReferences": owners}
        try:
            await self.kube.patch(LEASES, self.name, patch, namespace=self.namespace)
        except ApiError as exc:
            if not exc.not_found:
                raise
            self._owner_uid = None
            owners = await self._owner()
            if not owners:
                # No Node (yet, or any more): a Lease now would outlive it, owned by nothing.
                raise ApiError(
                    404, "NotFound", f"Node {self.node} not found; the agent's Lease waits for it"
                ) from exc
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace, "ownerReferences": owners},
                "spec": {**spec, "acquireTime": now},
            }
            try:
                await self.kube.create(LEASES, body, namespace=self.namespace)
            except ApiError as create_exc:
                if not create_exc.conflict:
                    raise

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.renew_once()
                if self._warned:
                    log.info("lease renewed again", extra=fields(lease=f"{self.namespace}/{self.name}"))
                self._warned = False
            except (ApiError, *TRANSPORT_ERRORS) as exc:
                if not self._warned:
                    log.warning(
                        "cannot renew the agent's lease; the operator may consider this agent down",
                        extra=fields(lease=f"{self.namespace}/{self.name}", error=str(exc)),
                    )
                self._warned = True
            await sleep_or_stop(stop, self.renew)
