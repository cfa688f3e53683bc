"""Commands in the docs, so that a test runs every one of them and the docs stay true.

A fenced `sh` block is a command block and must be preceded by one of these markers:

    <!-- test -->               run it; it must succeed
    <!-- test: no-kubelet -->   run it; it succeeds, or fails only because this control plane
                                has no kubelet or scheduler (Pods never run here)

Blocks of other languages (yaml, text, lua) are not commands. The blocks of one document run
in order in one bash process (`set -euo pipefail`), so a variable set in one block is there in
the next.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"^<!--\s*test(?::\s*(?P<mode>[a-z-]+))?\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_-]*)\s*$")
COMMAND_LANGS = {"sh", "bash", "shell", "console"}
MODES = {"run", "no-kubelet"}
# What kubectl says about a Pod that no kubelet ever ran.
NO_KUBELET = re.compile(
    r"does not have a host assigned|is waiting to start|timed out waiting for the condition on pods/"
)
# ... and that is accepted only while no Pod of the cluster was ever scheduled to a node.
NO_POD_SCHEDULED = "test -z \"$(kubectl get pods --all-namespaces -o jsonpath='{.items[*].spec.nodeName}')\""


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    lang: str
    mode: str | None  # None: not marked
    text: str

    @property
    def is_command(self) -> bool:
        return self.lang in COMMAND_LANGS

    @property
    def where(self) -> str:
        return f"{self.document.name}:{self.line}"


def blocks(document: Path) -> list[Block]:
    lines = document.read_text().splitlines()
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
        mode = (marker.group("mode") or "run") if marker else None
        found.append(Block(document, start + 1, fence.group("lang"), mode, "\n".join(lines[start + 1 : end])))
        index = end + 1
    return found


def problems(document: Path) -> list[str]:
    """Command blocks without a marker, and markers nobody understands."""
    out = []
    for block in blocks(document):
        if block.is_command and block.mode is None:
            out.append(f"{block.where}: command block without a <!-- test --> marker")
        if block.mode is not None and block.mode not in MODES:
            out.append(f"{block.where}: unknown marker mode {block.mode!r}")
        if block.mode is not None and not block.is_command:
            out.append(f"{block.where}: marker on a {block.lang or 'plain'} block, which is not run")
    return out


def script(document: Path) -> str:
    """One bash script that runs the document's command blocks in order and names the failing one."""
    parts = ["set -euo pipefail"]
    for block in blocks(document):
        if not block.is_command or block.mode is None:
            continue
        parts.append(f"echo {shlex.quote('>>> ' + block.where)}")
        if block.mode == "no-kubelet":
            parts.append(
                "if ! __out=$( { " + block.text + "\n} 2>&1 ); then\n"
                "  printf '%s\\n' \"$__out\"\n"
                f'  grep -Eq {shlex.quote(NO_KUBELET.pattern)} <<<"$__out" && {NO_POD_SCHEDULED} '
                f"|| {{ echo {shlex.quote('FAILED (not for lack of a kubelet): ' + block.where)} >&2; exit 1; }}\n"
                "else\n  printf '%s\\n' \"$__out\"\nfi"
            )
        else:
            parts.append(
                f"trap {shlex.quote('echo FAILED: ' + block.where + ' >&2')} ERR\n{block.text}\ntrap - ERR"
            )
    return "\n".join(parts) + "\n"
