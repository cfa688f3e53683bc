"""A small asyncio Kubernetes API client on aiohttp.

The operator, the agent and the CLI only need a handful of verbs on a few resources, and
the operator must hold 16,000 NodeDevices as plain dicts; a generated client with typed
models for every kind would cost far more memory than the objects themselves. Credentials
come from the `kubernetes` package's config loaders (`storage_driver_api.credentials`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from storage_driver_api.credentials import Credentials, KubeConfigError, load_credentials, load_kubeconfig
from storage_driver_api.resource import Resource

__all__ = [
    "ApiError",
    "Credentials",
    "KubeClient",
    "KubeConfigError",
    "Resource",
    "WatchEvent",
    "load_credentials",
    "load_kubeconfig",
]

Obj = dict[str, Any]


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str, body: Mapping[str, Any] | None = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = dict(body or {})

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def retryable(self) -> bool:
        return self.status in (429, 500, 502, 503, 504)


# What a request raises when the API server cannot be reached or drops the connection (it was
# killed, restarted or paused): aiohttp's ServerDisconnectedError is a ClientError, not an OSError.
TRANSPORT_ERRORS: Final = (aiohttp.ClientError, TimeoutError, OSError)

NODES: Final = Resource("", "v1", "nodes", "Node")
NAMESPACES: Final = Resource("", "v1", "namespaces", "Namespace")
EVENTS: Final = Resource("", "v1", "events", "Event", namespaced=True)
CONFIGMAPS: Final = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True)
SECRETS: Final = Resource("", "v1", "secrets", "Secret", namespaced=True)
SERVICEACCOUNTS: Final = Resource("", "v1", "serviceaccounts", "ServiceAccount", namespaced=True)
LEASES: Final = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)
PODS: Final = Resource("", "v1", "pods", "Pod", namespaced=True)
CLUSTER_ROLES: Final = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole")
VALIDATING_WEBHOOKS: Final = Resource(
    "admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", "ValidatingWebhookConfiguration"
)
CRDS: Final = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition")


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: Obj


class KubeClient:
    """Async client for the few verbs this project uses. Objects are plain dicts."""

    def __init__(self, credentials: Credentials, *, request_timeout: float = 30.0, user_agent: str = ""):
        self.credentials = credentials
        self._ssl = credentials.ssl_context()
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None
        self._user_agent = user_agent or "storage-driver-operator"
        # Answers by (verb, HTTP status, or "error" when none came), for the components' metrics.
        self.responses: Counter[tuple[str, str]] = Counter()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=64)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers={"User-Agent": self._user_agent}
            )
        return self._session

    @property
    def _connection(self) -> dict[str, Any]:
        """Per-request settings from the kubeconfig: its proxy-url and tls-server-name."""
        extra: dict[str, Any] = {}
        if self.credentials.proxy:
            extra["proxy"] = self.credentials.proxy
        if self.credentials.tls_server_name:
            extra["server_hostname"] = self.credentials.tls_server_name
        return extra

    async def _headers(
        self, content_type: str | None = None, *, refused: str | None = None
    ) -> dict[str, str]:
        """Request headers; `refused`: the Authorization the server just answered 401 to."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        await self._renew(refused)
        if authorization := self.credentials.authorization():
            headers["Authorization"] = authorization
        return headers

    async def _renew(self, refused: str | None = None) -> None:
        if refused is not None or self.credentials.renewal_due():
            # Renewing may run an exec plugin: not on the event loop.
            await asyncio.to_thread(self.credentials.renew, force=refused is not None, refused=refused)

    @contextlib.asynccontextmanager
    async def _counted(
        self, verb: str, request: AbstractAsyncContextManager[aiohttp.ClientResponse]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Count the answer to `request` in `responses` (a transport failure as "error")."""
        async with contextlib.AsyncExitStack() as stack:
            try:
                response = await stack.enter_async_context(request)
            except (aiohttp.ClientError, TimeoutError, OSError):
                self.responses[verb, "error"] += 1
                raise
            self.responses[verb, str(response.status)] += 1
            yield response

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Obj:
        data = None if body is None else json.dumps(body)
        # A token the server refuses (revoked, rotated early) is renewed once, as kubectl does.
        refused: str | None = None
        for attempt in range(2 if self.credentials.renewable else 1):
            headers = await self._headers(content_type if data is not None else None, refused=refused)
            async with self._counted(
                method,
                self.session.request(
                    method,
                    self.credentials.server + path,
                    params={k: str(v) for k, v in (params or {}).items()},
                    data=data,
                    headers=headers,
                    **self._connection,
                ),
            ) as response:
                text = await response.text()
                if response.status == 401 and attempt == 0 and self.credentials.renewable:
                    refused = headers.get("Authorization", "")
                    continue
                payload: Obj = json.loads(text) if text.strip().startswith("{") else {}
                if response.status >= 400:
                    raise ApiError(
                        response.status,
                        str(payload.get("reason") or response.reason),
                        str(payload.get("message") or text[:500]),
                        payload,
                    )
                return payload
        raise AssertionError("unreachable")

    # --- verbs -------------------------------------------------------------------------------

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        return await self.request("GET", res.path(name, namespace))

    async def get_or_none(self, res: Resource, name: str, namespace: str | None = None) -> Obj | None:
        try:
            return await self.get(res, name, namespace)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def list_page(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 500,
        continue_token: str | None = None,
    ) -> Obj:
        params: dict[str, str | int] = {"limit": limit}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if continue_token:
            params["continue"] = continue_token
        return await self.request("GET", res.path(namespace=namespace), params=params)

    async def list(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 500,
    ) -> tuple[list[Obj], str]:
        """All objects (paginated) and the list's resourceVersion to watch from."""
        items: list[Obj] = []
        token: str | None = None
        while True:
            page = await self.list_page(
                res,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=limit,
                continue_token=token,
            )
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items, str((page.get("metadata") or {}).get("resourceVersion", ""))

    async def get_chunks(
        self, path: str, params: Mapping[str, str | int], *, read_timeout: float = 60.0
    ) -> AsyncIterator[bytes]:
        """GET `path` and yield the body as it arrives, for responses too big to hold as one text
        (a list of 16,000 objects). No total timeout; `read_timeout` bounds each silence."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
        async with self._counted(
            "GET",
            self.session.get(
                self.credentials.server + path,
                params={k: str(v) for k, v in params.items()},
                headers=await self._headers(),
                timeout=timeout,
                **self._connection,
            ),
        ) as response:
            if response.status >= 400:
                text = await response.text()
                payload = json.loads(text) if text.strip().startswith("{") else {}
                raise ApiError(
                    response.status,
                    str(payload.get("reason") or response.reason),
                    str(payload.get("message") or text[:500]),
                    payload,
                )
            async for chunk in response.content.iter_chunked(1 << 16):
                yield chunk

    async def create(self, res: Resource, body: Obj, namespace: str | None = None) -> Obj:
        return await self.request("POST", res.path(namespace=namespace), body=body)

    async def replace(
        self,
        res: Resource,
        name: str,
        body: Obj,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj:
        return await self.request("PUT", res.path(name, namespace, subresource), body=body)

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        patch_type: str = "merge",
    ) -> Obj:
        content_type = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
        }[patch_type]
        return await self.request(
            "PATCH", res.path(name, namespace, subresource), body=patch, content_type=content_type
        )

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation: str | None = None,
        uid: str | None = None,
    ) -> Obj | None:
        """Delete; `uid` makes it a precondition (a 409 if the name now holds another object)."""
        options: dict[str, Any] = {}
        if propagation:
            options["propagationPolicy"] = propagation
        if uid:
            options["preconditions"] = {"uid": uid}
        body = {"kind": "DeleteOptions", "apiVersion": "v1", **options} if options else None
        try:
            return await self.request("DELETE", res.path(name, namespace), body=body)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def watch(
        self,
        res: Resource,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """Stream watch events from resource_version until the server ends the watch.

        Raises ApiError(410) when the version is too old: the caller must re-list.
        """
        params: dict[str, str] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        # The server closes the stream after timeoutSeconds; allow a margin, and detect a silent
        # connection with a read timeout longer than the bookmark interval (about a minute).
        timeout = aiohttp.ClientTimeout(total=timeout_seconds + 30, sock_read=timeout_seconds + 15)
        headers = await self._headers()
        async with self._counted(
            "WATCH",
            self.session.get(
                self.credentials.server + res.path(namespace=namespace),
                params=params,
                headers=headers,
                timeout=timeout,
                **self._connection,
            ),
        ) as response:
            if response.status >= 400:
                text = await response.text()
                payload = json.loads(text) if text.startswith("{") else {}
                if response.status == 401 and self.credentials.renewable:
                    # The caller watches again after an error: with a renewed token.
                    await self._renew(refused=headers.get("Authorization", ""))
                raise ApiError(
                    response.status, str(payload.get("reason", "")), str(payload.get("message", text))
                )
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiError(
                        int(status.get("code", 500)),
                        str(status.get("reason", "")),
                        str(status.get("message", "")),
                    )
                yield WatchEvent(event["type"], event["object"])


async def retry(
    coro_factory: Any, *, attempts: int = 8, base_delay: float = 0.2, max_delay: float = 10.0
) -> Any:
    """Run coro_factory() until it succeeds, backing off on transient API and network errors."""
    delay = base_delay
    for attempt in range(attempts):
        try:
            return await coro_factory()
        except ApiError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
        except (TimeoutError, aiohttp.ClientError, OSError):
            if attempt == attempts - 1:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")
