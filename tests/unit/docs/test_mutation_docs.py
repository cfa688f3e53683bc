"""docs/testing.md lists the equivalent mutants that tests/mutation/config.toml skips, so that a
reader sees every mutant that is not counted and why."""

from __future__ import annotations

from tests.conftest import REPO_ROOT
from tests.mutation.__main__ import equivalents_table, load_settings

HEADER = "| module | line | mutant | why it cannot matter |"


def test_the_docs_list_exactly_the_configured_equivalents() -> None:
    text = (REPO_ROOT / "docs" / "testing.md").read_text()
    start = text.index(HEADER)
    end = text.index("\n\n", start)
    assert text[start : end + 1] == equivalents_table(load_settings()), (
        "replace the table with the output of `python -m tests.mutation --equivalents`"
    )
