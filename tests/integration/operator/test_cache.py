"""The lean list-and-watch cache against the real API server: both ways of listing give the same
views, changes arrive through the watch, and a watch too old for the server (410) re-lists and
reports what changed in between."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from storage_driver_api.constants import NODE_DEVICES
from storage_driver_api.kube import KubeClient
from storage_driver_operator.cache import Informer
from storage_driver_operator.views import DeviceView, device_view

from tests.harness.waiting import eventually
from tests.integration.operator import simulated as sim


async def publish(kube: KubeClient, count: int) -> None:
    await asyncio.gather(
        *(
            kube.create(NODE_DEVICES, sim.device_body("cache-n", f"cache-n-d{i:03d}", sizeBytes=i))
            for i in range(count)
        )
    )


@pytest.mark.parametrize("from_watch_cache", [True, False], ids=["watch-cache", "pages"])
async def test_both_ways_of_listing_see_every_object(
    clean_cluster: KubeClient, from_watch_cache: bool
) -> None:
    kube = clean_cluster
    await publish(kube, 120)
    informer: Informer[DeviceView] = Informer(
        kube, NODE_DEVICES, device_view, page_size=25, from_watch_cache=from_watch_cache
    )
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 60)
        assert informer.resource_version.isdigit()
        if not from_watch_cache:
            assert len(informer.items) == 120  # page by page from etcd: complete at once
        else:
            # The watch cache may trail etcd by a moment (here: right after 120 creates); the watch
            # from the list's version makes that up, which is why the controller waits before it plans.
            async def complete() -> bool:
                return len(informer.items) == 120

            await eventually(complete, timeout=10, what="the watch to bring the rest")
        assert informer.items["cache-n-d007"].attributes["sizeBytes"] == "7"
    finally:
        task.cancel()


async def test_watch_changes_and_a_relist_after_410(clean_cluster: KubeClient) -> None:
    kube = clean_cluster
    await publish(kube, 3)
    changes: list[tuple[str, Any, Any]] = []
    informer: Informer[DeviceView] = Informer(
        kube, NODE_DEVICES, device_view, on_change=lambda k, old, new: changes.append((k, old, new))
    )
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 60)
        assert len(changes) == 3  # the initial list fills the store through on_change too
        changes.clear()
        await sim.set_present(kube, "cache-n-d000", False)

        async def absent() -> bool:
            view = informer.items.get("cache-n-d000")
            return view is not None and not view.present

        await eventually(absent, what="the watch to deliver the change")
        assert [(k, old.present, new.present) for k, old, new in changes] == [("cache-n-d000", True, False)]
    finally:
        task.cancel()

    # Changes made while nobody watches, then a watch from a version the server no longer has.
    changes.clear()
    await kube.delete(NODE_DEVICES, "cache-n-d001")
    await kube.create(NODE_DEVICES, sim.device_body("cache-n", "cache-n-d999"))
    informer.resource_version = "1"
    task = asyncio.create_task(informer.run())
    try:

        async def relisted() -> bool:
            return informer.lists == 2 and "cache-n-d999" in informer.items

        await eventually(relisted, what="a re-list after 410 Gone")
        assert "cache-n-d001" not in informer.items
        reported = {(k, old is None, new is None) for k, old, new in changes}
        assert reported == {("cache-n-d001", False, True), ("cache-n-d999", True, False)}
    finally:
        task.cancel()
