"""Invalid StorageDrivers, shared by the unit tests (the models refuse them) and the
integration tests (the control plane rejects them)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return loaded


def valid_storage_driver() -> dict[str, Any]:
    return example("storagedriver-queue-settings.yaml")


@dataclass(frozen=True)
class InvalidCase:
    id: str
    spec_changes: dict[str, Any]  # merged into a valid spec; None deletes the key
    field: str  # the field the error must name
    schema_rejects: bool  # False: only the models (and so the operator) can catch it


def apply_changes(spec: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(spec)
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


INVALID_CASES = [
    InvalidCase("version-not-semver", {"version": "1.0"}, "spec.version", True),
    InvalidCase("version-leading-zero", {"version": "01.2.3"}, "spec.version", True),
    InvalidCase("unknown-device-type", {"supportedDevices": ["floppy"]}, "spec.supportedDevices", True),
    InvalidCase("no-device-types", {"supportedDevices": []}, "spec.supportedDevices", True),
    InvalidCase(
        "duplicate-device-types", {"supportedDevices": ["loop", "loop"]}, "spec.supportedDevices", True
    ),
    InvalidCase(
        "device-types-unset-for-url",
        {
            "supportedDevices": None,
            "source": {"url": {"url": "https://example.com/d.py", "sha256": "a" * 64}},
        },
        "spec.supportedDevices",
        False,
    ),
    InvalidCase("missing-driver-name", {"driverName": None}, "spec.driverName", True),
    InvalidCase("driver-name-too-long", {"driverName": "x" * 129}, "spec.driverName", True),
    InvalidCase(
        "selector-unknown-operator",
        {"deviceSelector": [{"key": "model", "operator": "Like", "values": ["x"]}]},
        "spec.deviceSelector[0].operator",
        True,
    ),
    InvalidCase(
        "selector-unknown-attribute",
        {"deviceSelector": [{"key": "colour", "operator": "Exists"}]},
        "spec.deviceSelector[0].key",
        True,
    ),
    InvalidCase(
        "too-many-selector-values",
        {"deviceSelector": [{"key": "model", "operator": "In", "values": [str(i) for i in range(65)]}]},
        "spec.deviceSelector[0].values",
        True,
    ),
    InvalidCase(
        "url-without-sha256",
        {"source": {"url": {"url": "https://example.com/d.py"}}},
        "spec.source.url.sha256",
        True,
    ),
    InvalidCase(
        "url-bad-sha256",
        {"source": {"url": {"url": "https://example.com/d.py", "sha256": "ABC"}}},
        "spec.source.url.sha256",
        True,
    ),
    InvalidCase(
        "two-sources",
        {"source": {"hostPath": {"path": "a.py"}, "url": {"url": "https://e.com/a.py", "sha256": "a" * 64}}},
        "spec.source",
        True,
    ),
    InvalidCase("no-source", {"source": {}}, "spec.source", True),
    InvalidCase(
        "path-escapes-directory",
        {"source": {"hostPath": {"path": "../etc/passwd"}}},
        "spec.source.hostPath.path",
        True,
    ),
    InvalidCase(
        "absolute-path", {"source": {"hostPath": {"path": "/etc/passwd"}}}, "spec.source.hostPath.path", True
    ),
    InvalidCase(
        "negative-grace-period", {"unloadGracePeriodSeconds": -1}, "spec.unloadGracePeriodSeconds", True
    ),
    InvalidCase(
        "grace-period-too-long", {"unloadGracePeriodSeconds": 86400}, "spec.unloadGracePeriodSeconds", True
    ),
    InvalidCase("priority-out-of-range", {"priority": 5000}, "spec.priority", True),
    InvalidCase(
        "kernel-version-not-a-version",
        {"minimumPlatform": {"kernelVersion": {"atLeast": "five"}}},
        "spec.minimumPlatform.kernelVersion.atLeast",
        True,
    ),
    # What a 1.20 schema cannot express: the operator parses with the models and marks the
    # StorageDriver InvalidSpec naming the field.
    InvalidCase(
        "gt-needs-integer",
        {"deviceSelector": [{"key": "sizeBytes", "operator": "Gt", "values": ["1G"]}]},
        "spec.deviceSelector[0].values",
        False,
    ),
    InvalidCase(
        "regex-does-not-compile",
        {"deviceSelector": [{"key": "model", "operator": "Regex", "values": ["Samsung("]}]},
        "spec.deviceSelector[0].values",
        False,
    ),
    InvalidCase(
        "regex-backreference",  # RE2 (linear time) has no backreferences
        {"deviceSelector": [{"key": "model", "operator": "Regex", "values": ["(a)\\1"]}]},
        "spec.deviceSelector[0].values",
        False,
    ),
    InvalidCase(
        "in-without-values",
        {"deviceSelector": [{"key": "model", "operator": "In"}]},
        "spec.deviceSelector[0].values",
        False,
    ),
    InvalidCase(
        "exists-with-values",
        {"deviceSelector": [{"key": "model", "operator": "Exists", "values": ["x"]}]},
        "spec.deviceSelector[0].values",
        False,
    ),
    InvalidCase(
        "kernel-range-reversed",
        {"minimumPlatform": {"kernelVersion": {"atLeast": "6.1", "below": "5.10"}}},
        "spec.minimumPlatform.kernelVersion.below",
        False,
    ),
    InvalidCase("max-unavailable-not-a-percentage", {"maxUnavailable": "lots"}, "spec.maxUnavailable", False),
    InvalidCase("config-too-large", {"config": {"blob": "x" * 20000}}, "spec.config", False),
]
