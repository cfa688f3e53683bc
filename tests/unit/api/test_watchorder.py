"""Scenario 7, replayed and duplicated watch events: whatever is re-sent after it was delivered
(the same event again, or any earlier one), the operator's cache reports the same changes and
ends with the same objects, and the agent's list-and-watch hands its decisions the same events,
as for the stream without the copies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from storage_driver_agent.kubewatch import list_watch
from storage_driver_api.constants import NODE_DEVICES
from storage_driver_api.kube import WatchEvent
from storage_driver_api.watchorder import WatchOrder, version_number
from storage_driver_operator.cache import Informer

Event = tuple[str, dict[str, Any]]
LIST_VERSION = 100
KEYS = ["a", "b", "c"]


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    """What a watch delivers from LIST_VERSION on: creates, changes and deletions (re-creations
    too) of a few objects, each with the next resourceVersion."""
    alive: dict[str, int] = {}
    events: list[Event] = []
    version = LIST_VERSION
    for key, value in draw(st.lists(st.tuples(st.sampled_from(KEYS), st.integers(0, 3)), max_size=25)):
        version += 1
        obj = {"metadata": {"name": key, "resourceVersion": str(version)}, "spec": {"value": value}}
        if key in alive and value == 0:
            del alive[key]
            events.append(("DELETED", obj))
        else:
            events.append(("MODIFIED" if key in alive else "ADDED", obj))
            alive[key] = value
    return events


@st.composite
def with_copies(draw: st.DrawFn) -> tuple[list[Event], list[Event]]:
    """A history, and the same history with copies of delivered events re-sent in between."""
    clean = draw(histories())
    noisy: list[Event] = []
    for index, event in enumerate(clean):
        noisy.append(event)
        for again in draw(st.lists(st.integers(0, index), max_size=3)):
            noisy.append(clean[again])
    return clean, noisy


def test_the_order_takes_each_version_once_and_never_an_older_one() -> None:
    order = WatchOrder("10")
    assert [order.take(v) for v in ["11", "11", "10", "9", "13", "12", "14"]] == [
        True,
        False,
        False,
        False,
        True,
        False,
        True,
    ]
    order.restart("5")  # a re-list starts over: its version is the new floor
    assert order.take("6")


def test_versions_that_are_not_numbers_are_taken_as_new() -> None:
    order = WatchOrder("")
    assert order.take("opaque") and order.take(None) and order.take("7") and not order.take("7")
    assert version_number("12") == 12 and version_number("x1") is None and version_number(None) is None


@given(with_copies())
def test_the_order_keeps_exactly_the_stream_without_its_copies(
    streams: tuple[list[Event], list[Event]],
) -> None:
    clean, noisy = streams
    order = WatchOrder(str(LIST_VERSION))
    assert [e for e in noisy if order.take(e[1]["metadata"]["resourceVersion"])] == clean


# --- the operator's cache ----------------------------------------------------------------------


def informer_run(events: list[Event]) -> tuple[list[tuple[str, Any, Any]], dict[str, Any], str]:
    changes: list[tuple[str, Any, Any]] = []
    cache: Informer[Any] = Informer(
        None,  # type: ignore[arg-type]  # no request is made: events are fed in
        NODE_DEVICES,
        lambda obj: obj.get("spec"),
        on_change=lambda key, old, new: changes.append((key, old, new)),
    )
    cache._order.restart(str(LIST_VERSION))
    for kind, obj in events:
        cache._event(kind, obj)
    return changes, dict(cache.items), cache.resource_version


@given(with_copies())
def test_the_operators_cache_reports_each_change_once(streams: tuple[list[Event], list[Event]]) -> None:
    clean, noisy = streams
    assert informer_run(noisy) == informer_run(clean)


def test_a_replayed_deletion_does_not_delete_the_object_created_again() -> None:
    """Found broken: the cache compared versions for changes but not for deletions, so an old
    DELETED re-sent after the object was created again dropped the new object (and the operator
    planned the node without it)."""
    created = ("ADDED", {"metadata": {"name": "a", "resourceVersion": "101"}, "spec": {"value": 1}})
    deleted = ("DELETED", {"metadata": {"name": "a", "resourceVersion": "102"}, "spec": {"value": 1}})
    again = ("ADDED", {"metadata": {"name": "a", "resourceVersion": "103"}, "spec": {"value": 2}})
    changes, items, version = informer_run([created, deleted, again, deleted])
    assert items == {"a": {"value": 2}}
    assert version == "103"  # a resumed watch must not ask for the replay again
    assert len(changes) == 3


# --- the agent's list-and-watch ----------------------------------------------------------------


class ReplayingServer:
    """Lists nothing at LIST_VERSION, then watches once: the given events, then the stream ends
    and the caller is told to stop."""

    def __init__(self, events: list[Event], stop: asyncio.Event) -> None:
        self.events = events
        self.stop = stop
        self.resumed_from: list[str] = []

    async def list(self, *args: Any, **kwargs: Any) -> tuple[list[dict[str, Any]], str]:
        return [], str(LIST_VERSION)

    async def watch(self, *args: Any, resource_version: str, **kwargs: Any) -> AsyncIterator[WatchEvent]:
        self.resumed_from.append(resource_version)
        for kind, obj in self.events:
            yield WatchEvent(kind, obj)
        self.events = []
        self.stop.set()


async def agent_run(events: list[Event]) -> tuple[list[Event], list[str]]:
    stop = asyncio.Event()
    server = ReplayingServer(events, stop)
    seen: list[Event] = []
    await list_watch(
        server,  # type: ignore[arg-type]  # the two calls list_watch makes
        NODE_DEVICES,
        on_sync=lambda items: None,
        on_event=lambda kind, obj: seen.append((kind, obj)),
        stop=stop,
    )
    return seen, server.resumed_from


@given(with_copies())
def test_the_agent_acts_on_each_event_once(streams: tuple[list[Event], list[Event]]) -> None:
    clean, noisy = streams
    seen, _ = asyncio.run(agent_run(noisy))
    assert seen == clean


async def test_the_agent_ignores_an_older_spec_re_sent_after_a_newer_one() -> None:
    """Found broken: the agent's watches handed every event on, so a NodeDriverConfig event
    re-sent after a newer one made the agent act on the older spec again (load what the newer
    spec had unloaded, then unload it once more)."""
    old = ("MODIFIED", {"metadata": {"name": "n", "resourceVersion": "101"}, "spec": {"drivers": ["x"]}})
    new = ("MODIFIED", {"metadata": {"name": "n", "resourceVersion": "102"}, "spec": {"drivers": []}})
    seen, resumed = await agent_run([old, new, old])
    assert seen == [old, new]
    assert resumed == [str(LIST_VERSION)]
