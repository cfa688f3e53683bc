"""Reads of the host's /sys, /dev and /run/udev through a host-root prefix.

Every path the probe touches is written as the host sees it (`/sys/class/block`); `HostRoot`
puts the prefix in front. The agent passes `/` on a node, or the mount point of the host's
root inside a container (`--host-root /host`); unit tests pass a recorded fixture tree.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import sys
from pathlib import Path

LOOP_GET_STATUS64 = 0x4C05
# struct loop_info64: lo_device, lo_inode, lo_rdevice, lo_offset, lo_sizelimit (u64 each), then
# lo_number, lo_encrypt_type, lo_encrypt_key_size, lo_flags (u32 each), then names and keys.
LOOP_INFO64_SIZE = 232
LOOP_INFO64_HEAD = struct.Struct("=QQ")
# _IOR('v', 1, long): the inode's generation, which changes when a filesystem reuses an inode.
FS_IOC_GETVERSION = 0x80087601


class HostRoot:
    """The host's filesystem seen through a prefix; paths in and out are host paths."""

    def __init__(self, root: str | Path = "/"):
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"HostRoot({str(self.root)!r})"

    def local(self, host_path: str) -> Path:
        """Where a host path is in this process's filesystem."""
        return self.root / host_path.lstrip("/")

    def host(self, local_path: str | Path) -> str:
        """The host path of a local path under the root (the inverse of `local`)."""
        relative = os.path.relpath(local_path, self.root)
        if relative == ".":
            return "/"
        if relative.startswith(".."):
            # A link that leaves the root: report it as the host would name it, unprefixed.
            return str(local_path)
        return "/" + relative

    def exists(self, host_path: str) -> bool:
        return self.local(host_path).exists()

    def read_text(self, host_path: str) -> str:
        """The file's text; OSError or UnicodeDecodeError when it cannot be read."""
        return self.local(host_path).read_bytes().decode("utf-8")

    def read_bytes(self, host_path: str) -> bytes:
        return self.local(host_path).read_bytes()

    def readlink(self, host_path: str) -> str | None:
        """A symlink's target as written (usually relative), or None when it is not a link."""
        try:
            return str(self.local(host_path).readlink())
        except OSError:
            return None

    def resolve(self, host_path: str) -> str:
        """The host path with every symlink resolved (sysfs links are relative, so this stays
        inside the root)."""
        return self.host(os.path.realpath(self.local(host_path)))

    def listdir(self, host_path: str) -> list[str]:
        """Sorted entries of a directory; empty when it does not exist."""
        try:
            return sorted(entry.name for entry in self.local(host_path).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def stat(self, host_path: str) -> os.stat_result:
        return self.local(host_path).stat()

    def loop_backing_inode(self, dev_path: str) -> tuple[int, int]:
        """(st_dev, st_ino) of the file a loop device is attached to, as the kernel holds it.

        Asked of the kernel (LOOP_GET_STATUS64), not of the path: the file at the backing path
        may since have been replaced by another one. OSError ENXIO when nothing is attached.
        """
        fd = os.open(self.local(dev_path), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            info = bytearray(LOOP_INFO64_SIZE)
            fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
        finally:
            os.close(fd)
        device, inode = LOOP_INFO64_HEAD.unpack_from(info)
        return device, inode

    def file_generation(self, host_path: str) -> tuple[int, int, int]:
        """(st_dev, st_ino, i_generation) of a regular file; OSError where the filesystem keeps
        no generation (ENOTTY, EOPNOTSUPP) or the file cannot be opened."""
        fd = os.open(self.local(host_path), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            value = bytearray(8)
            fcntl.ioctl(fd, FS_IOC_GETVERSION, value)
        finally:
            os.close(fd)
        return st.st_dev, st.st_ino, int.from_bytes(value[:4], sys.byteorder)


def describe_os_error(exc: BaseException) -> str:
    """A short reason for a failed read: 'Input/output error', 'not valid UTF-8 text', ..."""
    if isinstance(exc, UnicodeDecodeError):
        return "not valid UTF-8 text"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno) if exc.errno in errno.errorcode else str(exc)
    return str(exc) or type(exc).__name__
