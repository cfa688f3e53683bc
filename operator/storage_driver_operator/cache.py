"""A lean list-and-watch cache of one resource, held as slim views.

List, then watch from the list's resourceVersion; resume from the last seen version when a
watch ends or goes quiet for longer than the inactivity timeout; re-list when the server
answers 410 Gone, and report the difference as changes. kopf's indexes and per-object
handlers do not scale to 16,000 NodeDevices (see docs/operator.md), this does.

How it lists: a paginated list is read from etcd page by page, and on this project's
development machine that costs 10-16 s for 16,000 NodeDevices. The API server's watch cache
serves the same list (`resourceVersion=0`) several times faster, but only whole (no pages), and
it may trail etcd by a moment, which the watch from the list's version then makes up (this is
what client-go's informers do). So, by default, the cache lists from the watch cache and reads
the response item by item as it arrives (`liststream`), projecting each object at once so the
full objects never pile up; the controller lets the watches catch up for a moment before it
plans. `from_watch_cache=False` lists page by page from etcd (consistent, slower); a server
that cannot serve the whole list falls back to that too.

(Asking the watch cache for a list *not older than* etcd's current version would be consistent
at once, but Kubernetes 1.20's cache does not know it is current for a resource nobody wrote to
lately: it waits 3 s and refuses.)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import aiohttp
from storage_driver_api.kube import ApiError, KubeClient, Resource
from storage_driver_api.logs import fields
from storage_driver_api.watchorder import WatchOrder, version_number

from storage_driver_operator.liststream import ListParser

log = logging.getLogger(__name__)

V = TypeVar("V")
Obj = Mapping[str, Any]
ChangeFn = Callable[[str, Any, Any], None]

PROGRESS_EVERY_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 30.0
QUICK_END_SECONDS = 1.0  # a watch the server ends sooner than this is not its timeout


def rewatch_delay(failures: int, watched_seconds: float, jitter: float = 1.0) -> float:
    """Seconds before listing or watching again. None after a watch the server ended normally (its
    timeoutSeconds): the next one resumes from the last version, and any wait would only delay
    the events of that moment. A watch that ended at once, or a failure, backs off instead
    (0.5 s, then doubling per failure up to 30 s), so that a server closing every watch is not
    asked again in a loop. `jitter` (0.8-1.2) keeps many operators from retrying in step."""
    if failures == 0 and watched_seconds >= QUICK_END_SECONDS:
        return 0.0
    return min(MAX_BACKOFF_SECONDS, 0.5 * 2.0 ** min(failures, 8)) * jitter


def object_name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


class Informer(Generic[V]):
    """Keeps `items` (key -> view) in step with the API server.

    `on_change(key, old, new)` is called for every change of a view (new None: deleted), also
    while the initial list fills the store; `synced` is set once the first list completed.
    """

    def __init__(
        self,
        kube: KubeClient,
        resource: Resource,
        project: Callable[[Obj], V | None],
        *,
        key: Callable[[Obj], str | None] = object_name,
        namespace: str | None = None,
        label_selector: str | None = None,
        on_change: ChangeFn | None = None,
        page_size: int = 500,
        watch_timeout: float = 300.0,
        inactivity_timeout: float = 70.0,
        from_watch_cache: bool = True,
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.project = project
        self.key = key
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_change = on_change
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.inactivity_timeout = inactivity_timeout
        self.from_watch_cache = from_watch_cache
        self.items: dict[str, V] = {}
        self._versions: dict[str, int] = {}
        self.resource_version = ""
        self._order = WatchOrder()  # drops duplicated and replayed events, DELETED ones included
        self.synced = asyncio.Event()
        self.lists = 0
        self.watches = 0
        self.events = 0
        self.last_error: str | None = None
        self.list_seconds: float | None = None

    @property
    def kind(self) -> str:
        return self.resource.plural

    # --- store -------------------------------------------------------------------------------

    def _put(self, key: str, view: V | None, version: int | None) -> None:
        old = self.items.get(key)
        if view is None:
            if key not in self.items:
                return
            del self.items[key]
            self._versions.pop(key, None)
        else:
            self.items[key] = view
            if version is not None:
                self._versions[key] = version
            if old == view:
                return
        if self.on_change is not None:
            self.on_change(key, old, view)

    def _newer(self, key: str, version: int | None) -> bool:
        known = self._versions.get(key)
        return version is None or known is None or version > known

    def apply(self, obj: Obj) -> None:
        """Take an object the caller just wrote (write-through), without calling on_change; the
        watch event for the same version is then ignored."""
        key = self.key(obj)
        version = version_number((obj.get("metadata") or {}).get("resourceVersion"))
        if key and self._newer(key, version):
            view = self.project(obj)
            if view is None:
                self.items.pop(key, None)
            else:
                self.items[key] = view
            if version is not None:
                self._versions[key] = version

    # --- list --------------------------------------------------------------------------------

    def _project_into(self, fresh: dict[str, tuple[V, int | None]], obj: Obj) -> None:
        key = self.key(obj)
        view = self.project(obj)
        if key and view is not None:
            version = version_number((obj.get("metadata") or {}).get("resourceVersion"))
            fresh[key] = (view, version)

    async def _list_pages(self, fresh: dict[str, tuple[V, int | None]]) -> str:
        """Paginated, consistent reads from etcd; the list's resourceVersion."""
        token: str | None = None
        last_progress = time.monotonic()
        while True:
            page = await self.kube.list_page(
                self.resource,
                namespace=self.namespace,
                label_selector=self.label_selector,
                limit=self.page_size,
                continue_token=token,
            )
            for obj in page.get("items") or []:
                self._project_into(fresh, obj)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if time.monotonic() - last_progress > PROGRESS_EVERY_SECONDS:
                last_progress = time.monotonic()
                log.info("listing", extra=fields(kind=self.kind, listed=len(fresh)))
            if not token:
                return str(meta.get("resourceVersion", ""))

    async def _list_from_watch_cache(self, fresh: dict[str, tuple[V, int | None]]) -> str:
        """The whole list from the API server's watch cache, read item by item; the list's
        resourceVersion."""
        params: dict[str, str | int] = {"resourceVersion": "0"}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        parser = ListParser()
        last_progress = time.monotonic()
        async for chunk in self.kube.get_chunks(self.resource.path(namespace=self.namespace), params):
            for obj in parser.feed(chunk):
                self._project_into(fresh, obj)
            if time.monotonic() - last_progress > PROGRESS_EVERY_SECONDS:
                last_progress = time.monotonic()
                log.info("listing", extra=fields(kind=self.kind, listed=len(fresh)))
        for obj in parser.close():
            self._project_into(fresh, obj)
        return str((parser.fields.get("metadata") or {}).get("resourceVersion") or "")

    async def _list(self) -> None:
        started = time.monotonic()
        fresh: dict[str, tuple[V, int | None]] = {}
        version = ""
        source = "watch cache"
        if self.from_watch_cache:
            try:
                version = await self._list_from_watch_cache(fresh)
            except (ApiError, ValueError) as exc:
                if isinstance(exc, ApiError) and exc.not_found:
                    raise
                log.warning(
                    "cannot list from the watch cache; listing page by page",
                    extra=fields(kind=self.kind, error=str(exc)),
                )
                fresh.clear()
        if not version:
            source = "pages"
            version = await self._list_pages(fresh)
        self.resource_version = version
        self._order.restart(version)
        for key in [k for k in self.items if k not in fresh]:
            self._put(key, None, None)
        for key, (view, item_version) in fresh.items():
            self._put(key, view, item_version)
        self.lists += 1
        self.list_seconds = time.monotonic() - started
        level = logging.INFO if not self.synced.is_set() else logging.DEBUG
        log.log(
            level,
            "listed" if self.lists == 1 else "re-listed",
            extra=fields(
                kind=self.kind, objects=len(self.items), seconds=round(self.list_seconds, 3), source=source
            ),
        )
        self.synced.set()

    # --- watch -------------------------------------------------------------------------------

    def _event(self, kind: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        if not self._order.take(rv):
            return  # a duplicate or replay; resuming from its version would ask for it again
        if rv:
            self.resource_version = str(rv)
        if kind == "BOOKMARK":
            return
        self.events += 1
        key = self.key(obj)
        if not key:
            return
        version = version_number(rv)
        if kind == "DELETED":
            self._put(key, None, None)
        elif self._newer(key, version):
            self._put(key, self.project(obj), version)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = max(10, int(self.watch_timeout * random.uniform(0.8, 1.0)))
        self.watches += 1
        async with asyncio.timeout(self.inactivity_timeout) as guard:
            async for event in self.kube.watch(
                self.resource,
                resource_version=self.resource_version,
                namespace=self.namespace,
                label_selector=self.label_selector,
                timeout_seconds=timeout,
            ):
                guard.reschedule(loop.time() + self.inactivity_timeout)
                self._event(event.type, event.object)

    async def run(self) -> None:
        """List, then watch forever (until cancelled), recovering from every error."""
        failures = 0
        while True:
            watched = 0.0
            try:
                if not self.resource_version:
                    await self._list()
                started = time.monotonic()
                await self._watch()
                watched = time.monotonic() - started
                failures = 0
                self.last_error = None
            except ApiError as exc:
                if exc.gone:
                    # Our version is older than the server keeps: list again (changes reported).
                    log.debug("watch expired; re-listing", extra=fields(kind=self.kind))
                    self.resource_version = ""
                    continue
                failures += 1
                self._failed(exc, failures)
            except TimeoutError:
                # Silent for longer than the inactivity timeout: reconnect from where we were.
                log.debug("watch inactive; reconnecting", extra=fields(kind=self.kind))
                continue
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                failures += 1
                self._failed(exc, failures)
            delay = rewatch_delay(failures, watched, random.uniform(0.8, 1.2))
            if delay:
                await asyncio.sleep(delay)

    def _failed(self, exc: Exception, failures: int) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}".strip()
        if isinstance(exc, ApiError) and exc.not_found:
            self.last_error = f"{self.resource.api_version} {self.kind} is not served: is its CRD installed?"
        level = logging.DEBUG if failures == 1 else logging.WARNING
        log.log(
            level,
            "watch failed; retrying",
            extra=fields(kind=self.kind, failures=failures, error=self.last_error),
        )
