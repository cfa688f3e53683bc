"""Importing a driver package from the bytes that were verified, never from the disk again.

The host hashes every file of the package once (`storage_driver_sdk.digest.package_contents`)
and serves the package and its submodules from those bytes: a file changed or added after the
check (time of check to time of use) is not imported, and a module the package does not hold
is not found. Standard library only: it runs in the driver host.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import types
from collections.abc import Sequence
from pathlib import Path


class VerifiedPackage(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A meta path finder and loader for one package, `name`, held in memory."""

    def __init__(self, name: str, root: Path, contents: dict[str, bytes]) -> None:
        self.name = name
        self.root = root
        self.contents = contents

    def _file(self, fullname: str) -> tuple[str, bool] | None:
        """The package-relative file of a module, and whether it is a package."""
        if fullname != self.name and not fullname.startswith(self.name + "."):
            return None
        inner = fullname[len(self.name) + 1 :].replace(".", "/")
        package = f"{inner}/__init__.py" if inner else "__init__.py"
        if package in self.contents:
            return package, True
        if inner and f"{inner}.py" in self.contents:
            return f"{inner}.py", False
        return None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        found = self._file(fullname)
        if found is None:
            if fullname.startswith(self.name + "."):
                # Not in what was verified: do not let the path finders look on the disk.
                raise ModuleNotFoundError(
                    f"No module named {fullname!r} in the verified package", name=fullname
                )
            return None
        relative, is_package = found
        spec = importlib.machinery.ModuleSpec(
            fullname, self, origin=str(self.root / relative), is_package=is_package
        )
        spec.has_location = True
        if is_package:
            spec.submodule_search_locations = []  # submodules come from this finder only
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # the default module

    def exec_module(self, module: types.ModuleType) -> None:
        spec = module.__spec__
        assert spec is not None and spec.origin is not None
        relative = Path(spec.origin).relative_to(self.root).as_posix()
        exec(compile(self.contents[relative], spec.origin, "exec"), module.__dict__)
