"""Directory autoload: the driver files of a node that run there without a StorageDriver.

With the operator's `--directory-autoload` on, a file in a node's `status.available` that
declares `auto_load=True` is planned on that node as if a StorageDriver named it with every
declaration left to the file (hostPath source, its name and version, `supportedDevices`,
`minimumPlatform` and `autoLoad` unset, the defaults for the rest): matching, the bound, the
priority (0) and the unload delay are those of any driver (desired.py). Its entry in the node's
spec is called `file:<path>`, a name no StorageDriver can have.

A file is not autoloaded while a StorageDriver (or a driver already on the node) declares the
same driver name: the StorageDriver decides where that driver runs, and one driver never runs
twice on a node. Among files of one node that declare the same name, the first path wins.
Files the agent fetched for configMap and url sources (under `managed/`) are never autoloaded.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import Final

from storage_driver_operator.views import MANAGED_DIR, AvailableFile, StorageDriverView, storage_driver_view

PREFIX: Final = "file:"


class FileReason(StrEnum):
    """Why a node's driver file is not autoloaded there (or no longer)."""

    NOT_AUTO_LOAD = "NotAutoLoad"
    CLAIMED = "ClaimedByStorageDriver"
    DUPLICATE = "DuplicateDriverName"
    INCOMPLETE = "IncompleteDeclaration"
    REMOVED = "FileRemoved"
    OFF = "DirectoryAutoloadOff"


def entry_name(path: str) -> str:
    """The spec entry of an autoloaded file (':' cannot appear in a StorageDriver's name)."""
    return PREFIX + path


def is_file_entry(name: str) -> bool:
    return name.startswith(PREFIX)


def _refusal(found: AvailableFile, claimed: Collection[str]) -> tuple[FileReason, str] | None:
    if not found.auto_load:
        return FileReason.NOT_AUTO_LOAD, f"{found.file} declares auto_load=False"
    if found.driver_name in claimed:
        return FileReason.CLAIMED, (
            f"a StorageDriver declares driver {found.driver_name!r}, which {found.file} declares; "
            "the StorageDriver decides where it runs"
        )
    if found.version is None:
        return FileReason.INCOMPLETE, f"{found.file} declares no version; autoload needs one"
    if not found.supported_devices:
        return FileReason.INCOMPLETE, f"{found.file} declares no supported_devices; autoload needs them"
    return None


def file_drivers(
    available: Mapping[str, AvailableFile], claimed: Collection[str]
) -> dict[str, StorageDriverView | tuple[FileReason, str]]:
    """Per entry name: the driver an autoloaded file stands for, or why the file is not one.

    `claimed`: the driver names StorageDrivers declare (and those already on the node under a
    StorageDriver's name). Files without a readable declaration are left out.
    """
    result: dict[str, StorageDriverView | tuple[FileReason, str]] = {}
    first: dict[str, str] = {}  # driver name -> the path that declares it first
    for path in sorted(available):
        found = available[path]
        if found.error or found.driver_name is None or path.startswith(f"{MANAGED_DIR}/"):
            continue
        name = entry_name(path)
        refusal = _refusal(found, claimed)
        if refusal is None and found.driver_name in first:
            refusal = (
                FileReason.DUPLICATE,
                (f"{first[found.driver_name]} declares driver {found.driver_name!r} too and comes first"),
            )
        if refusal is not None:
            result[name] = refusal
            continue
        first[found.driver_name] = path
        spec = {
            "driverName": found.driver_name,
            "version": found.version,
            "source": {"hostPath": {"path": path}},
        }
        view = storage_driver_view({"metadata": {"name": name}, "spec": spec})
        result[name] = view if view.spec is not None else (FileReason.INCOMPLETE, f"{path}: {view.invalid}")
    return result


def gone(name: str, autoload: bool) -> tuple[FileReason, str]:
    """Why an autoloaded entry that no file stands for any more leaves the node."""
    if not autoload:
        return FileReason.OFF, "directory autoload is off in the operator"
    return FileReason.REMOVED, f"{name[len(PREFIX) :]} is no longer in the node's driver directory"
