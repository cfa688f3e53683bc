"""Which watch events are new (pure): a watch delivers its events in resourceVersion order, so an
event not newer than the last one taken is a duplicate or a replay (a proxy or client that
re-sends, a watch resumed from an older version) and must change nothing.

resourceVersions are opaque to clients, but etcd's are increasing integers; one that is not an
integer is taken as new (nothing can be compared), as before this check existed.
"""

from __future__ import annotations


def version_number(text: object) -> int | None:
    text = str(text or "")
    return int(text) if text.isdigit() else None


class WatchOrder:
    """The newest resourceVersion taken from one list-then-watch stream."""

    def __init__(self, version: object = "") -> None:
        self.newest = version_number(version)

    def restart(self, version: object) -> None:
        """A (re)list at `version`: it replaces everything seen before, older events included."""
        self.newest = version_number(version)

    def take(self, version: object) -> bool:
        """True for an event to act on (and remember as the newest), False for a stale one."""
        number = version_number(version)
        if number is None:
            return True
        if self.newest is not None and number <= self.newest:
            return False
        self.newest = number
        return True
