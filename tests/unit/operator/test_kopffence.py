"""kopf's writes pass the leader's fence: a deposed leader's kopf sends nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, NoReturn

import kopf
import pytest
from kopf._cogs.clients import api as kopf_api
from storage_driver_operator import kopffence


class Deposed(Exception):
    pass


def stop(reason: str) -> NoReturn:
    raise Deposed(reason)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What reaches kopf's unfenced request function (its network side)."""
    calls: list[str] = []

    async def unfenced(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(kwargs.get("method")).upper())
        raise ConnectionError("no API server in a unit test")

    monkeypatch.setattr(kopffence, "_UNFENCED", unfenced)
    yield calls
    monkeypatch.undo()
    kopffence.unfence_kopf_writes()


async def patch_a_finalizer() -> None:
    """What kopf does to release a finalizer: its own patch verb."""
    await kopf_api.patch(
        url="/apis/storage.datawarehouse.io/v1alpha1/storagedrivers/x",
        payload={"metadata": {"finalizers": []}},
        settings=kopf.OperatorSettings(),
        logger=logging.getLogger("test"),
    )


async def test_a_deposed_leaders_kopf_write_ends_the_process_before_it_is_sent(sent: list[str]) -> None:
    kopffence.fence_kopf_writes(lambda: True, stop)
    with pytest.raises(Deposed, match=r"PATCH /apis/storage\.datawarehouse\.io"):
        await patch_a_finalizer()
    assert sent == []


async def test_a_leaders_kopf_writes_and_every_read_are_sent(sent: list[str]) -> None:
    kopffence.fence_kopf_writes(lambda: False, stop)
    with pytest.raises(ConnectionError):
        await patch_a_finalizer()
    kopffence.fence_kopf_writes(lambda: True, stop)
    with pytest.raises(ConnectionError):
        await kopf_api.get(
            url="/api/v1/namespaces", settings=kopf.OperatorSettings(), logger=logging.getLogger()
        )
    assert sent == ["PATCH", "GET"]


def test_unfencing_restores_kopfs_own_function() -> None:
    original = kopf_api.request
    kopffence.fence_kopf_writes(lambda: True, stop)
    assert kopf_api.request is not original
    kopffence.unfence_kopf_writes()
    assert kopf_api.request is original
