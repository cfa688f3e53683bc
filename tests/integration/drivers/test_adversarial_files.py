"""Scenario 8, driver files that try to get around the checks, with real files in a real driver
directory: a package swapped after its hash was checked, packages holding symlinks (out of the
driver directory, to /dev/zero) or a FIFO, and a ConfigMap source written through a symlink
that leads out. Each is refused, naming the file and what to do, or runs only what was
verified; nothing outside the driver directory changes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from storage_driver_agent.drivers import host
from storage_driver_agent.drivers.host import HostArgs, LoadError, import_driver_class
from storage_driver_agent.drivers.statemachine import Refusal, SourceRef
from storage_driver_sdk.digest import package_contents, package_sha256
from storage_driver_sdk.scan import scan_path

from tests.integration.drivers.test_sources import desired, fetcher

PACKAGE_INIT = """
from storage_driver_sdk import DeviceType, storage_driver

from . import helper


@storage_driver("Package Driver", version="1.0.0", supported_devices=[DeviceType.LOOP])
class PackageDriver:
    value = helper.VALUE

    def start(self, config): ...
    def attach(self, device): ...
    def detach(self, device): ...
    def stop(self): ...
"""


def make_package(directory: Path, name: str = "pkg") -> Path:
    package = directory / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PACKAGE_INIT)
    (package / "helper.py").write_text("VALUE = 'verified'\n")
    return package


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def host_args(package: Path, sha: str) -> HostArgs:
    return HostArgs(
        name="pkg",
        driver_name="Package Driver",
        version="1.0.0",
        sha256=sha,
        path=package,
        class_name="PackageDriver",
        module="",
        socket=package.parent / "pkg.sock",
        state_file=package.parent / "pkg.json",
        boot_id="b",
        adoption_window=60,
        memory_limit=0,
        restarts=0,
    )


@pytest.fixture
def clean_modules() -> Any:
    """import_driver_class() registers modules and a finder, as the host does once per process."""
    modules, finders = set(sys.modules), list(sys.meta_path)
    yield
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    sys.meta_path[:] = finders


def test_a_package_swapped_after_its_check_runs_only_what_was_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_modules: Any
) -> None:
    """Found broken: the host hashed the package's files, then imported them from the disk
    again, so a file replaced in between (or a module added) ran unverified. Now the host imports
    the bytes it hashed."""
    package = make_package(tmp_path / "drivers")
    sha = package_sha256(package)
    read = package_contents

    def read_then_swap(path: Path) -> dict[str, bytes]:
        contents = read(path)
        # Someone with write access to the driver directory, right after the check:
        (path / "helper.py").write_text("VALUE = 'swapped'\n")
        (path / "extra.py").write_text("raise SystemExit('unverified code ran')\n")
        return contents

    monkeypatch.setattr(host, "package_contents", read_then_swap)
    cls = import_driver_class(host_args(package, sha))
    assert cls.value == "verified"  # type: ignore[attr-defined]
    # A module that was not part of the verified package is not found, though it is on disk now.
    with pytest.raises(ModuleNotFoundError, match="verified package"):
        __import__(f"{cls.__module__}.extra")


def test_a_package_changed_before_the_host_starts_is_refused(tmp_path: Path, clean_modules: Any) -> None:
    package = make_package(tmp_path / "drivers")
    sha = package_sha256(package)
    (package / "helper.py").write_text("VALUE = 'swapped'\n")
    with pytest.raises(LoadError) as refused:
        import_driver_class(host_args(package, sha))
    assert refused.value.reason == "ChecksumMismatch"


@pytest.mark.parametrize("target", ["outside", "/dev/zero", "fifo"])
def test_a_package_holding_a_symlink_or_a_fifo_is_refused_naming_it(
    tmp_path: Path, target: str, clean_modules: Any
) -> None:
    """Found broken: a package's files were read through symlinks (a link to /dev/zero made the
    agent's scan read without end; one out of the driver directory was hashed and imported) and
    a FIFO blocked the scan. Now such a package is refused before anything is read."""
    drivers = tmp_path / "drivers"
    package = make_package(drivers)
    outside = tmp_path / "outside.py"
    outside.write_text("VALUE = 'outside'\n")
    (package / "helper.py").unlink()
    if target == "fifo":
        os.mkfifo(package / "helper.py")
    else:
        (package / "helper.py").symlink_to(outside if target == "outside" else Path(target))

    scanned = scan_path(package, "pkg")  # returns: nothing is read through the link or the FIFO
    assert scanned.declaration is None and scanned.error is not None
    assert "helper.py" in scanned.error and "copy the files into the package" in scanned.error
    with pytest.raises(LoadError) as refused:
        import_driver_class(host_args(package, scanned.sha256 or "0" * 64))
    assert refused.value.reason == "InvalidDriverFile" and "helper.py" in str(refused.value)
    assert outside.read_text() == "VALUE = 'outside'\n"


async def test_the_agent_refuses_a_package_with_a_symlink_naming_it(tmp_path: Path) -> None:
    drivers = tmp_path / "drivers"
    package = make_package(drivers)
    (package / "helper.py").unlink()
    (package / "helper.py").symlink_to(tmp_path / "outside.py")
    refused = await fetcher(drivers).fetch(
        desired(SourceRef("hostPath", "pkg"), driver_name="Package Driver")
    )
    assert isinstance(refused, Refusal) and refused.reason == "InvalidDriverFile"
    assert "helper.py" in refused.message and "symlinks" in refused.message


async def test_a_config_map_source_is_not_written_through_a_symlink_out_of_the_directory(
    tmp_path: Path,
) -> None:
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    outside = tmp_path / "precious.py"
    outside.write_text("# not the agent's to change\n")
    (drivers / "cm.py").symlink_to(outside)
    (drivers / "sub").symlink_to(tmp_path)
    sources = fetcher(drivers)  # no API client: the refusal comes before any request
    for path in ("cm.py", "sub/precious.py"):
        source = SourceRef("configMap", path, config_map=("default", "drivers", "cm.py"))
        refused = await sources.fetch(desired(source))
        assert isinstance(refused, Refusal) and refused.reason == "PathEscapesDriverDirectory", refused
        assert path in refused.message
    assert outside.read_text() == "# not the agent's to change\n"
    assert names(tmp_path) == ["drivers", "precious.py"]
