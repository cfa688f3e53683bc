"""The API server's own count of requests, from its /metrics (`apiserver_request_total`).

`snapshot()` reads the counters; the difference of two snapshots is what was asked of the server
between them, by verb and resource, whoever asked. The counters carry no client, so a benchmark
takes its snapshots around a phase in which only the components it measures write.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

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


@dataclass
class Tally:
    """Writes between successive marks, added up per label: `await tally.mark(kube, "plug")`
    counts everything written since the previous mark as "plug"."""

    resources: tuple[str, ...]
    counts: dict[str, Counts] = field(default_factory=dict)
    _last: Counts | None = None

    async def mark(self, kube: KubeClient, label: str | None = None) -> None:
        now = await snapshot(kube)
        if label is not None and self._last is not None:
            self.counts.setdefault(label, Counter()).update(writes(now - self._last, self.resources))
        self._last = now
