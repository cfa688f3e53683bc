"""Benchmark results as Markdown tables, and their section in docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    command: str = "make bench"
    notes: str = ""

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", f"Command: `{self.command}`", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.notes:
            lines += ["", self.notes]
        return "\n".join(lines) + "\n"


def percentile(samples: Sequence[float], p: float) -> float:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(p) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, kernel {platform.release()}, measured {dt.date.today()}"


def replace_section(doc: Path, name: str, tables: list[Table]) -> None:
    """Replace (or append) the section between `<!-- bench:name -->` markers."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    body = "\n".join([begin, f"_{machine()}_", "", *[t.markdown() for t in tables], end])
    text = (
        doc.read_text()
        if doc.exists()
        else "# Benchmarks\n\nProduced by `make bench`; each section names its command.\n"
    )
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + body + tail
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    doc.write_text(text)
