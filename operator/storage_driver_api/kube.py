"""A small asyncio Kubernetes API client on aiohttp.

The operator, the agent and the CLI only need a handful of verbs on a few resources, and
the operator must hold 16,000 NodeDevices as plain dicts; a generated client with typed
models for every kind would cost far more memory than the objects themselves.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

from storage_driver_api.resource import Resource

__all__ = ["ApiError", "Credentials", "KubeClient", "KubeConfigError", "Resource", "WatchEvent"]

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")

Obj = dict[str, Any]


class KubeConfigError(Exception):
    """No usable credentials were found, or a kubeconfig is malformed."""


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


NODES: Final = Resource("", "v1", "nodes", "Node")
NAMESPACES: Final = Resource("", "v1", "namespaces", "Namespace")
EVENTS: Final = Resource("", "v1", "events", "Event", namespaced=True)
CONFIGMAPS: Final = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True)
SECRETS: Final = Resource("", "v1", "secrets", "Secret", namespaced=True)
SERVICEACCOUNTS: Final = Resource("", "v1", "serviceaccounts", "ServiceAccount", namespaced=True)
LEASES: Final = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)
CRDS: Final = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition")


@dataclass
class Credentials:
    """Everything needed to reach one API server as one user."""

    server: str
    ca_data: bytes | None = None
    insecure: bool = False
    client_cert_data: bytes | None = None
    client_key_data: bytes | None = None
    token: str | None = None
    token_file: Path | None = None
    source: str = ""
    _tmp: list[str] = field(default_factory=list, repr=False)

    def bearer_token(self) -> str | None:
        # Projected service-account tokens rotate; re-read the file on every request.
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_data:
            ctx = ssl.create_default_context(cadata=self.ca_data.decode())
        else:
            ctx = ssl.create_default_context()
        if self.client_cert_data and self.client_key_data:
            # ssl only loads certificates from files.
            with tempfile.TemporaryDirectory(prefix="sdo-kube-") as tmp:
                cert = Path(tmp, "client.crt")
                key = Path(tmp, "client.key")
                cert.write_bytes(self.client_cert_data)
                key.write_bytes(self.client_key_data)
                key.chmod(0o600)
                ctx.load_cert_chain(cert, key)
        return ctx


def _read_field(entry: Mapping[str, Any], name: str, base: Path) -> bytes | None:
    if data := entry.get(f"{name}-data"):
        return base64.b64decode(data)
    if path := entry.get(name):
        resolved = Path(path) if Path(path).is_absolute() else base / path
        return resolved.read_bytes()
    return None


def load_kubeconfig(path: Path, context: str | None = None) -> Credentials:
    """Credentials from a kubeconfig file (client certificates, tokens, CA)."""
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
    name = context or config.get("current-context")
    if not name:
        raise KubeConfigError(f"kubeconfig {path} has no current-context; pass a context")

    def find(section: str, key: str) -> dict[str, Any]:
        for item in config.get(section) or []:
            if item.get("name") == key:
                return dict(item.get(section[:-1]) or {})
        raise KubeConfigError(f"kubeconfig {path}: {section[:-1]} {key!r} not found")

    ctx = find("contexts", name)
    cluster = find("clusters", ctx.get("cluster", ""))
    user = find("users", ctx["user"]) if ctx.get("user") else {}
    base = path.parent
    token_file = user.get("tokenFile")
    return Credentials(
        server=str(cluster.get("server", "")).rstrip("/"),
        ca_data=_read_field(cluster, "certificate-authority", base),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        client_cert_data=_read_field(user, "client-certificate", base),
        client_key_data=_read_field(user, "client-key", base),
        token=user.get("token"),
        token_file=Path(token_file) if token_file else None,
        source=f"kubeconfig {path} (context {name})",
    )


def load_in_cluster() -> Credentials:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token = SERVICE_ACCOUNT_DIR / "token"
    if not host or not token.exists():
        raise KubeConfigError(
            "not running in a cluster (no KUBERNETES_SERVICE_HOST or service-account token)"
        )
    if ":" in host:
        host = f"[{host}]"
    return Credentials(
        server=f"https://{host}:{port}",
        ca_data=(SERVICE_ACCOUNT_DIR / "ca.crt").read_bytes(),
        token_file=token,
        source="in-cluster service account",
    )


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """Credentials the way kubectl finds them: explicit file, $KUBECONFIG, ~/.kube/config, in-cluster."""
    if kubeconfig:
        return load_kubeconfig(Path(kubeconfig), context)
    if env := os.environ.get("KUBECONFIG"):
        first = next((p for p in env.split(os.pathsep) if p), "")
        if first:
            return load_kubeconfig(Path(first), context)
    default = Path.home() / ".kube" / "config"
    if default.exists():
        return load_kubeconfig(default, context)
    try:
        return load_in_cluster()
    except KubeConfigError:
        raise KubeConfigError(
            "no Kubernetes credentials: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, "
            "or run in a pod with a service account"
        ) from None


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

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if token := self.credentials.bearer_token():
            headers["Authorization"] = f"Bearer {token}"
        return headers

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
        async with self.session.request(
            method,
            self.credentials.server + path,
            params={k: str(v) for k, v in (params or {}).items()},
            data=data,
            headers=self._headers(content_type if data is not None else None),
        ) as response:
            text = await response.text()
            payload: Obj = json.loads(text) if text.strip().startswith("{") else {}
            if response.status >= 400:
                raise ApiError(
                    response.status,
                    str(payload.get("reason") or response.reason),
                    str(payload.get("message") or text[:500]),
                    payload,
                )
            return payload

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
        async with self.session.get(
            self.credentials.server + path,
            params={k: str(v) for k, v in params.items()},
            headers=self._headers(),
            timeout=timeout,
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
        async with self.session.get(
            self.credentials.server + res.path(namespace=namespace),
            params=params,
            headers=self._headers(),
            timeout=timeout,
        ) as response:
            if response.status >= 400:
                text = await response.text()
                payload = json.loads(text) if text.startswith("{") else {}
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
