"""`make mutation`: mutation testing of the pure decision modules with cosmic-ray.

    python -m tests.mutation [--full] [--jobs N] [--sample N] [MODULE ...]

For every module in tests/mutation/config.toml: `cosmic-ray init` lists its mutants; those
that cannot matter (in type annotations, `slots=`) and those listed as equivalent are skipped;
a seeded sample of the rest (every one with --full) runs through `cosmic-ray exec` against the
module's unit tests. The
modules run in parallel, each job in its own copy of the tree (cosmic-ray mutates files in
place, and the checkout stays untouched). Prints the score per module and every survivor;
exits 1 when a module scores below the threshold, 2 when the tests fail without any mutant.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue

from cosmic_ray.mutating import mutate_code
from cosmic_ray.plugins import get_operator
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import MutationSpec, TestOutcome, WorkerOutcome, WorkItem, WorkResult

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("config.toml")
COPIED = ("operator", "node-agent", "tests", "pyproject.toml")
NOT_SAMPLED = "not sampled"
RULE = "cannot matter (rule)"
EQUIVALENT = "equivalent: "


@dataclass(frozen=True)
class Equivalent:
    file: str
    line: str  # the source line, stripped
    mutant: str  # the same line after the mutation, stripped
    reason: str
    previous: str | None = None  # the line before it, stripped, when the line occurs more than once


@dataclass(frozen=True)
class Settings:
    seed: int
    sample: int
    threshold: float
    timeout: float
    memory_limit_mib: int
    property_examples: int
    modules: dict[str, list[list[str]]]
    equivalents: tuple[Equivalent, ...]


def load_settings(path: Path = CONFIG) -> Settings:
    data = tomllib.loads(path.read_text())
    equivalents = tuple(
        Equivalent(
            e["file"],
            e["line"].strip(),
            e["mutant"].strip(),
            e["reason"],
            e["previous"].strip() if "previous" in e else None,
        )
        for e in data.get("equivalent", [])
    )
    return Settings(
        seed=int(data["seed"]),
        sample=int(data["sample"]),
        threshold=float(data["threshold"]),
        timeout=float(data["timeout"]),
        memory_limit_mib=int(data["memory_limit_mib"]),
        property_examples=int(data["property_examples"]),
        modules={str(k): [[str(t) for t in stage] for stage in v] for k, v in data["modules"].items()},
        equivalents=equivalents,
    )


# --- which mutants run -------------------------------------------------------------------------


# Enums of the agent's device decisions: every value the code compares is a member (typed, and
# made by the classifier), so `is` and `==` on them agree.
MEMBER_ONLY_ENUMS = frozenset({"DeviceType", "DeviceClass"})
IDENTITY_TO_EQUALITY = frozenset(
    {"core/ReplaceComparisonOperator_Is_Eq", "core/ReplaceComparisonOperator_IsNot_NotEq"}
)
Span = tuple[int, int, int, int]  # start line, start col, end line, end col


def never_matter(source: str) -> dict[Span, frozenset[str] | None]:
    """Spans where no mutant (None) or no mutant of the given operators can change behaviour:

    - type annotations: every module has `from __future__ import annotations`, so they are
      never evaluated;
    - the `slots=` argument of a `@dataclass(...)`: the classes behave the same with or without
      `__slots__` (frozen ones refuse assignment either way; nothing adds attributes);
    - `x is DeviceType.LOOP` to `x == DeviceType.LOOP` (and `is not` to `!=`): see
      MEMBER_ONLY_ENUMS."""
    spans: dict[Span, frozenset[str] | None] = {}
    for node in ast.walk(ast.parse(source)):
        found: list[ast.expr | None] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(node.returns)
        elif isinstance(node, ast.arg | ast.AnnAssign):
            found.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "dataclass":
                    found.extend(k.value for k in decorator.keywords if k.arg == "slots")
        for expr in found:
            if expr is not None and expr.end_lineno is not None and expr.end_col_offset is not None:
                spans[(expr.lineno, expr.col_offset, expr.end_lineno, expr.end_col_offset)] = None
        if isinstance(node, ast.Compare) and node.end_lineno is not None and node.end_col_offset is not None:
            members = [
                c
                for c in node.comparators
                if isinstance(c, ast.Attribute) and getattr(c.value, "id", None) in MEMBER_ONLY_ENUMS
            ]
            if members and all(isinstance(op, ast.Is | ast.IsNot) for op in node.ops):
                spans[(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset)] = (
                    IDENTITY_TO_EQUALITY
                )
    return spans


def inside(spans: dict[Span, frozenset[str] | None], line: int, col: int, operator: str) -> bool:
    return any(
        (sl, sc) <= (line, col) < (el, ec) and (operators is None or operator in operators)
        for (sl, sc, el, ec), operators in spans.items()
    )


def mutated_line(source: str, mutation: MutationSpec) -> str:
    operator = get_operator(mutation.operator_name)(**mutation.operator_args)
    mutated = str(mutate_code(source, operator, mutation.occurrence) or source)
    line: str = mutated.splitlines()[mutation.start_pos[0] - 1]
    return line.strip()


@dataclass
class Module:
    path: str
    stages: list[list[str]]
    db: Path
    tried: int = 0
    killed: int = 0
    survivors: list[tuple[WorkItem, WorkResult]] = field(default_factory=list)
    equivalent: int = 0
    by_rule: int = 0
    total: int = 0
    seconds: float = 0.0
    matched_equivalents: set[Equivalent] = field(default_factory=set)

    @property
    def score(self) -> float:
        return 100.0 * self.killed / self.tried if self.tried else 100.0


def select(module: Module, settings: Settings, sample: int | None) -> None:
    """Mark the mutants that do not run as skipped in the session, with the reason."""
    source = (ROOT / module.path).read_text()
    lines = source.splitlines()
    spans = never_matter(source)
    equivalents: dict[tuple[str, str, str | None], Equivalent] = {
        (e.line, e.mutant, e.previous): e for e in settings.equivalents if e.file == module.path
    }
    listed_lines = {line for line, _, _ in equivalents}

    def listed(text: str, mutant: str, previous: str) -> Equivalent | None:
        return equivalents.get((text, mutant, previous)) or equivalents.get((text, mutant, None))

    candidates: dict[tuple[str, str, int], str] = {}  # (operator, line, nth on that line) -> job
    with use_db(str(module.db), WorkDB.Mode.open) as db:
        items = sorted(db.pending_work_items, key=lambda i: i.mutations[0].start_pos)
        module.total = len(items)
        for item in items:
            mutation = item.mutations[0]
            row, col = mutation.start_pos
            text = lines[row - 1].strip()
            previous = lines[row - 2].strip() if row > 1 else ""
            if inside(spans, row, col, mutation.operator_name):
                module.by_rule += 1
                db.set_result(item.job_id, WorkResult(WorkerOutcome.SKIPPED, output=RULE))
            elif text in listed_lines and (
                (eq := listed(text, "*", previous))
                or (eq := listed(text, mutated_line(source, mutation), previous))
            ):
                module.equivalent += 1
                module.matched_equivalents.add(eq)
                db.set_result(
                    item.job_id, WorkResult(WorkerOutcome.SKIPPED, output=f"{EQUIVALENT}{eq.reason}")
                )
            else:
                same = [k for k in candidates if k[:2] == (mutation.operator_name, text)]
                candidates[(mutation.operator_name, text, len(same))] = item.job_id
        if sample is not None:
            # Keyed by what the mutant changes (job ids are random), so that the sample stays
            # the same while the module does.
            chooser = random.Random(f"{settings.seed}:{module.path}")
            order = sorted(candidates)
            chooser.shuffle(order)  # a larger sample holds every mutant of a smaller one
            keep = set(order[:sample])
            for key, job_id in candidates.items():
                if key not in keep:
                    db.set_result(job_id, WorkResult(WorkerOutcome.SKIPPED, output=NOT_SAMPLED))


def equivalents_table(settings: Settings) -> str:
    """The `[[equivalent]]` list as the Markdown table in docs/testing.md (a test keeps the two
    the same)."""

    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    rows = ["| module | line | mutant | why it cannot matter |", "|---|---|---|---|"]
    for eq in settings.equivalents:
        side, _, module = eq.file.partition("/")
        module = module.partition("/")[2]
        where = f"{'operator' if side == 'operator' else 'agent'} `{module}`"
        mutant = "every mutant of the line" if eq.mutant == "*" else f"`{cell(eq.mutant)}`"
        line = f"`{cell(eq.line)}`" + (f" (after `{cell(eq.previous)}`)" if eq.previous else "")
        rows.append(f"| {where} | {line} | {mutant} | {cell(eq.reason)} |")
    return "\n".join(rows) + "\n"


# --- running -----------------------------------------------------------------------------------


def make_copy(into: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.egg-info")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(source, into / name)
    return into


def test_command(stages: Sequence[Sequence[str]], settings: Settings) -> str:
    """pytest per stage, each stage only when the one before passed, as one command line
    (cosmic-ray splits it with shlex and runs it without a shell). A stage whose files do not
    use hypothesis runs without its plugin, whose import is the largest part of a pytest start.
    The address space is capped: a mutant that allocates without bound (a loop that no longer
    ends, appending) fails with MemoryError instead of taking the machine's memory."""
    timeout = settings.timeout
    commands = [f"ulimit -v {settings.memory_limit_mib * 1024}"]
    for stage in stages:
        plain = not any("hypothesis" in (ROOT / test).read_text() for test in stage)
        commands.append(
            shlex.join(
                [
                    sys.executable,
                    *("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", "-o", "addopts="),
                    *(("-p", "no:hypothesispytest") if plain else ("--hypothesis-seed=0",)),
                    f"--timeout={int(timeout)}",
                    *stage,
                ]
            )
        )
    return shlex.join(["bash", "-c", " && ".join(commands)])


def cosmic_ray_config(module: Module, settings: Settings) -> str:
    # JSON strings are valid TOML basic strings.
    return (
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module.path)}\n"
        f"timeout = {settings.timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(test_command(module.stages, settings))}\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )


def environment(tree: Path, settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{tree / 'operator'}{os.pathsep}{tree / 'node-agent'}"
    env["SDO_PROPERTY_EXAMPLES"] = str(settings.property_examples)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


RUNNING: set[subprocess.Popen[bytes]] = set()


def run(command: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as proc:
        RUNNING.add(proc)
        _, err = proc.communicate()
        RUNNING.discard(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{err.decode(errors='replace')[-3000:]}")


def stop_all(*_: object) -> None:
    """Stopped from outside: stop the cosmic-ray processes and unwind, so that the scratch
    copies are removed."""
    for proc in list(RUNNING):
        proc.terminate()
    sys.exit(143)


def run_module(module: Module, tree: Path, settings: Settings) -> None:
    started = time.monotonic()
    config = module.db.with_suffix(".toml")
    run(
        [sys.executable, "-m", "cosmic_ray.cli", "exec", str(config), str(module.db)],
        tree,
        environment(tree, settings),
    )
    module.seconds = time.monotonic() - started


def baseline(tests: Sequence[str], tree: Path, settings: Settings) -> None:
    """The unmutated tests must pass, started as cosmic-ray starts them (shlex-split, no
    shell), or every mutant would count as killed."""
    command = shlex.split(test_command([tests], settings))
    done = subprocess.run(command, cwd=tree, env=environment(tree, settings), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the tests fail without any mutant:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")


def forget_survivors(module: Module) -> None:
    """Make the survivors of a kept session pending again (`--again`), so that `cosmic-ray
    exec` runs only them, against the tests as they are now."""
    with sqlite3.connect(module.db) as db:
        db.execute(
            "DELETE FROM work_results WHERE worker_outcome = ? AND test_outcome = ?",
            (WorkerOutcome.NORMAL.name, TestOutcome.SURVIVED.name),  # SQLAlchemy stores enum names
        )


def collect(module: Module) -> None:
    # The counts come from the whole session, so that they are right after --again too.
    module.by_rule = module.equivalent = 0
    with use_db(str(module.db), WorkDB.Mode.open) as db:
        module.total = db.num_work_items
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                module.by_rule += result.output == RULE
                module.equivalent += (result.output or "").startswith(EQUIVALENT)
                continue
            module.tried += 1
            if result.test_outcome == TestOutcome.SURVIVED and result.worker_outcome == WorkerOutcome.NORMAL:
                module.survivors.append((item, result))
            else:
                module.killed += 1  # failed tests, a timeout, or a mutant that cannot even import


@contextmanager
def trees(count: int) -> Iterator[Queue[Path]]:
    with tempfile.TemporaryDirectory(prefix="sdo-mutation-") as scratch:
        queue: Queue[Path] = Queue()
        for index in range(count):
            tree = Path(scratch) / f"tree{index}"
            tree.mkdir()
            queue.put(make_copy(tree))
        yield queue


# --- report ------------------------------------------------------------------------------------


def mutation_text(item: WorkItem, result: WorkResult) -> str:
    """`- old` / `+ new` lines of the mutant's diff, on one line."""
    changed = [
        line
        for line in (result.diff or "").splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    op = item.mutations[0].operator_name.removeprefix("core/")
    return f"{op}: " + " => ".join(line[1:].strip() for line in changed)


def report(
    modules: Sequence[Module], settings: Settings, sample: int | None, seconds: float, again: bool = False
) -> bool:
    print()
    print("| module | killed / tried | score | equivalent | by rule | mutants | seconds |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for m in modules:
        mark = "" if m.score >= settings.threshold else " (below threshold)"
        print(
            f"| {m.path} | {m.killed} / {m.tried} | {m.score:.1f}%{mark} | {m.equivalent} | {m.by_rule}"
            f" | {m.total} | {m.seconds:.0f} |"
        )
        ok = ok and m.score >= settings.threshold
    full = sample is None
    kind = "all mutants" if full else f"sample of {sample} per module, seed {settings.seed}"
    if again:
        kind = "the kept sessions, their survivors run again"
    print(f"\n{kind}; threshold {settings.threshold:.0f}%; wall time {seconds:.0f}s")
    survivors = [(m, item, result) for m in modules for item, result in m.survivors]
    if survivors:
        print("\nSurviving mutants (no test fails):")
        for m, item, result in sorted(survivors, key=lambda s: (s[0].path, s[1].mutations[0].start_pos)):
            row = item.mutations[0].start_pos[0]
            print(f"  {m.path}:{row}  {mutation_text(item, result)}")
    if full and not again:  # --again sees only the survivors' matches
        matched = set().union(*(m.matched_equivalents for m in modules))
        for eq in settings.equivalents:
            if eq.file in {m.path for m in modules} and eq not in matched:
                print(
                    f"\nStale equivalent (matches no mutant; remove it): {eq.file}: {eq.line} => {eq.mutant}"
                )
                ok = False
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make mutation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help="module paths (default: every module in the config)")
    parser.add_argument("--full", action="store_true", help="every mutant, not a sample")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel copies")
    parser.add_argument("--sample", type=int, help="mutants per module (default from the config)")
    parser.add_argument("--sessions", type=Path, help="keep the cosmic-ray sessions here (for cr-report)")
    parser.add_argument(
        "--again",
        type=Path,
        metavar="DIR",
        help="run only the survivors of the sessions kept in DIR (by --sessions) again, with the"
        " tests as they are now; the score counts the whole session (the test code may change"
        " between the runs, the mutated modules may not)",
    )
    parser.add_argument(
        "--equivalents", action="store_true", help="print the equivalents as docs/testing.md lists them"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, stop_all)
    settings = load_settings()
    if args.equivalents:
        print(equivalents_table(settings), end="")
        return 0
    unknown = [m for m in args.modules if m not in settings.modules]
    if unknown:
        parser.error(f"not in {CONFIG.relative_to(ROOT)}: {', '.join(unknown)}")
    sample = None if args.full else (args.sample if args.sample is not None else settings.sample)
    if args.again:
        if args.sessions:
            parser.error("--again reuses its own DIR; leave out --sessions")
        args.sessions, sample = args.again, None  # the session keeps its own sample
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sdo-mutation-db-") as temporary:
        scratch = args.sessions or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        modules = [
            Module(path, stages, Path(scratch) / f"{index}.sqlite")
            for index, (path, stages) in enumerate(settings.modules.items())
            if not args.modules or path in args.modules
        ]

        def init(module: Module) -> None:
            config = module.db.with_suffix(".toml")
            config.write_text(cosmic_ray_config(module, settings))
            if args.again:
                if not module.db.exists():
                    raise SystemExit(f"{module.db} does not exist: run {module.path} with --sessions first")
                forget_survivors(module)
            else:
                command = [sys.executable, "-m", "cosmic_ray.cli", "init", str(config), str(module.db)]
                run(command, ROOT, dict(os.environ))
            select(module, settings, sample)  # with --again, it sees only the survivors

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(init, modules))
        with trees(max(1, min(args.jobs, len(modules)))) as free:

            def work(job: Module | list[str]) -> None:
                tree = free.get()
                try:
                    if isinstance(job, Module):
                        run_module(job, tree, settings)
                    else:
                        baseline(job, tree, settings)
                finally:
                    free.put(tree)

            # One baseline per test directory (one pytest start each), then the modules.
            groups: dict[str, list[str]] = {}
            for test in sorted({t for m in modules for stage in m.stages for t in stage}):
                groups.setdefault(str(Path(test).parent), []).append(test)
            try:
                with ThreadPoolExecutor(max_workers=free.qsize()) as pool:
                    list(pool.map(work, groups.values()))
                    list(pool.map(work, modules))
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                return 2
        for module in modules:
            collect(module)
        ok = report(modules, settings, sample, time.monotonic() - started, again=args.again is not None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
