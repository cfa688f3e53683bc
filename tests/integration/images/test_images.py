"""The container images that `make images` builds: each starts its component, runs as the user
docs/security.md promises, and carries no compilers, package lists or build-tool caches.

The session fixture `project_images` (tests/conftest.py) runs hack/build-images.sh itself, so
these tests always check images of the current tree (about 50 s when the base root filesystem is
cached; docs/installing.md). The pods suite runs the same images on the local node."""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.harness.ociimage import OciImage, unpack

pytestmark = pytest.mark.images

VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGES = {"storage-operator": "operator", "storage-agent": "agent"}


@pytest.fixture(scope="session")
def built_images(project_images: dict[str, Path]) -> dict[str, Path]:
    return project_images


@pytest.fixture(scope="session", params=sorted(IMAGES))
def image(
    request: pytest.FixtureRequest, built_images: dict[str, Path], tmp_path_factory
) -> Iterator[OciImage]:
    name = request.param
    unpacked = unpack(built_images[name], tmp_path_factory.mktemp(name))
    yield unpacked
    shutil.rmtree(unpacked.rootfs.parent, ignore_errors=True)


def test_archive_names_the_image_and_its_entrypoint(image: OciImage) -> None:
    name = Path(image.archive).name.removesuffix(f"-{VERSION}.oci.tar")
    assert image.ref_name == f"localhost/storage-driver-operator/{name}:{VERSION}"
    assert image.entrypoint == [name]
    assert image.env["PATH"].startswith("/opt/storage-driver-operator/bin:")


def test_help_starts_the_component(image: OciImage) -> None:
    result = image.run("--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: {image.entrypoint[0]}" in result.stdout


def test_version_is_the_project_version(image: OciImage) -> None:
    result = image.run("--version")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"\b{re.escape(VERSION)}\b", result.stdout + result.stderr), result.stdout


def test_operator_runs_as_non_root_and_agent_as_root(image: OciImage) -> None:
    uid = image.user.split(":")[0]
    if image.entrypoint == ["storage-operator"]:
        assert uid not in ("", "0", "root"), "the operator image must not run as root"
    else:
        # Documented in docs/security.md: sysfs writes and device nodes need root.
        assert uid in ("0", "root")


def test_the_image_user_has_a_name(image: OciImage) -> None:
    """Libraries ask the password database for the user's name (kopf did, and the operator pod
    crash-looped without an entry); the user the image runs as has one."""
    uid = image.user.split(":")[0]
    entries = (image.rootfs / "etc" / "passwd").read_text().splitlines()
    assert any(line.split(":")[2] == uid for line in entries if line.count(":") >= 6), entries


COMPILERS = re.compile(
    r"^(gcc|g\+\+|cc|c\+\+|clang|clang\+\+|cc1|cc1plus|ld|as|[\w-]+-linux-gnu-(gcc|g\+\+|ld|as))(-\d+)?$"
)
BUILD_TOOLS = ("pip", "setuptools", "wheel", "_distutils_hack")


def test_no_compilers(image: OciImage) -> None:
    found = [
        str(p)
        for p in image.files()
        if COMPILERS.match(p.name) and not (image.rootfs / p.relative_to("/")).is_dir()
    ]
    assert not found, f"compilers or linkers in the image: {found}"


def test_no_caches_package_lists_or_build_tools(image: OciImage) -> None:
    problems = []
    for path in image.files():
        text = str(path)
        parts = path.parts
        if text.startswith("/var/lib/apt/lists/") and path.name not in ("lock", "partial", "auxfiles"):
            problems.append(f"apt list {text}")
        if text.startswith("/var/cache/apt/") and path.suffix in (".deb", ".bin"):
            problems.append(f"apt cache {text}")
        if ".cache" in parts:
            problems.append(f"cache directory {text}")
        if text.startswith(("/build", "/src", "/tmp/")) and text != "/tmp":
            problems.append(f"build leftover {text}")
        if "site-packages" in parts:
            package = parts[parts.index("site-packages") + 1] if parts[-1] != "site-packages" else ""
            if package in BUILD_TOOLS or re.match(r"^(pip|setuptools|wheel)-[\d.]+\.dist-info$", package):
                problems.append(f"build tool {text}")
        if path.name == "__pycache__" and any(tool in parts for tool in BUILD_TOOLS):
            problems.append(f"build tool bytecode {text}")
    assert not problems, "\n".join(problems[:40])


def test_installed_project_is_byte_compiled_for_a_read_only_root(image: OciImage) -> None:
    # A read-only root filesystem cannot take __pycache__ at run time: compiled at build time.
    site = next(image.rootfs.glob("opt/storage-driver-operator/lib/python3*/site-packages"))
    package = (
        "storage_driver_operator" if image.entrypoint == ["storage-operator"] else "storage_driver_agent"
    )
    assert list((site / package / "__pycache__").glob("*.pyc")), f"{package} is not byte-compiled"


def test_component_dependencies_only(image: OciImage) -> None:
    site = next(image.rootfs.glob("opt/storage-driver-operator/lib/python3*/site-packages"))
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    if image.entrypoint == ["storage-operator"]:
        assert "kopf" in installed and "pyudev" not in installed and "watchdog" not in installed
    else:
        assert {"pyudev", "watchdog", "prometheus_client"} <= installed and "kopf" not in installed


def test_code_belongs_to_root(image: OciImage) -> None:
    # The operator's user must not be able to change its own code, even without readOnlyRootFilesystem.
    venv = image.rootfs / "opt/storage-driver-operator"
    owners = {p.lstat().st_uid for p in venv.rglob("*")}
    assert owners == {0}, owners
