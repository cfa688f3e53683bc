"""What a driver implements (the Driver protocol) and what it is handed (Device)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from storage_driver_sdk.devices import DeviceType

# JSON values a driver may return from attach() and health(); anything else is turned into a string.
Facts = Mapping[str, Any]


@dataclass(frozen=True)
class Device:
    """A storage device the agent asks a driver to bind, with the facts its NodeDevice publishes.

    `spec` holds every field of the NodeDevice's spec as published (camelCase keys, e.g.
    `logicalBlockSize`, `udev`); the common ones are attributes.
    """

    name: str  # the NodeDevice's name
    type: DeviceType
    kernel_name: str
    sys_path: str
    dev_path: str | None = None
    size_bytes: int | None = None
    spec: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sysfs(self) -> Path:
        """The device's sysfs directory, e.g. /sys/devices/virtual/block/loop3."""
        return Path(self.sys_path)

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any]) -> Device:
        """A Device from a NodeDevice name and its spec (camelCase, as in the API)."""
        size = spec.get("sizeBytes")
        return cls(
            name=name,
            type=DeviceType(spec["type"]),
            kernel_name=str(spec.get("kernelName", "")),
            sys_path=str(spec.get("sysPath", "")),
            dev_path=spec.get("devPath"),
            size_bytes=int(size) if size is not None else None,
            spec=dict(spec),
        )

    def to_message(self) -> dict[str, Any]:
        return {"name": self.name, "spec": dict(self.spec)}

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Device:
        return cls.from_spec(str(message["name"]), message["spec"])


@runtime_checkable
class Driver(Protocol):
    """The methods a storage driver class implements. The driver host calls them one at a time,
    always from the same thread, in this order: start, then attach/detach/health any number of
    times, then stop.

    - start(config): `config` is the StorageDriver's `spec.config` (a dict). Raise to fail the load.
    - attach(device): bind the device; return facts about it (a dict of JSON values, shown in the
      NodeDriverConfig status) or None. Raise to refuse the device; the driver stays loaded.
    - detach(device): release the device; undo what attach changed.
    - health(): optional; return True/None (healthy), False, or {"healthy": bool, "message": str}.
    - stop(): release everything; the host exits afterwards. It must return within the
      StorageDriver's unloadGracePeriodSeconds, or the host is terminated, then killed.
    """

    def start(self, config: Mapping[str, Any]) -> None: ...

    def attach(self, device: Device) -> Facts | None: ...

    def detach(self, device: Device) -> None: ...

    def stop(self) -> None: ...
