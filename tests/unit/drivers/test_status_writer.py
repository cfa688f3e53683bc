"""The agent's NodeDriverConfig status writer: what it writes, and when (report.StatusWriter).

The API server is replaced by a recorder: what is checked here is which statuses the writer
sends and in what order; the writes themselves are exercised against a real API server by the
agent's integration and end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from storage_driver_agent.drivers.report import STATUS_FIRST_SECONDS, StatusWriter
from storage_driver_agent.drivers.status import TRANSITION_HOLD
from storage_driver_api.kube import ApiError


class RecordingKube:
    """Records status patches; `gate`, while cleared, holds each patch in flight."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.wrote = asyncio.Event()

    async def patch(self, resource: Any, name: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        assert kwargs == {"subresource": "status"}
        self.in_flight += 1
        await self.gate.wait()
        self.in_flight -= 1
        self.patches.append(body["status"])
        self.wrote.set()
        return {}


def phases(**drivers: str) -> dict[str, Any]:
    return {"drivers": [{"name": name, "phase": phase} for name, phase in sorted(drivers.items())]}


@pytest.fixture
async def writer() -> AsyncIterator[tuple[StatusWriter, RecordingKube]]:
    kube = RecordingKube()
    status_writer = StatusWriter(kube, "node-1")  # type: ignore[arg-type]
    status_writer.server_has({})
    stop = asyncio.Event()
    task = asyncio.create_task(status_writer.run(stop))
    yield status_writer, kube
    stop.set()
    await asyncio.wait_for(task, 5)


async def turns(count: int = 20) -> None:
    """Let the writer's task run, without letting any real time pass that it could wait for."""
    for _ in range(count):
        await asyncio.sleep(0)


async def written(kube: RecordingKube, count: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while len(kube.patches) < count:
            kube.wrote.clear()
            await kube.wrote.wait()


async def test_a_status_with_nothing_running_is_written_at_once(
    writer: tuple[StatusWriter, RecordingKube],
) -> None:
    status_writer, kube = writer
    status_writer.submit(phases(a="Loaded"))
    await turns()
    assert kube.patches == [{"drivers": [{"name": "a", "phase": "Loaded"}]}]
    assert status_writer.writes == 1


async def test_a_quick_load_writes_only_its_outcome(writer: tuple[StatusWriter, RecordingKube]) -> None:
    status_writer, kube = writer
    status_writer.submit(phases(a="Loading"), settling=True)
    await turns()
    status_writer.submit(phases(a="Loading"), settling=True)  # the host started: still loading
    await turns()
    assert kube.patches == []
    status_writer.submit(phases(a="Loaded"))
    await turns()
    assert kube.patches == [{"drivers": [{"name": "a", "phase": "Loaded"}]}]
    await asyncio.sleep(TRANSITION_HOLD + 0.1)
    assert len(kube.patches) == 1  # the held Loading is never written after its outcome


async def test_a_slow_load_shows_its_progress_after_the_hold(
    writer: tuple[StatusWriter, RecordingKube],
) -> None:
    status_writer, kube = writer
    status_writer.submit(phases(a="Loading"), settling=True)
    await turns()
    assert kube.patches == []
    await written(kube, 1)
    assert kube.patches == [{"drivers": [{"name": "a", "phase": "Loading"}]}]
    # A change while still settling waits again; then the outcome goes at once.
    status_writer.submit(phases(a="Loading", b="Loading"), settling=True)
    await turns()
    assert len(kube.patches) == 1
    status_writer.submit(phases(a="Loaded", b="Loaded"))
    await turns()
    assert kube.patches[1:] == [
        {"drivers": [{"name": "a", "phase": "Loaded"}, {"name": "b", "phase": "Loaded"}]}
    ]


async def test_a_hold_is_not_restarted_by_each_change(writer: tuple[StatusWriter, RecordingKube]) -> None:
    """A stream of changes while actions keep running (50 drivers loading) still shows progress:
    the hold counts from the first status held, not from the newest."""
    status_writer, kube = writer
    loop = asyncio.get_running_loop()
    began = loop.time()
    count = 0
    while not kube.patches:
        count += 1
        status_writer.submit({"drivers": [{"name": f"d{count}", "phase": "Loading"}]}, settling=True)
        await asyncio.sleep(TRANSITION_HOLD / 5)
        assert loop.time() - began < 10 * TRANSITION_HOLD, "no write while the changes kept coming"
    assert kube.patches[0]["drivers"][0]["name"].startswith("d")


async def test_changes_during_a_write_become_one_write_of_the_newest(
    writer: tuple[StatusWriter, RecordingKube],
) -> None:
    status_writer, kube = writer
    kube.gate.clear()
    status_writer.submit(phases(a="Loaded"))
    await turns()
    assert kube.in_flight == 1
    status_writer.submit(phases(a="Loaded", b="Loaded"))
    status_writer.submit(phases(a="Loaded", b="Loaded", c="Loaded"))
    kube.gate.set()
    await written(kube, 2)
    await turns()
    assert [len(p["drivers"]) for p in kube.patches] == [1, 3]


async def test_nothing_is_written_when_the_status_is_what_the_server_has(
    writer: tuple[StatusWriter, RecordingKube],
) -> None:
    status_writer, kube = writer
    status_writer.server_has(phases(a="Loaded"))
    status_writer.submit(phases(a="Loaded"))
    status_writer.submit(phases(a="Loaded"), settling=True)
    await asyncio.sleep(TRANSITION_HOLD + 0.1)
    assert kube.patches == []


async def test_a_recreated_object_gets_only_a_status_submitted_for_it(
    writer: tuple[StatusWriter, RecordingKube],
) -> None:
    """The node's NodeDriverConfig deleted and created again (its Node was): the status last
    submitted for the old object (the driver Loaded, at the old object's generation, which a new
    object shares) is not written to the new one, which would then claim a spec not acted on."""
    status_writer, kube = writer
    loaded = {"observedGeneration": 1, **phases(a="Loaded")}
    status_writer.submit(loaded)
    await written(kube, 1)
    status_writer.server_has({})  # the new object, its status empty
    await asyncio.sleep(TRANSITION_HOLD + 0.1)
    assert kube.patches == [loaded]
    # What the agent computes for the new object's spec is written, whatever it says.
    status_writer.submit(loaded)
    await written(kube, 2)
    assert kube.patches == [loaded, loaded]


async def test_the_agents_other_writes_wait_for_a_due_status_write(
    writer: tuple[StatusWriter, RecordingKube],
) -> None:
    """Events and boundDrivers go after the status (report.BindingWriter, EventRecorder wait on
    `first`): a due or in-flight status write holds them back; a held one (an action still
    runs) does not."""
    status_writer, kube = writer
    kube.gate.clear()
    status_writer.submit(phases(a="Loaded"))
    others = asyncio.create_task(status_writer.first())
    await turns()
    assert kube.in_flight == 1 and not others.done()
    kube.gate.set()
    await asyncio.wait_for(others, 1)
    assert kube.patches == [{"drivers": [{"name": "a", "phase": "Loaded"}]}]
    status_writer.submit(phases(a="Unloading"), settling=True)  # held: the others go at once
    await asyncio.wait_for(status_writer.first(), 0.1)
    assert len(kube.patches) == 1


async def test_a_status_write_that_keeps_failing_holds_the_others_back_a_second_at_most() -> None:
    class Refusing(RecordingKube):
        async def patch(
            self, resource: Any, name: str, body: dict[str, Any], **kwargs: Any
        ) -> dict[str, Any]:
            raise ApiError(500, "InternalError", "etcd is down")

    status_writer = StatusWriter(Refusing(), "node-1")  # type: ignore[arg-type]
    status_writer.server_has({})
    stop = asyncio.Event()
    task = asyncio.create_task(status_writer.run(stop))
    status_writer.submit(phases(a="Loaded"))
    loop = asyncio.get_running_loop()
    began = loop.time()
    await status_writer.first()
    assert STATUS_FIRST_SECONDS - 0.1 <= loop.time() - began < STATUS_FIRST_SECONDS + 1
    stop.set()
    await asyncio.wait_for(task, 5)
