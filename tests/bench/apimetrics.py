"""The API server's own count of requests, from its /metrics (`apiserver_request_total`).

`snapshot()` reads the counters; the difference of two snapshots is what was asked of the server
between them, by verb and resource, whoever asked. The counters carry no client, so a benchmark
takes its snapshots around a phase in which only the components it measures write.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import aiohttp
from storage_driver_api.kube import KubeClient

# The verbs as the API server counts them (1.20 names the HTTP method; later releases too).
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Key = tuple[str, str]  # (verb, resource[/subresource])
Counts = Counter[Key]


def parse(text: str) -> Counts:
    """The request counters of a /metrics page, summed over codes, scopes and versions."""
    counts: Counts = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match.group("labels")))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        counts[(labels.get("verb", ""), resource)] += int(float(match.group("value")))
    return counts


async def snapshot(kube: KubeClient) -> Counts:
    credentials = kube.credentials
    headers = {"Accept": "text/plain"}
    if authorization := credentials.authorization():
        headers["Authorization"] = authorization
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            credentials.server + "/metrics", ssl=credentials.ssl_context(), headers=headers
        ) as response,
    ):
        response.raise_for_status()
        return parse(await response.text())


def writes(delta: Counts, resources: Iterable[str] | None = None) -> Counts:
    """Only the writes of a difference of snapshots, optionally only of those resources."""
    wanted = None if resources is None else set(resources)
    return Counter(
        {
            key: n
            for key, n in delta.items()
            if key[0] in WRITE_VERBS and n > 0 and (wanted is None or key[1].split("/")[0] in wanted)
        }
    )


def describe(counts: Counts) -> str:
    """`PATCH nodedriverconfigs/status 3, CREATE nodedevices 1` (largest first)."""
    return ", ".join(f"{verb} {resource} {n}" for (verb, resource), n in counts.most_common()) or "none"
