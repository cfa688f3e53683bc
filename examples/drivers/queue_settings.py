"""Queue Settings Driver: applies block-queue settings from `config` to every device it attaches
(for example `read_ahead_kb: 1024`) through sysfs, and restores the previous values on detach.

    config:
      read_ahead_kb: 1024
      scheduler: mq-deadline

Allowed settings are the files in /sys/block/<dev>/queue listed in SETTINGS. A value the kernel
refuses fails the attach, and the settings already applied to that device are rolled back.
`sysfsRoot` (default /sys) lets it run in a container that mounts the host's sysfs elsewhere.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

from storage_driver_sdk import Device, DeviceType, MinimumPlatform, storage_driver

log = logging.getLogger("queue_settings")

SETTINGS = (
    "read_ahead_kb",
    "nr_requests",
    "scheduler",
    "rq_affinity",
    "nomerges",
    "max_sectors_kb",
    "add_random",
    "iostats",
    "wbt_lat_usec",
)


def read_setting(path: Path) -> str:
    text = path.read_text().strip()
    if path.name == "scheduler":
        # "none [mq-deadline] kyber": the bracketed entry is the active one.
        active = re.search(r"\[([^\]]+)\]", text)
        return active.group(1) if active else text
    return text


@storage_driver(
    "Queue Settings Driver",
    version="1.1.0",
    supported_devices=[
        DeviceType.VIRTIO_BLOCK,
        DeviceType.SCSI_DISK,
        DeviceType.NVME_NAMESPACE,
        DeviceType.LOOP,
    ],
    description="Sets block queue settings such as read_ahead_kb on the disks it binds, and restores them.",
    minimum_platform=MinimumPlatform(kernel="4.19", os="linux"),
)
class QueueSettingsDriver:
    def __init__(self) -> None:
        self.sysfs_root = Path("/sys")
        self.settings: dict[str, str] = {}
        self.previous: dict[str, dict[str, str]] = {}  # device -> setting -> value before attach
        self.queues: dict[str, Path] = {}
        self.lock = threading.Lock()

    def start(self, config: dict[str, Any]) -> None:
        config = dict(config)
        self.sysfs_root = Path(str(config.pop("sysfsRoot", "/sys")))
        unknown = sorted(set(config) - set(SETTINGS))
        if unknown:
            raise ValueError(
                f"config: unknown queue setting(s) {', '.join(unknown)}; allowed: {', '.join(SETTINGS)}"
            )
        if not config:
            raise ValueError(
                f"config: name at least one queue setting to apply, e.g. read_ahead_kb ({', '.join(SETTINGS)})"
            )
        for key, value in config.items():
            if not isinstance(value, int | str) or isinstance(value, bool):
                raise ValueError(f"config.{key}: {value!r} must be a number or a string")
        self.settings = {key: str(value) for key, value in config.items()}

    def _queue_dir(self, device: Device) -> Path:
        sys_path = Path(device.sys_path)
        if sys_path.is_relative_to("/sys"):
            sys_path = self.sysfs_root / sys_path.relative_to("/sys")
        return sys_path / "queue"

    def attach(self, device: Device) -> dict[str, str]:
        queue = self._queue_dir(device)
        if not queue.is_dir():
            raise ValueError(
                f"{device.name}: {queue} does not exist; not a block device with a request queue"
            )
        previous: dict[str, str] = {}
        facts: dict[str, str] = {}
        try:
            for key, value in self.settings.items():
                path = queue / key
                old = read_setting(path)
                path.write_text(value)
                previous[key] = old
                new = read_setting(path)
                if new != value:
                    raise ValueError(f"{key}: wrote {value!r} but the kernel reports {new!r}")
                facts[key] = f"{old} -> {new}"
        except (OSError, ValueError):
            self._restore(queue, previous)
            raise
        with self.lock:
            self.previous[device.name] = previous
            self.queues[device.name] = queue
        log.info(
            "applied %s to %s", ", ".join(f"{k}={v}" for k, v in self.settings.items()), device.kernel_name
        )
        return facts

    def _restore(self, queue: Path, previous: dict[str, str]) -> list[str]:
        errors = []
        for key, old in reversed(list(previous.items())):
            try:
                (queue / key).write_text(old)
            except OSError as exc:
                errors.append(f"{key}={old}: {exc}")
        return errors

    def detach(self, device: Device) -> None:
        with self.lock:
            previous = self.previous.pop(device.name, {})
            queue = self.queues.pop(device.name, None)
        if queue is None:
            return
        errors = self._restore(queue, previous)
        if errors:
            raise OSError(f"{device.name}: could not restore {'; '.join(errors)}")
        log.info("restored %s on %s", ", ".join(f"{k}={v}" for k, v in previous.items()), device.kernel_name)

    def health(self) -> dict[str, Any]:
        with self.lock:
            queues = dict(self.queues)
        drifted = []
        for name, queue in queues.items():
            for key, value in self.settings.items():
                try:
                    if read_setting(queue / key) != value:
                        drifted.append(f"{name}:{key}")
                except OSError:
                    drifted.append(f"{name}:{key} (unreadable)")
        if drifted:
            return {"healthy": False, "message": f"settings changed underneath: {', '.join(drifted)}"}
        return {"healthy": True, "message": ""}

    def stop(self) -> None:
        # The host detaches every device before stop(); restore anything left as a safety net.
        with self.lock:
            leftovers = [(self.queues[name], self.previous[name]) for name in self.queues]
            self.queues.clear()
            self.previous.clear()
        for queue, previous in leftovers:
            self._restore(queue, previous)
