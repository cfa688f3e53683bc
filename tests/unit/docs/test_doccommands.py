"""How documents mark their commands and outputs (tests/harness/doccommands.py), on small
documents; tests/integration/docs runs the generated scripts."""

from __future__ import annotations

from pathlib import Path
from random import Random

from hypothesis import assume, given
from hypothesis import strategies as st

from tests.harness import doccommands

DOC = Path("doc.md")


def problems(text: str) -> list[str]:
    return doccommands.problems(DOC, text)


def test_marked_blocks_have_their_modes() -> None:
    text = """
<!-- test -->
```sh
kubectl get sd
```

<!-- test: fails -->

```sh
kubectl apply -f bad.yaml
```

<!-- output -->
```text
error: ...
```

```yaml
kind: StorageDriver
```
"""
    found = doccommands.parse(DOC, text)
    assert [(b.line, b.lang, b.kind, b.mode, b.runs) for b in found] == [
        (3, "sh", "test", "run", True),
        (9, "sh", "test", "fails", True),
        (14, "text", "output", None, False),
        (18, "yaml", None, None, False),
    ]
    assert found[1].text == "kubectl apply -f bad.yaml"
    assert problems(text) == []
    assert [(c.line, o.line) for c, o in doccommands.outputs_of(found)] == [(9, 14)]


def test_an_unmarked_command_block_is_a_problem() -> None:
    assert problems("```sh\nmake test\n```\n") == ["doc.md:1: command block without a <!-- test --> marker"]
    assert problems("```console\n$ sdctl scan .\n```\n")  # console blocks are commands too


def test_markers_that_mean_nothing_are_problems() -> None:
    assert problems("<!-- test: maybe -->\n```sh\nls\n```\n") == ["doc.md:2: unknown marker mode 'maybe'"]
    assert problems("<!-- test -->\n```yaml\na: 1\n```\n") == [
        "doc.md:2: marker on a yaml block, which is not run"
    ]
    assert problems("```text\nhello\n```\n<!-- output -->\n```text\nhello\n```\n") == [
        "doc.md:5: <!-- output --> must follow a command block that runs"
    ]
    assert problems("<!-- test -->\n```sh\nls\n```\n<!-- output -->\n```yaml\na: 1\n```\n") == [
        "doc.md:6: <!-- output --> belongs on a text block, not yaml"
    ]


def test_the_script_runs_marked_blocks_only_each_with_its_output_file(tmp_path: Path) -> None:
    document = tmp_path / "doc.md"
    document.write_text(
        "<!-- test -->\n```sh\nNODE=vm\n```\n\n```text\nnot run\n```\n"
        "<!-- test: fails -->\n```sh\nfalse\n```\n```yaml\nx: y\n```\n"
    )
    script = doccommands.script(document)
    assert "NODE=vm" in script
    assert "not run" not in script and "x: y" not in script
    assert '__out="$DOC_OUTPUTS/2.out"' in script and '__out="$DOC_OUTPUTS/10.out"' in script
    assert "it should have failed" in script


def test_expected_lines_appear_with_spaces_and_wildcards() -> None:
    actual = """FILE               DRIVER                 VERSION
loop_info.py       Loop Info Driver       1.0.0
queue_settings.py  Queue Settings Driver  1.1.0
"""
    assert (
        doccommands.missing_lines("FILE DRIVER VERSION\nloop_info.py Loop Info Driver 1.0.0\n", actual) == []
    )
    assert doccommands.missing_lines("queue_settings.py ... 1.1.0", actual) == []
    assert doccommands.missing_lines("FILE ...\n...\nqueue_settings.py ...", actual) == []
    # In any order, but each on a line of its own; a line must match whole (a wildcard is needed
    # for the rest of it).
    assert doccommands.missing_lines("queue_settings.py ...\nloop_info.py ...", actual) == []
    assert doccommands.missing_lines("loop_info.py ...\nloop_info.py ...", actual) == ["loop_info.py ..."]
    # A loose line does not take the line a precise one needs.
    assert doccommands.missing_lines("... 1.0.0\n...\n... Driver ...", actual) == []
    assert doccommands.missing_lines("... Driver ...\nloop_info.py Loop Info Driver 1.0.0", actual) == []
    assert doccommands.missing_lines("loop_info.py", actual) == ["loop_info.py"]
    assert doccommands.missing_lines("loop_info.py Loop Info Driver 2.0.0", actual) == [
        "loop_info.py Loop Info Driver 2.0.0"
    ]
    assert doccommands.missing_lines("NODE ... DEVICES", "NODE DEVICES") == []
    assert doccommands.missing_lines("... loop... True", "vm-1 loop0 True") == []
    # Regular-expression characters in the doc are literal.
    assert doccommands.missing_lines("a.c", "abc") == ["a.c"]
    assert doccommands.missing_lines("(x)", "(x)") == []


def test_a_file_block_is_written_where_it_stands(tmp_path: Path) -> None:
    document = tmp_path / "doc.md"
    document.write_text(
        "<!-- file: drivers/hello.py -->\n```python\nprint('hi')\n```\n<!-- test -->\n```sh\npython3 drivers/hello.py\n```\n"
    )
    assert doccommands.problems(document) == []
    script = doccommands.script(document)
    assert script.index("cat > drivers/hello.py <<'__DOC_FILE__'\nprint('hi')\n__DOC_FILE__") < script.index(
        "python3 drivers/hello.py"
    )


def test_a_file_block_needs_a_safe_name_and_is_no_command() -> None:
    assert problems("<!-- file: ../x.py -->\n```python\npass\n```\n") == [
        "doc.md:2: <!-- file: NAME --> needs a relative NAME without '..'"
    ]
    assert problems("<!-- file: /etc/x -->\n```text\npass\n```\n") == [
        "doc.md:2: <!-- file: NAME --> needs a relative NAME without '..'"
    ]
    assert "is for code and manifests, not commands" in problems("<!-- file: x.sh -->\n```sh\nls\n```\n")[0]


printable_line = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=30)


@given(st.lists(printable_line, max_size=12), st.randoms())
def test_any_selection_of_printed_lines_in_any_order_is_found(lines: list[str], rnd: Random) -> None:
    shown = [line for line in lines if rnd.random() < 0.6]
    rnd.shuffle(shown)
    assert doccommands.missing_lines("\n".join(shown), "\n".join(lines)) == []


@given(st.lists(printable_line, min_size=1, max_size=12))
def test_a_line_shown_more_often_than_printed_is_missing(lines: list[str]) -> None:
    line = next((x for x in lines if x.split() and "..." not in x), None)
    assume(line is not None)
    assert line is not None
    printed = [x for x in lines if " ".join(x.split()) != " ".join(line.split())] + [line]
    assert doccommands.missing_lines(f"{line}\n{line}", "\n".join(printed)) == [line]
