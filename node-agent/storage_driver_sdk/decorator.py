"""The `@storage_driver(...)` decorator that marks a class in a driver file as a storage driver.

The agent never imports a driver file to learn what it declares: it reads the decorator's
arguments from the syntax tree (storage_driver_sdk.scan). So the arguments must be
literals (strings, numbers, booleans, lists, `DeviceType.X`, `MinimumPlatform(...)` with literal
arguments); the checks below run again when a driver host imports the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from storage_driver_sdk.devices import ALL_DEVICE_TYPES, DeviceType

METADATA_ATTRIBUTE: Final = "__storage_driver__"

# The same shapes the StorageDriver resource accepts (storage_driver_api), repeated here because
# the SDK depends on nothing but the standard library.
DRIVER_NAME: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9 ._+-]*[A-Za-z0-9+])?$")
DRIVER_NAME_MAX: Final = 128
SEMVER: Final = re.compile(
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?"
    r"(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)
KERNEL_VERSION: Final = re.compile(r"^[0-9]+(\.[0-9]+){0,3}$")
DESCRIPTION_MAX: Final = 1024


class DriverDeclarationError(ValueError):
    """A `@storage_driver(...)` argument is invalid; the message names the argument and the fix."""


@dataclass(frozen=True)
class MinimumPlatform:
    """The platform a node must have to run the driver.

    kernel: lowest kernel version, inclusive ("5.10"); kernel_below: exclusive upper bound;
    os: operating system ("linux"); architectures: allowed architectures ("amd64", "arm64").
    """

    kernel: str | None = None
    kernel_below: str | None = None
    os: str | None = None
    architectures: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name in ("kernel", "kernel_below"):
            value = getattr(self, name)
            if value is not None and not KERNEL_VERSION.match(str(value)):
                raise DriverDeclarationError(
                    f"minimum_platform.{name}: {value!r} is not a kernel version; write it like '5.10'"
                )
        if self.kernel and self.kernel_below and _numbers(self.kernel) >= _numbers(self.kernel_below):
            raise DriverDeclarationError(
                f"minimum_platform.kernel_below: {self.kernel_below} must be greater than kernel {self.kernel}"
            )
        if self.os is not None and not re.fullmatch(r"[a-z0-9]+", self.os):
            raise DriverDeclarationError(
                f"minimum_platform.os: {self.os!r} must be lowercase letters and digits, e.g. 'linux'"
            )
        # A list is friendlier to write; keep the value hashable.
        object.__setattr__(self, "architectures", tuple(self.architectures))
        for arch in self.architectures:
            if not re.fullmatch(r"[a-z0-9_]+", arch):
                raise DriverDeclarationError(
                    f"minimum_platform.architectures: {arch!r} must look like 'amd64' or 'arm64'"
                )


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True)
class DriverMetadata:
    """What a driver declares about itself; the same fields as the StorageDriver resource."""

    name: str
    version: str | None = None
    supported_devices: tuple[DeviceType, ...] = ()
    description: str = ""
    minimum_platform: MinimumPlatform | None = None
    auto_load: bool = True
    class_name: str = field(default="", compare=False)


def check_declaration(
    name: object,
    *,
    version: object = None,
    supported_devices: object = (),
    description: object = "",
    minimum_platform: object = None,
    auto_load: object = True,
) -> DriverMetadata:
    """Validated metadata, or DriverDeclarationError naming the first bad argument."""
    if not isinstance(name, str) or not name:
        raise DriverDeclarationError("name: the first argument must be a non-empty string, e.g. 'Loop Info'")
    if len(name) > DRIVER_NAME_MAX or not DRIVER_NAME.match(name):
        raise DriverDeclarationError(
            f"name: {name!r} must be at most {DRIVER_NAME_MAX} characters of letters, digits, "
            "spaces and . _ + -, starting and ending with a letter or digit"
        )
    if version is not None and (not isinstance(version, str) or not SEMVER.match(version)):
        raise DriverDeclarationError(f"version: {version!r} is not a semantic version; write it like '1.2.0'")
    devices = _device_types(supported_devices)
    if not isinstance(description, str) or len(description) > DESCRIPTION_MAX:
        raise DriverDeclarationError(f"description: must be a string of at most {DESCRIPTION_MAX} characters")
    if minimum_platform is not None and not isinstance(minimum_platform, MinimumPlatform | str):
        raise DriverDeclarationError(
            "minimum_platform: pass MinimumPlatform(kernel='5.10', os='linux', architectures=['amd64']) "
            "or a kernel version string such as '5.10'"
        )
    platform = (
        MinimumPlatform(kernel=minimum_platform) if isinstance(minimum_platform, str) else minimum_platform
    )
    if not isinstance(auto_load, bool):
        raise DriverDeclarationError(f"auto_load: {auto_load!r} must be True or False")
    return DriverMetadata(
        name=name,
        version=version,
        supported_devices=devices,
        description=description,
        minimum_platform=platform,
        auto_load=auto_load,
    )


def _device_types(value: object) -> tuple[DeviceType, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise DriverDeclarationError(
            "supported_devices: pass a list of device types, e.g. [DeviceType.LOOP, DeviceType.VIRTIO_BLOCK]"
        )
    result: list[DeviceType] = []
    for item in value:
        if item not in ALL_DEVICE_TYPES:
            raise DriverDeclarationError(
                f"supported_devices: unknown device type {item!r}; use one of {', '.join(ALL_DEVICE_TYPES)}"
            )
        device_type = DeviceType(item)
        if device_type in result:
            raise DriverDeclarationError(f"supported_devices: {device_type.value} is listed twice")
        result.append(device_type)
    return tuple(result)


C = TypeVar("C", bound=type)


def storage_driver(
    name: str,
    *,
    version: str | None = None,
    supported_devices: Iterable[DeviceType | str] = (),
    description: str = "",
    minimum_platform: MinimumPlatform | str | None = None,
    auto_load: bool = True,
) -> Callable[[C], C]:
    """Mark a class as a storage driver.

        @storage_driver("Loop Info", version="1.0.0", supported_devices=[DeviceType.LOOP])
        class LoopInfo:
            def start(self, config): ...
            def attach(self, device): ...
            def detach(self, device): ...
            def health(self): ...
            def stop(self): ...

    Write every argument as a literal: the agent reads them without importing the file.
    """
    metadata = check_declaration(
        name,
        version=version,
        supported_devices=supported_devices
        if isinstance(supported_devices, str)
        else tuple(supported_devices),
        description=description,
        minimum_platform=minimum_platform,
        auto_load=auto_load,
    )

    def mark(cls: C) -> C:
        if not isinstance(cls, type):
            raise DriverDeclarationError(f"@storage_driver({name!r}) must decorate a class")
        missing = [
            method
            for method in ("start", "attach", "detach", "stop")
            if not callable(getattr(cls, method, None))
        ]
        if missing:
            raise DriverDeclarationError(
                f"{cls.__name__}: a storage driver needs the methods start, attach, detach and stop "
                f"(health is optional); missing: {', '.join(missing)}"
            )
        setattr(cls, METADATA_ATTRIBUTE, _with_class(metadata, cls.__name__))
        return cls

    return mark


def _with_class(metadata: DriverMetadata, class_name: str) -> DriverMetadata:
    return DriverMetadata(
        name=metadata.name,
        version=metadata.version,
        supported_devices=metadata.supported_devices,
        description=metadata.description,
        minimum_platform=metadata.minimum_platform,
        auto_load=metadata.auto_load,
        class_name=class_name,
    )


def driver_metadata(cls: type) -> DriverMetadata | None:
    """The metadata `@storage_driver` attached to a class, or None for an undecorated class."""
    value = getattr(cls, METADATA_ATTRIBUTE, None)
    return value if isinstance(value, DriverMetadata) else None
