"""The README and docs/ refer only to things that exist: every document's commands are run by a
test (tests/integration/docs, tests/e2e/docs), every `make` target named is in the Makefile,
every relative link and anchor leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from storage_driver_agent.drivers.status import TRANSITION_HOLD
from storage_driver_api.nodedevice import DeviceIdentity, NodeDevice, node_device_name
from storage_driver_sdk.scan import scan_path

from tests.conftest import REPO_ROOT
from tests.harness import doccommands

DOCUMENTS = sorted(["README.md", *(f"docs/{p.name}" for p in (REPO_ROOT / "docs").glob("*.md"))])
PENDING_FILES: set[str] = set()
LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)")
MAKE = re.compile(r"\bmake ((?:[a-z][a-z0-9-]*)(?: +[a-z][a-z0-9-]*)*)")


def test_every_document_is_tested_somewhere() -> None:
    listed = set(doccommands.DOCUMENTS) | set(doccommands.ELSEWHERE)
    assert set(DOCUMENTS) - listed == set(), "add the document to doccommands.DOCUMENTS"
    missing = {name for name in doccommands.DOCUMENTS if not (REPO_ROOT / name).exists()}
    assert missing == set()


@pytest.mark.parametrize("name", sorted(doccommands.DOCUMENTS))
def test_every_command_block_is_marked(name: str) -> None:
    document = REPO_ROOT / name
    assert doccommands.problems(document) == []
    assert any(b.runs for b in doccommands.blocks(document)), f"{name} has no command to run"


def makefile_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([a-z][a-z0-9-]*):", text, re.MULTILINE)}


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_make_target_named_exists(name: str) -> None:
    # Only code counts (`make x` or a block): "make sure" in prose is English.
    document = REPO_ROOT / name
    text = document.read_text()
    code = re.findall(r"`([^`\n]+)`", text) + [b.text for b in doccommands.blocks(document)]
    named = {word for snippet in code for match in MAKE.finditer(snippet) for word in match.group(1).split()}
    assert named - makefile_targets() == set(), f"{name} names make targets the Makefile does not have"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    in_code = False
    found = set()
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_relative_link_leads_somewhere(name: str) -> None:
    source = REPO_ROOT / name
    broken = []
    for match in LINK.finditer(source.read_text()):
        target = match.group("target")
        if re.match(r"^[a-z]+:", target):
            continue
        path_part, _, anchor = target.partition("#")
        path = (source.parent / path_part).resolve() if path_part else source
        relative = path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)
        if not path.exists():
            if relative not in PENDING_FILES:
                broken.append(f"{target}: no such file")
            continue
        if anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {relative}")
    assert broken == []


def test_the_readme_shows_the_example_storagedriver() -> None:
    readme = REPO_ROOT / "README.md"
    shown = [yaml.safe_load(b.text) for b in doccommands.blocks(readme) if b.lang == "yaml"]
    example = yaml.safe_load((REPO_ROOT / "examples" / "storagedriver-loop.yaml").read_text())
    assert example in shown


def node_devices_shown() -> list[tuple[str, dict[str, Any]]]:
    shown = [
        ("examples/nodedevice.yaml", yaml.safe_load((REPO_ROOT / "examples" / "nodedevice.yaml").read_text()))
    ]
    for name in DOCUMENTS:
        for block in doccommands.blocks(REPO_ROOT / name):
            if block.lang == "yaml" and "kind: NodeDevice" in block.text:
                shown.append((block.where, yaml.safe_load(block.text)))
    return shown


@pytest.mark.parametrize(
    ("where", "device"), node_devices_shown(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_node_devices_shown_have_the_name_their_identity_gives(where: str, device: dict[str, Any]) -> None:
    spec = device["spec"]
    identity = DeviceIdentity(kind=spec["identity"]["kind"], value=spec["identity"]["value"])
    assert device["metadata"]["name"] == node_device_name(spec["nodeName"], identity), where
    NodeDevice.model_validate({"spec": spec, "status": device.get("status") or {}})


def test_the_example_nodedriverconfig_lists_the_sample_drivers_as_a_scan_reads_them() -> None:
    example = yaml.safe_load((REPO_ROOT / "examples" / "nodedriverconfig.yaml").read_text())
    for entry in example["status"]["available"]:
        scanned = scan_path(REPO_ROOT / "examples" / "drivers" / entry["file"])
        assert scanned.declaration is not None
        assert (entry["sha256"], entry["driverName"], entry["className"], entry["version"]) == (
            scanned.sha256,
            scanned.declaration.driver_name,
            scanned.declaration.class_name,
            scanned.declaration.version,
        )
        assert entry["supportedDevices"] == list(scanned.declaration.supported_devices)
    for driver in example["status"]["drivers"]:
        available = {a["file"]: a for a in example["status"]["available"]}
        spec = next(d for d in example["spec"]["drivers"] if d["name"] == driver["name"])
        assert driver["sha256"] == available[spec["source"]["path"]]["sha256"]


REPOSITORY_PATH = re.compile(
    r"`((?:operator|node-agent|charts|crds|examples|docs|hack|images|tests|\.ci)/[^`\s]*)`"
)


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_repository_path_named_exists(name: str) -> None:
    text = (REPO_ROOT / name).read_text()
    missing = []
    for path in sorted(set(REPOSITORY_PATH.findall(text))):
        if path in PENDING_FILES:
            continue
        # `charts/.../rbac-*.yaml` names several files; `crds/` a directory.
        if not list(REPO_ROOT.glob(path.rstrip("/"))):
            missing.append(path)
    assert missing == []


def test_the_status_hold_is_the_one_driver_runtime_states() -> None:
    """Users read that a load over within the hold shows only Loaded (status.write_delay)."""
    text = " ".join((REPO_ROOT / "docs" / "driver-runtime.md").read_text().split())
    held = f"{TRANSITION_HOLD * 1000:.0f} ms"
    assert f"held up to {held}" in text
    assert f"a load that is over within {held}" in text
