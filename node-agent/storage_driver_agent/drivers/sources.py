"""Resolving a driver's source into a verified file in the driver directory.

- hostPath: the file (or package) must already be in the driver directory; its sha256 is checked
  when the spec gives one.
- configMap: the agent reads the ConfigMap key, checks the sha256 if given, and writes the file.
- url: the sha256 is mandatory; the agent downloads into a hidden temporary file in the driver
  directory (at most `max_bytes`), verifies it, and renames it into place atomically.

Every refusal (a checksum mismatch, a path that leaves the driver directory, an oversized
artifact, a missing file) names the reason and changes nothing in the directory. The result is
an Artifact (sha256 and the class to load) or a Refusal for the state machine.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

import aiohttp
from storage_driver_api.kube import CONFIGMAPS, ApiError, KubeClient
from storage_driver_api.logs import fields
from storage_driver_sdk.scan import MAX_DEPTH, is_package

from storage_driver_agent.drivers.inventory import Inventory
from storage_driver_agent.drivers.statemachine import NEVER, Artifact, Desired, Refusal

log = logging.getLogger(__name__)

# How long to wait before trying a remote source again after it failed.
REMOTE_RETRY_SECONDS: Final = 30.0
REMOTE_MISMATCH_RETRY_SECONDS: Final = 300.0


class SourceError(Exception):
    def __init__(self, reason: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


def check_relative_path(relative: str) -> None:
    """Refuse a path that could leave the driver directory or is not a driver entry (pure)."""
    path = PurePosixPath(relative)
    if not relative or path.is_absolute() or "\\" in relative:
        raise SourceError(
            "PathEscapesDriverDirectory", f"path {relative!r} must be relative to the driver directory"
        )
    if any(part in ("..", ".") for part in path.parts):
        raise SourceError("PathEscapesDriverDirectory", f"path {relative!r} must not contain '..' or '.'")
    if any(part.startswith(".") or part == "__pycache__" for part in path.parts):
        raise SourceError(
            "InvalidSourcePath", f"path {relative!r}: hidden names and __pycache__ are not drivers"
        )
    if len(path.parts) > MAX_DEPTH:
        raise SourceError("InvalidSourcePath", f"path {relative!r} is deeper than {MAX_DEPTH} levels")


def resolve_within(root: Path, relative: str) -> Path:
    """root/relative, refusing paths (also through symlinks) that leave root or lie inside a package."""
    check_relative_path(relative)
    candidate = root / relative
    real_root = root.resolve()
    if not candidate.resolve().is_relative_to(real_root):
        raise SourceError(
            "PathEscapesDriverDirectory", f"path {relative!r} resolves outside the driver directory {root}"
        )
    for parent in candidate.parents:
        if parent == root or not parent.is_relative_to(root):
            break
        if is_package(parent):
            raise SourceError(
                "InvalidSourcePath",
                f"path {relative!r} lies inside the package {parent.relative_to(root)}; name the package directory",
            )
    return candidate


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(target: Path, data: bytes) -> None:
    """Write via a hidden temporary file in the same directory and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(0o644)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _file_sha(path: Path) -> str | None:
    try:
        return sha256_of(path.read_bytes()) if path.is_file() else None
    except OSError:
        return None


def _download_file(target: Path, relative: str) -> tuple[int, Path]:
    """A hidden temporary file next to the target, for a download (its fd and path)."""
    if target.is_dir():
        raise SourceError("InvalidSourcePath", f"{relative} is a directory; a url source writes one file")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".download", dir=target.parent)
    return fd, Path(name)


def _publish(tmp: Path, target: Path) -> None:
    tmp.chmod(0o644)
    tmp.replace(target)  # atomic: readers see the old file or the verified new one


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 16 * 1024 * 1024
    timeout_seconds: float = 120.0
    # The cluster's source policy (chart values driverSources), checked again here: the
    # admission webhook refuses such StorageDrivers, but one stored while it was down must not load.
    config_map_namespaces: frozenset[str] | None = None  # None: any
    require_sha256: bool = False


class SourceFetcher:
    def __init__(
        self,
        driver_dir: Path,
        kube: KubeClient,
        inventory: Inventory,
        limits: FetchLimits,
        clock: Callable[[], float],
    ):
        self.driver_dir = driver_dir
        self.kube = kube
        self.inventory = inventory
        self.limits = limits
        self.clock = clock
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def fetch(self, desired: Desired) -> Artifact | Refusal:
        source = desired.source
        try:
            target = resolve_within(self.driver_dir, source.path)
            if source.kind == "configMap":
                await self._from_config_map(desired, target)
            elif source.kind == "url":
                await self._from_url(desired, target)
            elif source.kind != "hostPath":
                raise SourceError(
                    "UnknownSourceKind", f"source kind {source.kind!r} is not hostPath, configMap or url"
                )
            return await self._verify(desired, target)
        except SourceError as exc:
            retry = NEVER if exc.retry_after is None else self.clock() + exc.retry_after
            return Refusal(
                desired.fetch_key, exc.reason, exc.message, self.inventory.sha256(source.path), retry
            )

    async def _verify(self, desired: Desired, target: Path) -> Artifact:
        relative = desired.source.path
        scanned = await self.inventory.refresh(relative)
        if scanned is None:
            if await asyncio.to_thread(target.exists):
                raise SourceError(
                    "InvalidSourcePath", f"{relative} is neither a .py file nor a package directory"
                )
            raise SourceError(
                "SourceNotFound", f"{relative} does not exist in the driver directory {self.driver_dir}"
            )
        pinned = desired.source.sha256
        if pinned and scanned.sha256 != pinned:
            raise SourceError(
                "ChecksumMismatch",
                f"{relative} has sha256 {scanned.sha256 or '(unreadable)'}, the spec requires {pinned}",
            )
        declaration = scanned.declaration
        if declaration is None:
            raise SourceError("InvalidDriverFile", f"{relative}: {scanned.error}")
        if declaration.driver_name != desired.driver_name:
            raise SourceError(
                "DriverNameMismatch",
                f"{relative} declares driver {declaration.driver_name!r}, the spec asks for {desired.driver_name!r}",
            )
        if declaration.version is not None and declaration.version != desired.version:
            raise SourceError(
                "VersionMismatch",
                f"{relative} declares version {declaration.version}, the spec asks for {desired.version}",
            )
        return Artifact(desired.fetch_key, scanned.sha256, declaration.class_name, declaration.module)

    async def _from_config_map(self, desired: Desired, target: Path) -> None:
        ref = desired.source.config_map
        if ref is None or not all(ref):
            raise SourceError("InvalidSource", "a configMap source needs namespace, name and key")
        namespace, name, key = ref
        allowed = self.limits.config_map_namespaces
        if allowed is not None and namespace not in allowed:
            raise SourceError(
                "SourceNotAllowed",
                f"ConfigMap {namespace}/{name}: driver sources may come only from namespace(s) "
                f"{', '.join(sorted(allowed))} (chart value driverSources.configMapNamespaces)",
            )
        if self.limits.require_sha256 and not desired.source.sha256:
            raise SourceError(
                "ChecksumRequired",
                f"ConfigMap {namespace}/{name}: this cluster requires a sha256 pin for configMap sources "
                "(chart value driverSources.requireSha256); set spec.source.configMap.sha256",
            )
        try:
            config_map = await self.kube.get(CONFIGMAPS, name, namespace)
        except ApiError as exc:
            reason = "ConfigMapNotFound" if exc.not_found else "ConfigMapUnreadable"
            raise SourceError(reason, f"ConfigMap {namespace}/{name}: {exc}", REMOTE_RETRY_SECONDS) from exc
        if key in (config_map.get("data") or {}):
            data = str(config_map["data"][key]).encode()
        elif key in (config_map.get("binaryData") or {}):
            data = base64.b64decode(config_map["binaryData"][key])
        else:
            raise SourceError(
                "ConfigMapKeyNotFound",
                f"ConfigMap {namespace}/{name} has no key {key!r}",
                REMOTE_RETRY_SECONDS,
            )
        if len(data) > self.limits.max_bytes:
            raise SourceError(
                "ArtifactTooLarge",
                f"ConfigMap {namespace}/{name} key {key}: {len(data)} bytes, more than the limit of "
                f"{self.limits.max_bytes} (--max-driver-bytes)",
            )
        actual = sha256_of(data)
        pinned = desired.source.sha256
        if pinned and actual != pinned:
            raise SourceError(
                "ChecksumMismatch",
                f"ConfigMap {namespace}/{name} key {key} has sha256 {actual}, the spec requires {pinned}",
                REMOTE_RETRY_SECONDS,
            )
        if await asyncio.to_thread(_file_sha, target) != actual:
            await asyncio.to_thread(write_atomically, target, data)
            log.info(
                "driver file written from ConfigMap",
                extra=fields(
                    driver=desired.name,
                    file=desired.source.path,
                    sha256=actual,
                    configmap=f"{namespace}/{name}",
                ),
            )

    async def _from_url(self, desired: Desired, target: Path) -> None:
        url, pinned = desired.source.url, desired.source.sha256
        if not url:
            raise SourceError("InvalidSource", "a url source needs a url")
        if not pinned:
            raise SourceError(
                "ChecksumRequired", f"url source {url} has no sha256; a url source must pin one"
            )
        if await asyncio.to_thread(_file_sha, target) == pinned:
            return  # already downloaded and verified
        fd, tmp = await asyncio.to_thread(_download_file, target, desired.source.path)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                try:
                    async with self._session().get(url) as response:
                        if response.status != 200:
                            raise SourceError(
                                "DownloadFailed",
                                f"GET {url}: HTTP {response.status} {response.reason}",
                                REMOTE_RETRY_SECONDS,
                            )
                        declared = response.content_length
                        if declared is not None and declared > self.limits.max_bytes:
                            raise SourceError("ArtifactTooLarge", self._too_large(url, declared))
                        async for chunk in response.content.iter_chunked(65536):
                            size += len(chunk)
                            if size > self.limits.max_bytes:
                                raise SourceError(
                                    "ArtifactTooLarge", self._too_large(url, size, partial=True)
                                )
                            digest.update(chunk)
                            handle.write(chunk)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise SourceError(
                        "DownloadFailed", f"GET {url}: {exc or type(exc).__name__}", REMOTE_RETRY_SECONDS
                    ) from exc
                handle.flush()
                os.fsync(handle.fileno())
            actual = digest.hexdigest()
            if actual != pinned:
                raise SourceError(
                    "ChecksumMismatch",
                    f"download from {url} has sha256 {actual}, the spec requires {pinned}; nothing was written",
                    REMOTE_MISMATCH_RETRY_SECONDS,
                )
            await asyncio.to_thread(_publish, tmp, target)
        finally:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
        log.info(
            "driver file downloaded",
            extra=fields(driver=desired.name, file=desired.source.path, sha256=pinned, url=url, bytes=size),
        )

    def _too_large(self, url: str, size: int, partial: bool = False) -> str:
        amount = f"more than {self.limits.max_bytes}" if partial else str(size)
        return (
            f"download from {url} is {amount} bytes, over the limit of {self.limits.max_bytes} "
            "(--max-driver-bytes); nothing was written"
        )

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            timeout = aiohttp.ClientTimeout(total=self.limits.timeout_seconds, sock_connect=10)
            self._http = aiohttp.ClientSession(timeout=timeout)
        return self._http
