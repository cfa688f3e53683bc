"""Reads an OCI image archive (`buildah push IMAGE oci-archive:FILE`) the way a container runtime
would: the index, the manifest, the config, and the layers applied in order (whiteouts included),
so that tests check the very file a user would load into a registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass
class OciImage:
    """An image unpacked from an OCI archive: its config and a root filesystem on disk."""

    archive: Path
    ref_name: str
    config: dict[str, Any]
    rootfs: Path
    layer_digests: list[str] = field(default_factory=list)

    @property
    def entrypoint(self) -> list[str]:
        return list(self.config.get("config", {}).get("Entrypoint") or [])

    @property
    def user(self) -> str:
        return str(self.config.get("config", {}).get("User") or "0:0")

    @property
    def env(self) -> dict[str, str]:
        pairs = (item.split("=", 1) for item in self.config.get("config", {}).get("Env") or [])
        return {k: v for k, v in pairs}

    def files(self) -> list[PurePosixPath]:
        """Every path in the root filesystem, relative to it."""
        found: list[PurePosixPath] = []
        for dirpath, dirnames, filenames in os.walk(self.rootfs):
            rel = Path(dirpath).relative_to(self.rootfs)
            found.extend(PurePosixPath("/", rel, name) for name in (*dirnames, *filenames))
        return found

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the image's entrypoint with `args` in its root filesystem, as its user, with its
        environment (chroot: what `buildah run` does without the namespaces)."""
        user = self.user if ":" in self.user else f"{self.user}:{self.user}"
        return subprocess.run(
            ["chroot", f"--userspec={user}", str(self.rootfs), *self.entrypoint, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            cwd="/",
        )


def _blob(archive: tarfile.TarFile, digest: str) -> bytes:
    algorithm, value = digest.split(":", 1)
    member = archive.extractfile(f"blobs/{algorithm}/{value}")
    assert member is not None, f"blob {digest} missing from the archive"
    return member.read()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _apply_layer(layer: tarfile.TarFile, rootfs: Path) -> None:
    members = []
    for member in layer.getmembers():
        name = PurePosixPath(member.name)
        target = rootfs.joinpath(*[p for p in name.parts if p not in ("/", ".")])
        if name.name == OPAQUE:
            if target.parent.is_dir():
                for child in target.parent.iterdir():
                    _remove(child)
            continue
        if name.name.startswith(WHITEOUT):
            _remove(target.parent / name.name[len(WHITEOUT) :])
            continue
        if member.isdev():
            continue  # device nodes need mknod; no test needs them
        if target.is_symlink() or (target.exists() and not (target.is_dir() and member.isdir())):
            _remove(target)
        members.append(member)
    layer.extractall(rootfs, members=members, numeric_owner=True, filter="fully_trusted")


def unpack(archive_path: Path, dest: Path) -> OciImage:
    """Unpack the (single) image of an OCI archive into dest/rootfs."""
    rootfs = dest / "rootfs"
    rootfs.mkdir(parents=True)
    with tarfile.open(archive_path) as archive:
        index = json.loads(_blob_or_file(archive, "index.json"))
        descriptor = index["manifests"][0]
        manifest = json.loads(_blob(archive, descriptor["digest"]))
        config = json.loads(_blob(archive, manifest["config"]["digest"]))
        digests = []
        for layer in manifest["layers"]:
            digests.append(layer["digest"])
            algorithm, value = layer["digest"].split(":", 1)
            member = archive.extractfile(f"blobs/{algorithm}/{value}")
            assert member is not None
            with tarfile.open(fileobj=member, mode="r|*") as stream:
                _apply_stream(stream, rootfs)
    return OciImage(
        archive=archive_path,
        ref_name=descriptor.get("annotations", {}).get("org.opencontainers.image.ref.name", ""),
        config=config,
        rootfs=rootfs,
        layer_digests=digests,
    )


def _apply_stream(stream: tarfile.TarFile, rootfs: Path) -> None:
    # A compressed stream can be read once only: buffer it into a seekable tar first.
    tmp = rootfs.parent / "layer.tar"
    with tarfile.open(tmp, "w") as out:
        for member in stream:
            out.addfile(member, stream.extractfile(member) if member.isfile() else None)
    with tarfile.open(tmp) as layer:
        _apply_layer(layer, rootfs)
    tmp.unlink()


def _blob_or_file(archive: tarfile.TarFile, name: str) -> bytes:
    member = archive.extractfile(name)
    assert member is not None, f"{name} missing from the archive"
    return member.read()
