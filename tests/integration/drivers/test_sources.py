"""Driver sources against real things: a real HTTP server on loopback, ConfigMaps in the local
control plane, and real files (symlinks included) in a driver directory."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from storage_driver_agent.drivers.inventory import Inventory
from storage_driver_agent.drivers.sources import FetchLimits, SourceFetcher
from storage_driver_agent.drivers.statemachine import Artifact, Desired, Refusal, SourceRef
from storage_driver_api.kube import CONFIGMAPS, KubeClient

from tests.harness.drivers import probe_source, write_probe


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    base: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        name = request.match_info["name"]
        if name not in self.files:
            return web.Response(status=404, text="no such file")
        if name.startswith("stream-"):  # no Content-Length: the size limit must hold while streaming
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(self.files[name])
            await response.write_eof()
            return response
        return web.Response(body=self.files[name])


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    files = FileServer()
    app = web.Application()
    app.router.add_get("/{name}", files.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    files.base = f"http://127.0.0.1:{port}"
    yield files
    await runner.cleanup()


def desired(source: SourceRef, driver_name: str = "Probe Driver", version: str = "1.0.0") -> Desired:
    return Desired("probe", driver_name, version, source, "{}")


def fetcher(driver_dir: Path, kube: Any = None, max_bytes: int = 1 << 20) -> SourceFetcher:
    driver_dir.mkdir(parents=True, exist_ok=True)
    return SourceFetcher(
        driver_dir, kube, Inventory(driver_dir), FetchLimits(max_bytes=max_bytes), lambda: 0.0
    )


def listing(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# --- url -------------------------------------------------------------------------------------


async def test_url_download_is_verified_then_renamed_into_place(tmp_path: Path, server: FileServer) -> None:
    data = probe_source().encode()
    sha = hashlib.sha256(data).hexdigest()
    server.files["probe.py"] = data
    source = SourceRef("url", "downloaded/probe.py", sha, f"{server.base}/probe.py")
    sources = fetcher(tmp_path / "drivers")
    result = await sources.fetch(desired(source))
    await sources.close()
    assert isinstance(result, Artifact) and result.sha256 == sha and result.class_name == "ProbeDriver"
    assert listing(tmp_path / "drivers") == {"downloaded/probe.py": data}  # no temporary file left


async def test_url_already_present_is_not_downloaded_again(tmp_path: Path, server: FileServer) -> None:
    sha = write_probe(tmp_path / "drivers")
    source = SourceRef("url", "probe.py", sha, f"{server.base}/probe.py")
    sources = fetcher(tmp_path / "drivers")
    assert isinstance(await sources.fetch(desired(source)), Artifact)
    await sources.close()
    assert server.requests == []


async def test_url_with_a_wrong_sha256_writes_nothing(tmp_path: Path, server: FileServer) -> None:
    drivers = tmp_path / "drivers"
    old_sha = write_probe(drivers)  # a previous version stays untouched
    before = listing(drivers)
    server.files["probe.py"] = probe_source(version="2.0.0").encode()
    source = SourceRef("url", "probe.py", "0" * 64, f"{server.base}/probe.py")
    sources = fetcher(drivers)
    result = await sources.fetch(desired(source, version="2.0.0"))
    await sources.close()
    assert isinstance(result, Refusal) and result.reason == "ChecksumMismatch"
    assert "nothing was written" in result.message and "0" * 64 in result.message
    assert result.retry_at > 0  # remote sources are tried again later
    assert listing(drivers) == before
    assert hashlib.sha256((drivers / "probe.py").read_bytes()).hexdigest() == old_sha


@pytest.mark.parametrize("name", ["big.py", "stream-big.py"])
async def test_url_over_the_size_limit_is_refused(tmp_path: Path, server: FileServer, name: str) -> None:
    data = b"#" * 5000
    server.files[name] = data
    source = SourceRef("url", "big.py", hashlib.sha256(data).hexdigest(), f"{server.base}/{name}")
    sources = fetcher(tmp_path / "drivers", max_bytes=4096)
    result = await sources.fetch(desired(source))
    await sources.close()
    assert isinstance(result, Refusal) and result.reason == "ArtifactTooLarge"
    assert "over the limit of 4096" in result.message
    assert listing(tmp_path / "drivers") == {}


async def test_url_errors_and_a_missing_sha256(tmp_path: Path, server: FileServer) -> None:
    sources = fetcher(tmp_path / "drivers")
    missing = await sources.fetch(desired(SourceRef("url", "x.py", "1" * 64, f"{server.base}/absent.py")))
    assert (
        isinstance(missing, Refusal) and missing.reason == "DownloadFailed" and "HTTP 404" in missing.message
    )
    unpinned = await sources.fetch(desired(SourceRef("url", "x.py", None, f"{server.base}/absent.py")))
    assert isinstance(unpinned, Refusal) and unpinned.reason == "ChecksumRequired"
    refused = await sources.fetch(desired(SourceRef("url", "x.py", "1" * 64, "http://127.0.0.1:1/x.py")))
    assert isinstance(refused, Refusal) and refused.reason == "DownloadFailed"
    await sources.close()
    assert listing(tmp_path / "drivers") == {}


# --- hostPath --------------------------------------------------------------------------------


async def test_host_path_checks(tmp_path: Path) -> None:
    drivers = tmp_path / "drivers"
    sha = write_probe(drivers)
    sources = fetcher(drivers)

    ok = await sources.fetch(desired(SourceRef("hostPath", "probe.py", sha)))
    assert isinstance(ok, Artifact) and ok.sha256 == sha

    wrong = await sources.fetch(desired(SourceRef("hostPath", "probe.py", "f" * 64)))
    assert isinstance(wrong, Refusal) and wrong.reason == "ChecksumMismatch" and wrong.file_sha == sha

    absent = await sources.fetch(desired(SourceRef("hostPath", "absent.py")))
    assert (
        isinstance(absent, Refusal) and absent.reason == "SourceNotFound" and str(drivers) in absent.message
    )

    renamed = await sources.fetch(desired(SourceRef("hostPath", "probe.py"), driver_name="Other Driver"))
    assert isinstance(renamed, Refusal) and renamed.reason == "DriverNameMismatch"

    newer = await sources.fetch(desired(SourceRef("hostPath", "probe.py"), version="9.9.9"))
    assert isinstance(newer, Refusal) and newer.reason == "VersionMismatch"

    (tmp_path / "elsewhere.py").write_text(probe_source())
    (drivers / "link.py").symlink_to(tmp_path / "elsewhere.py")
    escaped = await sources.fetch(desired(SourceRef("hostPath", "link.py")))
    assert isinstance(escaped, Refusal) and escaped.reason == "PathEscapesDriverDirectory"

    dotdot = await sources.fetch(desired(SourceRef("hostPath", "../elsewhere.py")))
    assert isinstance(dotdot, Refusal) and dotdot.reason == "PathEscapesDriverDirectory"

    (drivers / "pkg").mkdir()
    (drivers / "pkg" / "__init__.py").write_text("")
    write_probe(drivers / "pkg", "inner.py")
    inside = await sources.fetch(desired(SourceRef("hostPath", "pkg/inner.py")))
    assert (
        isinstance(inside, Refusal)
        and inside.reason == "InvalidSourcePath"
        and "name the package directory" in inside.message
    )
    package = await sources.fetch(desired(SourceRef("hostPath", "pkg")))
    assert isinstance(package, Artifact) and package.module == "inner"


# --- configMap -------------------------------------------------------------------------------


async def test_config_map_source_is_verified_and_written(
    tmp_path: Path, kube: KubeClient, test_namespace: str
) -> None:
    data = probe_source()
    sha = hashlib.sha256(data.encode()).hexdigest()
    await kube.create(
        CONFIGMAPS,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "probe-driver"},
            "data": {"probe.py": data},
        },
        namespace=test_namespace,
    )
    drivers = tmp_path / "drivers"
    sources = fetcher(drivers, kube)

    ok = await sources.fetch(
        desired(
            SourceRef(
                "configMap", "from-cm/probe.py", sha, None, (test_namespace, "probe-driver", "probe.py")
            )
        )
    )
    assert isinstance(ok, Artifact) and ok.sha256 == sha
    assert (drivers / "from-cm" / "probe.py").read_text() == data

    wrong = await sources.fetch(
        desired(
            SourceRef("configMap", "other.py", "e" * 64, None, (test_namespace, "probe-driver", "probe.py"))
        )
    )
    assert isinstance(wrong, Refusal) and wrong.reason == "ChecksumMismatch"
    assert not (drivers / "other.py").exists()

    no_key = await sources.fetch(
        desired(SourceRef("configMap", "k.py", None, None, (test_namespace, "probe-driver", "nope.py")))
    )
    assert isinstance(no_key, Refusal) and no_key.reason == "ConfigMapKeyNotFound"
    no_map = await sources.fetch(
        desired(SourceRef("configMap", "k.py", None, None, (test_namespace, "absent", "probe.py")))
    )
    assert isinstance(no_map, Refusal) and no_map.reason == "ConfigMapNotFound"
    assert sorted(listing(drivers)) == ["from-cm/probe.py"]


async def test_the_source_policy_is_enforced_on_the_node_before_anything_is_read(tmp_path: Path) -> None:
    """A StorageDriver stored while the admission webhook was down still cannot make a node read a
    ConfigMap from a namespace the chart does not allow, nor load an unpinned one."""
    drivers = tmp_path / "drivers"
    limits = FetchLimits(config_map_namespaces=frozenset({"sdo"}), require_sha256=True)
    # No API client at all: a refusal here must come before any read.
    sources = SourceFetcher(drivers, None, Inventory(drivers), limits, clock=lambda: 0.0)  # type: ignore[arg-type]
    elsewhere = await sources.fetch(
        desired(SourceRef("configMap", "k.py", "a" * 64, None, ("kube-system", "probe-driver", "probe.py")))
    )
    assert isinstance(elsewhere, Refusal) and elsewhere.reason == "SourceNotAllowed"
    assert "kube-system" in elsewhere.message and "sdo" in elsewhere.message
    unpinned = await sources.fetch(
        desired(SourceRef("configMap", "k.py", None, None, ("sdo", "probe-driver", "probe.py")))
    )
    assert isinstance(unpinned, Refusal) and unpinned.reason == "ChecksumRequired"
    assert "spec.source.configMap.sha256" in unpinned.message
    assert not drivers.exists() or not listing(drivers)
