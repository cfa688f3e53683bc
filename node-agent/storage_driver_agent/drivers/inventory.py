"""The drivers in the node's driver directory (NodeDriverConfig.status.available), kept current.

A full rescan re-reads only the entries whose inode, size or times changed since the last scan;
the scan itself runs in a worker thread so that hashing a large file never stalls the agent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from storage_driver_sdk.scan import Entry, ScannedDriver, entries, entry_at, scan_path


@dataclass(frozen=True)
class _Cached:
    key: tuple[int, ...]
    result: ScannedDriver


def _scanned(entry: Entry, cached: _Cached | None) -> _Cached:
    """The entry's scan: the cached one while its key is unchanged, else a new one."""
    if cached is not None and cached.key == entry.key:
        return cached
    return _Cached(entry.key, scan_path(entry.path, entry.relative))


def _scan_changed(root: Path, cache: dict[str, _Cached]) -> dict[str, _Cached]:
    return {entry.relative: _scanned(entry, cache.get(entry.relative)) for entry in entries(root)}


def _scan_one(root: Path, relative: str, cached: _Cached | None) -> _Cached | None:
    entry = entry_at(root, relative)
    return None if entry is None else _scanned(entry, cached)


class Inventory:
    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, _Cached] = {}

    async def rescan(self) -> bool:
        """Scan the directory again; True when anything changed."""
        fresh = await asyncio.to_thread(_scan_changed, self.root, dict(self._cache))
        changed = {k: v.result for k, v in fresh.items()} != {k: v.result for k, v in self._cache.items()}
        self._cache = fresh
        return changed

    async def refresh(self, relative: str) -> ScannedDriver | None:
        """Scan one entry now (after the agent wrote it, or before loading it), unless its key
        says it is unchanged since the last scan: 50 drivers of one file, loaded at once, then
        cost 50 stat calls, not 50 hashes and parses (the host checks the hash again anyway)."""
        cached = await asyncio.to_thread(_scan_one, self.root, relative, self._cache.get(relative))
        if cached is None:
            self._cache.pop(relative, None)
            return None
        self._cache[relative] = cached
        return cached.result

    def get(self, relative: str) -> ScannedDriver | None:
        cached = self._cache.get(relative)
        return cached.result if cached else None

    def sha256(self, relative: str) -> str | None:
        """The content hash of an entry now; None when it is absent or unreadable."""
        result = self.get(relative)
        return result.sha256 or None if result else None

    def scanned(self) -> list[ScannedDriver]:
        return [cached.result for _, cached in sorted(self._cache.items())]
