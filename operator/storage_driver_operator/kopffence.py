"""kopf's own writes behind the leader's fence, like the controller's (election.FencedKubeClient).

kopf writes finalizers, its progress annotations and events without asking the controller, and
offers no hook before a request. All of its requests go through one function,
`kopf._cogs.clients.api.request`, which its verbs look up by name at every call: wrapping it
there fences every write of kopf's. A write that finds the fence closed ends the process before
it is sent (as the watchdog would a moment later), so a leader resumed after another took over
writes nothing, through kopf or the controller. A test pins that kopf still routes its writes
through this function (tests/unit/operator/test_kopffence.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn

from kopf._cogs.clients import api as kopf_api

_UNFENCED = kopf_api.request


def fence_kopf_writes(deposed: Callable[[], bool], on_deposed: Callable[[str], NoReturn]) -> None:
    """From now on every kopf request but a read first asks `deposed()`; if this replica led and
    its fence has closed, `on_deposed` is called instead of sending it."""

    @functools.wraps(_UNFENCED)
    async def fenced(*args: Any, **kwargs: Any) -> Any:
        method = str(kwargs.get("method", args[0] if args else "")).upper()
        if method != "GET" and deposed():
            on_deposed(f"kopf was about to {method} {kwargs.get('url', '')} after the renew deadline")
        return await _UNFENCED(*args, **kwargs)

    kopf_api.request = fenced


def unfence_kopf_writes() -> None:
    kopf_api.request = _UNFENCED
