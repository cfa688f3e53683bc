"""The driver directory watched with watchdog (real inotify), debounced, feeding the inventory."""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage_driver_agent.drivers.inventory import Inventory
from storage_driver_agent.drivers.watch import DirectoryWatcher

from tests.harness.drivers import write_probe
from tests.harness.waiting import eventually


async def test_a_burst_of_writes_gives_one_rescan_that_sees_the_result(tmp_path: Path) -> None:
    inventory = Inventory(tmp_path)
    await inventory.rescan()
    rescans: list[list[str]] = []

    async def on_change() -> None:
        await inventory.rescan()
        rescans.append([s.file for s in inventory.scanned()])

    stop = asyncio.Event()
    watcher = DirectoryWatcher(tmp_path, on_change, debounce=0.5)
    task = asyncio.create_task(watcher.run(stop))
    await asyncio.sleep(0.3)  # the observer is running
    try:
        # A slow writer: a file written in pieces, 100 ms apart, is scanned once it is complete.
        with (tmp_path / "probe.py").open("w") as handle:
            for line in write_probe_lines():
                handle.write(line)
                handle.flush()
                await asyncio.sleep(0.1)
        await eventually(lambda: _has(rescans), what="a rescan after the writes")
        await asyncio.sleep(1.0)
        assert len(rescans) == 1, rescans
        result = inventory.get("probe.py")
        assert result is not None and result.ok

        (tmp_path / "probe.py").unlink()
        await eventually(lambda: _is(rescans, []), what="the removal to be seen")
        assert inventory.get("probe.py") is None

        (tmp_path / "sub").mkdir()
        write_probe(tmp_path / "sub", "nested.py")
        await eventually(lambda: _is(rescans, ["sub/nested.py"]), what="a file in a subdirectory to be seen")
    finally:
        stop.set()
        await task


def write_probe_lines() -> list[str]:
    from tests.harness.drivers import probe_source

    lines = probe_source().splitlines(keepends=True)
    return [("".join(lines[i : i + 10])) for i in range(0, len(lines), 10)]


async def _has(items: list[list[str]]) -> bool:
    return bool(items)


async def _is(items: list[list[str]], last: list[str]) -> bool:
    return bool(items) and items[-1] == last


async def test_unchanged_files_are_not_read_again(tmp_path: Path) -> None:
    write_probe(tmp_path, "a.py")
    inventory = Inventory(tmp_path)
    assert await inventory.rescan() is True
    first = inventory.get("a.py")
    assert await inventory.rescan() is False
    assert inventory.get("a.py") is first  # the cached result, not a new scan
