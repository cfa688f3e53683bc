"""Every repository path that docs/, the README or a docstring of the project's code cites exists
(a glob such as `templates/rbac-*.yaml` must match something): a renamed or removed file must not
leave its readers looking for it. A path from the top of the repository must exist there; a
shorter one (`drivers/reconcile.py`, in prose) must be the end of a file's path in the project."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

TOP_LEVEL = ("docs", "tests", "operator", "node-agent", "charts", "examples", "hack", "crds", "images")
CITED = re.compile(r"(?<![\w./-])(?P<path>(?:" + "|".join(TOP_LEVEL) + r")/[\w*./-]*[\w*])")
# A path inside a package, cited from within it: `devices/options.py`, `storage_driver_sdk/protocol.py`.
SHORT = re.compile(r"(?<![\w./-])(?P<path>[\w-]+(?:/[\w.-]+)+\.(?:py|md|yaml|lua|json|sh|tpl))(?![\w/])")
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# Paths that only exist while something runs (the local cluster's state, built images).
GENERATED = (".local-cluster/", ".images/")


def documents() -> list[Path]:
    docs = [p for p in (REPO_ROOT / "docs").iterdir() if p.is_file()]
    return sorted([REPO_ROOT / "README.md", *docs])


def code_files() -> list[Path]:
    return sorted(
        p
        for top in ("operator", "node-agent", "tests", "examples", "hack")
        for p in (REPO_ROOT / top).rglob("*.py")
        if "fixtures" not in p.parts and "__pycache__" not in p.parts
    )


def docstrings(path: Path) -> str:
    """The module's docstring and those of its classes and functions."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = [
        tree,
        *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)),
    ]
    return "\n".join(doc for n in nodes if (doc := ast.get_docstring(n)))


def cited(text: str) -> set[str]:
    return {m.group("path").rstrip(".") for m in CITED.finditer(text)}


def short(text: str) -> set[str]:
    """Package-relative paths in prose (code blocks show files the reader makes, or a node's)."""
    prose = FENCED.sub("", text)
    return {p for m in SHORT.finditer(prose) if (p := m.group("path")).split("/")[0] not in TOP_LEVEL}


@functools.cache
def project_files() -> list[str]:
    return [
        p.relative_to(REPO_ROOT).as_posix()
        for top in TOP_LEVEL
        for p in (REPO_ROOT / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]


def ends_a_path(path: str, files: list[str]) -> bool:
    return any(f == path or f.endswith("/" + path) for f in files)


def exists(path: str) -> bool:
    if any(marker in path for marker in GENERATED):
        return True
    if "*" in path:
        return any(REPO_ROOT.glob(path))
    return (REPO_ROOT / path).exists()


def missing_in(text: str, files: list[str]) -> list[str]:
    return sorted(
        {p for p in cited(text) if not exists(p)} | {p for p in short(text) if not ends_a_path(p, files)}
    )


@pytest.mark.parametrize("document", documents(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_documents_cite_only_files_that_exist(document: Path) -> None:
    missing = missing_in(document.read_text(), project_files())
    assert missing == [], f"{document.relative_to(REPO_ROOT)} cites {missing}"


def test_docstrings_cite_only_files_that_exist() -> None:
    files = project_files()
    missing = {str(path.relative_to(REPO_ROOT)): missing_in(docstrings(path), files) for path in code_files()}
    assert {k: v for k, v in missing.items() if v} == {}


def test_the_check_finds_a_missing_file() -> None:
    assert cited("see docs/nowhere.md, and `operator/storage_driver_api/kube.py`.") == {
        "docs/nowhere.md",
        "operator/storage_driver_api/kube.py",
    }
    assert not exists("docs/nowhere.md")
    assert exists("charts/storage-driver-operator/templates/rbac-*.yaml")
    files = project_files()
    assert missing_in("the loop (`drivers/reconcile.py`) and `drivers/gone.py`", files) == ["drivers/gone.py"]
    assert missing_in("```sh\ncp a.py hello_pkg/__init__.py\n```", files) == []
