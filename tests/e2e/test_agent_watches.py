"""An agent reads only its own node's objects, and the API server does the filtering: a real
storage-agent talks to the real kube-apiserver through a recording TLS proxy, while another
node's NodeDevice and NodeDriverConfig exist and change. Every list and watch the agent sends
for NodeDevices and NodeDriverConfigs names its node in a selector, and no object of the other
node comes back."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from storage_driver_api.constants import NODE_DEVICES, NODE_DRIVER_CONFIGS, NODE_LABEL, node_label_value
from storage_driver_api.kube import KubeClient, load_kubeconfig

from tests.bench.floor import device_body
from tests.harness.drivers import Agent, short_tmpdir
from tests.harness.localcluster import ClusterConfig
from tests.harness.waiting import eventually

NODE = "watching-node"
OTHER = "other-node"
WATCHED = {NODE_DEVICES.plural, NODE_DRIVER_CONFIGS.plural}


@dataclass
class Exchange:
    method: str
    path: str
    query: dict[str, str]
    body: bytearray = field(default_factory=bytearray)

    @property
    def plural(self) -> str:
        return self.path.rstrip("/").split("/")[-1]

    def objects(self) -> list[dict[str, Any]]:
        """The objects the server sent: a list's items, or each watch event's object."""
        if self.query.get("watch") == "true":
            events = [json.loads(line) for line in bytes(self.body).splitlines() if line.strip()]
            return [e["object"] for e in events if e.get("type") in ("ADDED", "MODIFIED", "DELETED")]
        return list(json.loads(bytes(self.body) or b"{}").get("items") or [])


class RecordingProxy:
    """Terminates TLS with the API server's own certificate and forwards every request to the real
    API server (as the admin), recording the request and relaying the answer as it streams."""

    def __init__(self, cfg: ClusterConfig):
        self.upstream = load_kubeconfig(cfg.kubeconfig)
        self.exchanges: list[Exchange] = []
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(cfg.pki / "apiserver.crt", cfg.pki / "apiserver.key")
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        exchange = Exchange(request.method, request.path, dict(request.query))
        self.exchanges.append(exchange)
        headers = {k: request.headers[k] for k in ("Accept", "Content-Type") if k in request.headers}
        if authorization := self.upstream.authorization():
            headers["Authorization"] = authorization
        async with self.session.request(
            request.method,
            self.upstream.server + request.path_qs,
            data=await request.read() or None,
            headers=headers,
            ssl=self.upstream.ssl_context(),
            timeout=aiohttp.ClientTimeout(total=None),
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status, headers={"Content-Type": upstream.headers.get("Content-Type", "")}
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                if plural_of(request.path) in WATCHED:
                    exchange.body.extend(chunk)
                await response.write(chunk)
            await response.write_eof()
            return response

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    def kubeconfig(self, cfg: ClusterConfig, path: Path) -> Path:
        """A kubeconfig that reaches the API server only through this proxy."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "proxied",
                            "cluster": {
                                "server": f"https://127.0.0.1:{self.port}",
                                "certificate-authority": str(cfg.pki / "ca.crt"),
                            },
                        }
                    ],
                    "users": [{"name": "agent", "user": {"token": "the-proxy-authenticates-upstream"}}],
                    "contexts": [{"name": "proxied", "context": {"cluster": "proxied", "user": "agent"}}],
                    "current-context": "proxied",
                }
            )
        )
        return path


def plural_of(path: str) -> str:
    return path.rstrip("/").split("/")[-1]


@pytest.fixture
async def proxy(cluster: ClusterConfig) -> AsyncIterator[RecordingProxy]:
    recorder = RecordingProxy(cluster)
    await recorder.start()
    yield recorder
    await recorder.stop()


async def test_an_agent_lists_and_watches_only_its_own_nodes_objects(
    clean_cluster: KubeClient,
    cluster: ClusterConfig,
    make_node: Callable[..., Any],
    test_namespace: str,
    proxy: RecordingProxy,
) -> None:
    kube = clean_cluster
    await make_node(NODE)
    await make_node(OTHER)
    other_device = device_body(OTHER, f"{OTHER}-dev", 7)
    await kube.create(NODE_DEVICES, other_device)
    await kube.create(
        NODE_DRIVER_CONFIGS,
        {
            "apiVersion": "storage.datawarehouse.io/v1alpha1",
            "kind": "NodeDriverConfig",
            "metadata": {"name": OTHER},
            "spec": {"drivers": []},
        },
    )
    root = short_tmpdir()
    agent = Agent(NODE, proxy.kubeconfig(cluster, root / "kubeconfig"), test_namespace, root)
    agent.driver_dir.mkdir(parents=True)
    try:
        await asyncio.to_thread(agent.start)  # it waits for the agent, which needs the proxy (this loop)

        async def ready() -> bool:
            config = await kube.get_or_none(NODE_DRIVER_CONFIGS, NODE)
            return config is not None and bool((config.get("status") or {}).get("bootId"))

        await eventually(ready, timeout=60, what="the agent to report its NodeDriverConfig status")
        # The other node's objects change while the agent watches: an unfiltered watch would get them.
        for round_ in range(3):
            await kube.patch(
                NODE_DEVICES,
                other_device["metadata"]["name"],
                {"metadata": {"annotations": {"r": str(round_)}}},
            )
            await kube.patch(NODE_DRIVER_CONFIGS, OTHER, {"metadata": {"annotations": {"r": str(round_)}}})
        # ...and so does its own: the watches are live and relayed.
        await kube.patch(NODE_DRIVER_CONFIGS, NODE, {"metadata": {"annotations": {"seen": "yes"}}})

        def own_change_relayed() -> bool:
            return any(
                o["metadata"].get("annotations", {}).get("seen") == "yes"
                for e in proxy.exchanges
                if e.plural == NODE_DRIVER_CONFIGS.plural and e.query.get("watch") == "true"
                for o in e.objects()
            )

        async def relayed() -> bool:
            return own_change_relayed()

        await eventually(relayed, timeout=30, what="the agent's watch to deliver its own NodeDriverConfig")
        await asyncio.sleep(1.0)  # time for the other node's changes to arrive, were they sent
    finally:
        await asyncio.to_thread(agent.stop)
        agent.cleanup()
        print(f"--- agent log ---\n{agent.log(80)}")
        shutil.rmtree(root, ignore_errors=True)

    reads = [e for e in proxy.exchanges if e.method == "GET" and e.plural in WATCHED]
    assert {e.plural for e in reads} == WATCHED
    assert any(e.query.get("watch") == "true" for e in reads)
    own = {
        NODE_DEVICES.plural: ("labelSelector", f"{NODE_LABEL}={node_label_value(NODE)}"),
        NODE_DRIVER_CONFIGS.plural: ("fieldSelector", f"metadata.name={NODE}"),
    }
    for exchange in reads:
        selector, value = own[exchange.plural]
        assert exchange.query.get(selector) == value, f"{exchange.method} {exchange.path} {exchange.query}"
    delivered = [(e.plural, o) for e in reads for o in e.objects()]
    assert delivered, "nothing was relayed"
    strangers = [
        o["metadata"]["name"]
        for plural, o in delivered
        if (
            o["metadata"]["name"]
            if plural == NODE_DRIVER_CONFIGS.plural
            else o["metadata"]["labels"][NODE_LABEL]
        )
        != (NODE if plural == NODE_DRIVER_CONFIGS.plural else node_label_value(NODE))
    ]
    assert strangers == []
