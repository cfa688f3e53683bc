"""`make bench`: run every benchmark module (tests/bench/bench_*.py) and print its tables.

    python -m tests.bench [NAME ...] [--write]

Each module has `run() -> list[Table]` (it may start the local control plane and real
processes). `--write` also replaces that module's section in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from tests.bench.table import Table, replace_section
from tests.harness.unwind import unwind_on_sigterm

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def modules() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(modules())})")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md with the results")
    args = parser.parse_args(argv)
    unwind_on_sigterm()  # a benchmark killed from outside still stops what it started
    selected = args.names or modules()
    for name in selected:
        module_name = name if name.startswith("bench_") else f"bench_{name}"
        module = importlib.import_module(f"tests.bench.{module_name}")
        print(f"== {module_name} ==", flush=True)
        tables: list[Table] = module.run()
        for table in tables:
            print(table.markdown(), flush=True)
        if args.write:
            replace_section(DOC, module_name, tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
