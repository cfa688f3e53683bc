"""A kubeconfig's `proxy-url`: the client tunnels to the real API server through an HTTP CONNECT
proxy (a small one here, that records what it was asked to reach), for the project's client and
for a real `sdctl` process."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from storage_driver_api.kube import NODES, KubeClient, load_kubeconfig

from tests.harness import localcluster
from tests.harness.processes import console_script


class ConnectProxy:
    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = request.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            writer.close()
            return
        self.tunnels.append(target)
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    p = ConnectProxy()
    p.server = await asyncio.start_server(p.handle, "127.0.0.1", 0)
    try:
        yield p
    finally:
        p.server.close()


def proxied_kubeconfig(cluster: localcluster.ClusterConfig, path: Path, proxy_url: str) -> Path:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["proxy-url"] = proxy_url
    path.write_text(yaml.safe_dump(config))
    return path


async def test_requests_go_through_the_proxy(
    cluster: localcluster.ClusterConfig, clean_cluster: KubeClient, proxy: ConnectProxy, tmp_path: Path
) -> None:
    creds = load_kubeconfig(proxied_kubeconfig(cluster, tmp_path / "kubeconfig", proxy.url))
    assert creds.proxy == proxy.url
    async with KubeClient(creds) as kube:
        nodes, _ = await kube.list(NODES)
    assert localcluster.local_node_name() in {n["metadata"]["name"] for n in nodes}
    assert proxy.tunnels == [f"127.0.0.1:{cluster.apiserver_port}"]


async def test_sdctl_goes_through_the_proxy(
    cluster: localcluster.ClusterConfig, proxy: ConnectProxy, tmp_path: Path
) -> None:
    config = proxied_kubeconfig(cluster, tmp_path / "kubeconfig", proxy.url)
    process = await asyncio.create_subprocess_exec(
        console_script("sdctl"), "drivers", "--kubeconfig", str(config),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    assert proxy.tunnels and set(proxy.tunnels) == {f"127.0.0.1:{cluster.apiserver_port}"}
