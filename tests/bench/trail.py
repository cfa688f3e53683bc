"""Where the hot-plug's time goes: the components' own log lines (JSON, millisecond timestamps),
paired per hot-plug, as the time from each step to the next.

In: `device arrived` -> `spec received` -> `driver host started` -> `driver loaded`; out: `device
gone` -> `spec received` -> `driver unloaded`, all the agent's (the operator logs its spec write
after the patch returns, often after the agent's watch has delivered it, so the operator's part
is the step from the NodeDevice to the spec received). Each hot-plug is found from its
last step backwards (the latest earlier line of each step before it), so lines of other devices
in between do not shift the pairing.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Line = dict[str, Any]
Step = tuple[str, Callable[[Line], bool]]


def steps(driver: str) -> tuple[list[Step], list[Step]]:
    plug: list[Step] = [
        ("device arrived", lambda x: x["msg"] == "device arrived"),
        (
            "spec received",
            lambda x: x["msg"] == "spec received" and driver in (x.get("drivers") or []),
        ),
        ("host started", lambda x: x["msg"] == "driver host started" and x.get("driver") == driver),
        ("driver loaded", lambda x: x["msg"] == "driver loaded" and x.get("driver") == driver),
    ]
    unplug: list[Step] = [
        ("device gone", lambda x: x["msg"] == "device gone"),
        (
            "spec received",
            lambda x: x["msg"] == "spec received" and driver not in (x.get("drivers") or []),
        ),
        ("driver unloaded", lambda x: x["msg"] == "driver unloaded" and x.get("driver") == driver),
    ]
    return plug, unplug


def read(paths: Iterable[Path]) -> list[tuple[float, Line]]:
    """Every JSON line of the logs, with its time (seconds since the epoch), in time order."""
    lines = []
    for path in paths:
        for text in path.read_text(errors="replace").splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if isinstance(line, dict) and "ts" in line and "msg" in line:
                lines.append((dt.datetime.fromisoformat(line["ts"]).timestamp(), line))
    return sorted(lines, key=lambda item: item[0])


def gaps(lines: list[tuple[float, Line]], chain: list[Step], prefix: str) -> dict[str, list[float]]:
    """For each hot-plug: seconds from each step to the next, keyed 'prefix: step -> next step'."""
    result: dict[str, list[float]] = {
        f"{prefix}: {a} -> {b}": [] for (a, _), (b, _) in itertools.pairwise(chain)
    }
    last_match = chain[-1][1]
    for index, (at, line) in enumerate(lines):
        if not last_match(line):
            continue
        times = [at]
        cursor = index
        for _, match in reversed(chain[:-1]):
            cursor = next((i for i in range(cursor - 1, -1, -1) if match(lines[i][1])), -1)
            if cursor < 0:
                break
            times.append(lines[cursor][0])
        if len(times) != len(chain):
            continue
        times.reverse()
        for key, earlier, later in zip(result, times, times[1:], strict=False):
            result[key].append(later - earlier)
    return result
