"""The options tables in the docs list exactly the options the programs have: none missing, none
made up. (The programs' --help is generated from the same parsers.)"""

from __future__ import annotations

import argparse
import re

import pytest
from storage_driver_agent.drivers import supervisor
from storage_driver_agent.main import build_parser as agent_parser
from storage_driver_operator.main import build_parser as operator_parser

from tests.conftest import REPO_ROOT

OPTION = re.compile(r"`(--[a-z][a-z0-9-]*)")
NOT_DOCUMENTED_IN_TABLES = {"-h", "--help", "--version"}


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {
        flag
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag not in NOT_DOCUMENTED_IN_TABLES
    }


def section(document: str, heading: str) -> str:
    text = (REPO_ROOT / "docs" / document).read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + len(heading) + 2)
    return text[start : end if end != -1 else None]


def table_options(document: str, heading: str) -> set[str]:
    """The options named in the first column of the tables of one section."""
    rows = [line for line in section(document, heading).splitlines() if line.startswith("| `--")]
    return {option for row in rows for option in OPTION.findall(row.split("|")[1])}


def test_the_agent_options_are_the_ones_in_devices_and_driver_runtime() -> None:
    documented = table_options("devices.md", "## Options") | table_options("driver-runtime.md", "## Options")
    assert documented == options_of(agent_parser())


def test_the_supervisor_options_are_the_ones_in_driver_runtime() -> None:
    line = next(
        line
        for line in section("driver-runtime.md", "## Options").splitlines()
        if line.startswith("`storage-agent supervise [")
    )
    assert set(re.findall(r"\[(--[a-z-]+)", line)) == options_of(supervisor.build_parser())


def test_the_operator_options_are_the_ones_in_operator_md() -> None:
    assert table_options("operator.md", "## Options") == options_of(operator_parser())


def environment_variables_read() -> set[str]:
    """Every environment variable the programs read (`os.environ.get("X"`, `_env("X"`,
    `_env_switch("X"`)."""
    pattern = re.compile(r"(?:_env|_env_switch|environ\.get)\(\s*\"([A-Z][A-Z0-9_]+)\"")
    sources = [*(REPO_ROOT / "operator").rglob("*.py"), *(REPO_ROOT / "node-agent").rglob("*.py")]
    return {name for source in sources for name in pattern.findall(source.read_text())}


@pytest.mark.parametrize("document", ["devices.md", "driver-runtime.md", "operator.md"])
def test_the_environment_variables_in_options_tables_are_read(document: str) -> None:
    text = section(document, "## Options")
    rows = [line for line in text.splitlines() if line.startswith("| `--")]
    # `$NAME` anywhere, and every name in an "environment" column.
    named = {name for row in rows for name in re.findall(r"\$([A-Z][A-Z0-9_]{2,})", row)}
    if "| option | environment |" in text:
        named |= {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]{2,})`", row.split("|")[2])}
    assert named, f"{document} names no environment variable"
    assert named - environment_variables_read() == set()
