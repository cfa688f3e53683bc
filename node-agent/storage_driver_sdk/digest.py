"""Content hashes of drivers: a file's sha256, and a package directory's manifest hash.

Kept apart from the scanner so that a driver host can verify a package without loading `ast`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Final

MAX_FILE_BYTES: Final = 4 * 1024 * 1024


def _regular(path: Path) -> bool:
    """A regular file, not a symlink (as `find -type f` counts them): reading a link could leave
    the driver directory, reading a FIFO or device might never end."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def package_files(package: Path) -> list[Path]:
    """The regular files of a package directory that make up the driver, sorted (no caches, no
    hidden files, no symlinks: package_irregular() lists those, which make the package unusable)."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(package):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        files.extend(
            Path(dirpath, f)
            for f in filenames
            if not f.startswith(".") and not f.endswith(".pyc") and _regular(Path(dirpath, f))
        )
    # Byte order of the relative paths, as `LC_ALL=C sort` orders them.
    return sorted(files, key=lambda f: f.relative_to(package).as_posix().encode())


def package_sha256(package: Path) -> str:
    """sha256 of the lines '<sha256 of file>  ./<path relative to the package>\\n' in byte order of
    the paths: what `find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum` prints inside the
    package (leaving out hidden files, __pycache__ and .pyc)."""
    return manifest_sha256(package_contents(package))


def package_contents(package: Path) -> dict[str, bytes]:
    """The bytes of every file package_files() lists, by path relative to the package: read once,
    so that what is hashed is what is run. A file over MAX_FILE_BYTES raises OSError."""
    contents: dict[str, bytes] = {}
    for file in package_files(package):
        relative = file.relative_to(package).as_posix()
        with file.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise OSError(
                errno.EFBIG, f"{relative} has more than {MAX_FILE_BYTES} bytes, the limit of a driver file"
            )
        contents[relative] = data
    return contents


def manifest_sha256(contents: dict[str, bytes]) -> str:
    """package_sha256() of files already read (package_contents())."""
    manifest = hashlib.sha256()
    for relative in sorted(contents, key=lambda r: r.encode()):
        digest = hashlib.sha256(contents[relative]).hexdigest()
        manifest.update(f"{digest}  ./{relative}\n".encode())
    return manifest.hexdigest()


def package_irregular(package: Path) -> list[str]:
    """What a driver package may not hold (relative paths): symlinks, which could lead out of the
    driver directory to code nobody verified, and FIFOs, sockets or devices."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(package):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            if name.startswith(".") or name.endswith(".pyc"):
                continue
            if path.is_symlink() or (name in filenames and not _regular(path)):
                found.append(path.relative_to(package).as_posix())
    return sorted(found)


def irregular_refused(found: list[str]) -> str:
    return (
        f"the package holds symlinks or special files ({', '.join(found)}): a driver package may "
        "hold only regular files and directories (a link may lead outside the driver directory); "
        "copy the files into the package"
    )
