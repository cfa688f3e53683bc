"""Which devices the agent publishes: include/exclude by type and by path pattern (pure).

A pattern with a `/` is matched (shell-style: `*`, `?`, `[...]`) against the device path and
each /dev/disk/by-id link (`/dev/sd*`, `/dev/disk/by-id/usb-*`); a pattern without one
against the kernel name (`loop*`). Backing-file patterns match a loop device's backing file.
Excluding a disk does not exclude its partitions: add a pattern for them too (`/dev/sdb*`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from storage_driver_api.nodedevice import NodeDeviceSpec
from storage_driver_sdk.devices import DeviceType

# eMMC boot and RPMB areas hold firmware, not data; snap packages are squashfs images on loop
# devices (dozens on an Ubuntu host), which no storage driver is for.
DEFAULT_EXCLUDE_PATHS: tuple[str, ...] = ("/dev/mmcblk*boot*", "/dev/mmcblk*rpmb")
DEFAULT_EXCLUDE_BACKING_FILES: tuple[str, ...] = ("/var/lib/snapd/snaps/*",)


@dataclass(frozen=True)
class DeviceFilter:
    include_types: frozenset[DeviceType] | None = None  # None: every type
    exclude_types: frozenset[DeviceType] = frozenset()
    include_paths: tuple[str, ...] = ()  # empty: every path
    exclude_paths: tuple[str, ...] = DEFAULT_EXCLUDE_PATHS
    exclude_backing_files: tuple[str, ...] = DEFAULT_EXCLUDE_BACKING_FILES

    def allows(self, spec: NodeDeviceSpec) -> bool:
        return self.rejection(spec) is None

    def rejection(self, spec: NodeDeviceSpec) -> str | None:
        """Why the device is not published (for logs and `sdctl devices --all`), or None."""
        kind = DeviceType(spec.type)
        if self.include_types is not None and kind not in self.include_types:
            return f"type {kind} is not in the included types"
        if kind in self.exclude_types:
            return f"type {kind} is excluded"
        if self.include_paths and not any(_matches(p, spec) for p in self.include_paths):
            return "matches no included path pattern"
        for pattern in self.exclude_paths:
            if _matches(pattern, spec):
                return f"matches excluded path pattern {pattern}"
        if spec.backing_file:
            for pattern in self.exclude_backing_files:
                if fnmatchcase(spec.backing_file, pattern):
                    return f"backing file matches excluded pattern {pattern}"
        return None


def _matches(pattern: str, spec: NodeDeviceSpec) -> bool:
    if "/" not in pattern:
        return fnmatchcase(spec.kernel_name, pattern)
    paths = [spec.dev_path, *spec.by_id] if spec.dev_path else list(spec.by_id)
    return any(fnmatchcase(path, pattern) for path in paths)


def parse_types(text: str, option: str) -> frozenset[DeviceType]:
    """'loop, nvme-namespace' -> the types; a clear error naming the option and the valid values."""
    types: set[DeviceType] = set()
    for item in _split(text):
        try:
            types.add(DeviceType(item))
        except ValueError:
            valid = ", ".join(t.value for t in DeviceType)
            raise ValueError(f"{option}: unknown device type {item!r}; valid types: {valid}") from None
    return frozenset(types)


def parse_patterns(text: str) -> tuple[str, ...]:
    return tuple(_split(text))


def _split(text: str) -> Iterable[str]:
    return [item.strip() for item in text.split(",") if item.strip()]
