"""Commands in the docs, so that a test runs every one of them and the docs stay true.

A fenced `sh` block is a command block and must be preceded by one of these markers:

    <!-- test -->               run it; it must succeed
    <!-- test: no-pods -->      run it; it succeeds, or fails only because the chart's pods do
                                not run in this test: its components run as processes beside
                                it, and the release pins images the node does not have
    <!-- test: fails -->        run it; its last command must fail (the doc shows a refusal)

A `text` block right after a command block may be marked `<!-- output -->`: it shows what the
commands print, and the test checks that every line of it appears in their output (each on a
line of its own, in any order), with runs of spaces counting as one and `...` standing for any
text.

Any other block (a driver in `python`, a manifest in `yaml`) may be marked
`<!-- file: NAME -->`: the script writes it to NAME, relative to where the commands run, at
that point of the document, so the commands after it use exactly what the reader sees.

Blocks of other languages (yaml, python, lua, unmarked text) are not commands. The blocks of
one document run in order in one bash process (`set -euo pipefail`), so a variable set in one
block is there in the next.

`DOCUMENTS` lists every document with commands and what they start from (`Setting`); a test
fails when a document in docs/ is missing from it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MARKER = re.compile(r"^<!--\s*(?P<kind>test|output|file)(?::\s*(?P<mode>[A-Za-z0-9_./-]+))?\s*-->\s*$")
SAFE_FILE = re.compile(r"^(?!/)(?!.*\.\.)[A-Za-z0-9_./-]+$")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_-]*)\s*$")
COMMAND_LANGS = {"sh", "bash", "shell", "console"}
OUTPUT_LANGS = {"text", ""}
MODES = {"run", "no-pods", "fails"}
# What kubectl says about a Pod whose image the node does not have.
NO_PODS = re.compile(r"is waiting to start|timed out waiting for the condition on pods/")
# ... and that is accepted only while the release's pods pin such an image
# (tests/integration/chart/release.py, IMAGES_NOT_ON_NODE).
PODS_PINNED_AWAY = "kubectl get pods --all-namespaces -o jsonpath='{..image}' | grep -q not-on-this-node"
# Where the script writes each command block's output: "$DOC_OUTPUTS/<line of its fence>.out".
OUTPUTS_VARIABLE = "DOC_OUTPUTS"


@dataclass(frozen=True)
class Setting:
    """What the commands of one document start from.

    cluster: "none" (no control plane needed), "session" (the test session's local control
    plane, CRDs applied), "own" (the document runs `make cluster-up` itself, in the checkout: on
    the session's cluster, since a machine is one node).
    chart: "fresh" (no release, no CRDs), "installed" (the chart installed as installing.md
    installs it), "none" (neither prepared nor removed).
    components: a real storage-operator and storage-agent run as local processes for this
    machine's Node, with the example drivers in the agent's driver directory and a loop device
    attached (end-to-end).
    checkout: the commands are make targets of the checkout, so they run in it (what they
    write goes to the git-ignored .local-cluster/).
    """

    cluster: Literal["none", "session", "own"] = "session"
    chart: Literal["none", "fresh", "installed"] = "none"
    components: bool = False
    checkout: bool = False


DOCUMENTS: dict[str, Setting] = {
    "README.md": Setting(cluster="own"),
    "docs/api.md": Setting(),
    "docs/architecture.md": Setting(components=True),
    "docs/benchmarks.md": Setting(cluster="none"),
    "docs/demo.md": Setting(chart="fresh", checkout=True),
    "docs/devices.md": Setting(components=True),
    "docs/driver-runtime.md": Setting(components=True),
    "docs/installing.md": Setting(chart="fresh"),
    "docs/local-cluster.md": Setting(checkout=True),
    "docs/metrics.md": Setting(components=True),
    "docs/operator.md": Setting(components=True),
    "docs/reliability.md": Setting(cluster="none"),
    "docs/security.md": Setting(chart="installed"),
    "docs/testing.md": Setting(cluster="none"),
    "docs/troubleshooting.md": Setting(chart="installed", components=True),
    "docs/writing-drivers.md": Setting(components=True),
}
# Documents whose commands another test runs.
ELSEWHERE: dict[str, str] = {}


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    lang: str
    kind: str | None  # "test", "output", "file", or None: not marked
    mode: str | None  # for "test": run, no-pods, fails; for "file": the file's name
    text: str

    @property
    def is_command(self) -> bool:
        return self.lang in COMMAND_LANGS

    @property
    def where(self) -> str:
        return f"{self.document.name}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.is_command and self.kind == "test" and self.mode in MODES


def blocks(document: Path) -> list[Block]:
    return parse(document, document.read_text())


def parse(document: Path, text: str) -> list[Block]:
    lines = text.splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        start = index
        end = start + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        previous = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(previous.strip())
        kind = marker.group("kind") if marker else None
        mode = (marker.group("mode") or "run") if marker and kind == "test" else None
        if marker and kind in ("output", "file") and marker.group("mode"):
            mode = marker.group("mode")  # the file's name; for output not allowed (problems() says so)
        found.append(
            Block(document, start + 1, fence.group("lang"), kind, mode, "\n".join(lines[start + 1 : end]))
        )
        index = end + 1
    return found


def problems(document: Path, text: str | None = None) -> list[str]:
    """Command blocks without a marker, markers nobody understands, outputs of nothing."""
    out = []
    found = parse(document, document.read_text() if text is None else text)
    for index, block in enumerate(found):
        if block.is_command and block.kind is None:
            out.append(f"{block.where}: command block without a <!-- test --> marker")
        if block.kind == "test" and block.mode not in MODES:
            out.append(f"{block.where}: unknown marker mode {block.mode!r}")
        if block.kind == "test" and not block.is_command:
            out.append(f"{block.where}: marker on a {block.lang or 'plain'} block, which is not run")
        if block.kind == "output":
            previous = found[index - 1] if index else None
            if block.mode is not None:
                out.append(f"{block.where}: <!-- output --> takes no mode")
            if block.lang not in OUTPUT_LANGS:
                out.append(f"{block.where}: <!-- output --> belongs on a text block, not {block.lang}")
            if previous is None or not previous.runs:
                out.append(f"{block.where}: <!-- output --> must follow a command block that runs")
        if block.kind == "file":
            if block.is_command:
                out.append(f"{block.where}: <!-- file --> is for code and manifests, not commands")
            if not block.mode or not SAFE_FILE.match(block.mode):
                out.append(f"{block.where}: <!-- file: NAME --> needs a relative NAME without '..'")
    return out


def outputs_of(found: list[Block]) -> list[tuple[Block, Block]]:
    """(command block, the output block that shows what it prints)."""
    return [
        (found[i - 1], block)
        for i, block in enumerate(found)
        if i and block.kind == "output" and found[i - 1].runs
    ]


def output_file(block: Block) -> str:
    return f"{block.line}.out"


def script(document: Path) -> str:
    """One bash script that runs the document's command blocks in order and names the failing one.

    Each block runs in the script's own shell (variables carry over), with its output written to
    "$DOC_OUTPUTS/<line>.out" and then printed."""
    parts = ["set -euo pipefail", f': "${{{OUTPUTS_VARIABLE}:?the directory for command outputs}}"']
    for block in blocks(document):
        if block.kind == "file" and block.mode and SAFE_FILE.match(block.mode):
            parts.append(f"echo {shlex.quote('>>> ' + block.where + ': ' + block.mode)}")
            parts.append(f'mkdir -p "$(dirname {shlex.quote(block.mode)})"')
            parts.append(f"cat > {shlex.quote(block.mode)} <<'__DOC_FILE__'\n{block.text}\n__DOC_FILE__")
            continue
        if not block.runs:
            continue
        where = shlex.quote(block.where)
        parts.append(f"echo {shlex.quote('>>> ' + block.where)}")
        parts.append(f'__out="${OUTPUTS_VARIABLE}/{output_file(block)}"')
        body = "{\n" + block.text + '\n} >"$__out" 2>&1 </dev/null'
        if block.mode == "no-pods":
            parts.append(
                f"if ! {body}; then\n"
                '  cat "$__out"\n'
                f'  grep -Eq {shlex.quote(NO_PODS.pattern)} "$__out" && {PODS_PINNED_AWAY} '
                f"|| {{ echo FAILED \\(not for pods that do not run here\\): {where} >&2; exit 1; }}\n"
                'else\n  cat "$__out"\nfi'
            )
        elif block.mode == "fails":
            parts.append(
                f"if {body}; then\n"
                '  cat "$__out"\n'
                f"  echo FAILED \\(it should have failed\\): {where} >&2; exit 1\n"
                'fi\ncat "$__out"'
            )
        else:
            trap = shlex.quote(f'cat "$__out"; echo FAILED: {block.where} >&2')
            parts.append(f'trap {trap} ERR\n{body}\ntrap - ERR\ncat "$__out"')
    return "\n".join(parts) + "\n"


def _pattern(line: str) -> re.Pattern[str]:
    # "a ... b" matches "a b" as well as "a x y b": the spaces around `...` go with it.
    pieces = [re.escape(piece.strip()) for piece in _normal(line).split("...")]
    return re.compile(" ?.*?".join(pieces) if len(pieces) > 1 else pieces[0])


def _normal(line: str) -> str:
    return " ".join(line.split())


def missing_lines(expected: str, actual: str) -> list[str]:
    """The lines of `expected` that `actual` does not have (empty: all there).

    Each expected line must match a line of its own in `actual`, in any order (tools print some
    lists in no fixed order); runs of whitespace count as one space, `...` matches any text, and
    a line of only `...` stands for lines left out."""
    wanted = [line for line in expected.splitlines() if _normal(line) and _normal(line) != "..."]
    lines = [_normal(line) for line in actual.splitlines()]
    # Lines of `actual` each expected line matches; then a matching that gives every expected
    # line a line of its own where one exists (augmenting paths, as in Kuhn's algorithm).
    candidates = [[i for i, have in enumerate(lines) if _pattern(line).fullmatch(have)] for line in wanted]
    owner: dict[int, int] = {}  # line of actual -> index of the expected line it shows

    def place(index: int, seen: set[int]) -> bool:
        for line in candidates[index]:
            if line in seen:
                continue
            seen.add(line)
            if line not in owner or place(owner[line], seen):
                owner[line] = index
                return True
        return False

    placed = {index for index in range(len(wanted)) if place(index, set())}
    missing = set(range(len(wanted))) - placed
    return [line for index, line in enumerate(wanted) if index in missing]


def output_problems(document: Path, outputs_dir: Path) -> list[str]:
    """Output blocks whose lines the command did not print."""
    out = []
    for command, shown in outputs_of(blocks(document)):
        path = outputs_dir / output_file(command)
        actual = path.read_text(errors="replace") if path.exists() else ""
        missing = missing_lines(shown.text, actual)
        if missing:
            out.append(
                f"{shown.where}: the output of {command.where} lacks {missing[0]!r}"
                f"{f' (and {len(missing) - 1} more lines)' if len(missing) > 1 else ''}; "
                f"it printed:\n{actual[-3000:]}"
            )
    return out


def run(
    document: Path, cwd: Path, env: Mapping[str, str], outputs_dir: Path, timeout: float = 600
) -> list[str]:
    """Run the document's commands in `cwd`; what went wrong (empty: everything ran as shown)."""
    outputs_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            ["bash", "-c", script(document)],
            cwd=cwd,
            env={**env, OUTPUTS_VARIABLE: str(outputs_dir)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        shown = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        return [f"{document.name}: still running after {timeout}s:\n{(shown or '')[-6000:]}"]
    if result.returncode != 0:
        return [f"{document.name}:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"]
    return output_problems(document, outputs_dir)
