"""Content hashes of drivers: a file's sha256, and a package directory's manifest hash.

Kept apart from the scanner so that a driver host can verify a package without loading `ast`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Final

MAX_FILE_BYTES: Final = 4 * 1024 * 1024


def package_files(package: Path) -> list[Path]:
    """The files of a package directory that make up the driver, sorted (no caches, no hidden files)."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(package):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        files.extend(Path(dirpath, f) for f in filenames if not f.startswith(".") and not f.endswith(".pyc"))
    # Byte order of the relative paths, as `LC_ALL=C sort` orders them.
    return sorted(files, key=lambda f: f.relative_to(package).as_posix().encode())


def package_sha256(package: Path) -> str:
    """sha256 of the lines '<sha256 of file>  ./<path relative to the package>\\n' in byte order of
    the paths: what `find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum` prints inside the
    package (leaving out hidden files, __pycache__ and .pyc)."""
    manifest = hashlib.sha256()
    for file in package_files(package):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        manifest.update(f"{digest}  ./{file.relative_to(package).as_posix()}\n".encode())
    return manifest.hexdigest()
