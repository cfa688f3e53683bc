"""Does a node match a StorageDriver, and if not, why: one pure function, `match_node`.

A node must run a driver when it is selected by `nodeSelector`, meets `minimumPlatform`, opts in
(for `autoLoad: false`), has at least one present NodeDevice of a supported type that passes
every `deviceSelector` requirement, and can obtain the driver file. The checks run in that
order and the first that fails names the reason, so every non-match has exactly one reason.

A hostPath file's declaration, as the node's agent reports it in `status.available`, takes
part: its `minimum_platform` applies besides the spec's; its `auto_load` and `supported_devices`
stand in for `autoLoad` and `supportedDevices` when the spec leaves them unset; and when the
spec lists device types, only those the file also declares are bound.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

from storage_driver_api.constants import opt_in_label
from storage_driver_api.meta import LabelSelector, SelectorOperator
from storage_driver_api.storagedriver import (
    DeviceSelectorOperator,
    DeviceSelectorRequirement,
    MinimumPlatform,
    StorageDriverSpec,
    kernel_tuple,
    selector_pattern,
)

from storage_driver_operator.views import AvailableFile, DeviceView, NodeView


class Reason(StrEnum):
    """Why a driver does (Matched) or does not run on a node; shown in status and `sdctl plan`."""

    MATCHED = "Matched"
    NODE_NOT_SELECTED = "NodeNotSelected"
    PLATFORM_TOO_OLD = "PlatformTooOld"
    PLATFORM_TOO_NEW = "PlatformTooNew"
    PLATFORM_UNKNOWN = "PlatformUnknown"
    UNSUPPORTED_OS = "UnsupportedOS"
    UNSUPPORTED_ARCHITECTURE = "UnsupportedArchitecture"
    NOT_OPTED_IN = "NotOptedIn"
    NO_MATCHING_DEVICES = "NoMatchingDevices"
    DRIVER_NOT_AVAILABLE = "DriverNotAvailable"
    # Decided after matching, by desired state:
    CAPACITY_EXCEEDED = "CapacityExceeded"
    INVALID_SPEC = "InvalidSpec"
    DELETING = "Deleting"
    DELETED = "StorageDriverDeleted"


@dataclass(frozen=True, slots=True)
class Match:
    """The outcome for one driver on one node.

    `devices` are the present matching NodeDevices (also filled when the file is missing, so
    that a node keeping an older entry still gets its device list). `absent_since` is, when no
    matching device is present, the latest removal time among matching devices that are marked
    absent: the moment the node last had a matching device.
    """

    reason: Reason
    message: str
    devices: tuple[str, ...] = ()
    absent_since: float | None = None
    # The spec leaves supportedDevices to the file and the node has not scanned one: whether
    # the node has hardware for the driver is unknown.
    hardware_unknown: bool = False

    @property
    def matched(self) -> bool:
        return self.reason == Reason.MATCHED

    @property
    def has_hardware(self) -> bool:
        """Node, platform, opt-in and devices match (the file may still be missing)."""
        return self.reason in (Reason.MATCHED, Reason.DRIVER_NOT_AVAILABLE) and not self.hardware_unknown


# --- node selector -------------------------------------------------------------------------


def selects(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; an unset or empty selector selects every node."""
    if selector is None:
        return True
    for key, wanted in selector.match_labels.items():
        if labels.get(key) != wanted:
            return False
    for requirement in selector.match_expressions:
        present = requirement.key in labels
        value = labels.get(requirement.key)
        op = requirement.operator
        if op == SelectorOperator.IN and value not in requirement.values:
            return False
        if op == SelectorOperator.NOT_IN and present and value in requirement.values:
            return False
        if op == SelectorOperator.EXISTS and not present:
            return False
        if op == SelectorOperator.DOES_NOT_EXIST and present:
            return False
    return True


# --- platform ------------------------------------------------------------------------------


def platform_mismatch(minimum: MinimumPlatform | None, node: NodeView) -> tuple[Reason, str] | None:
    if minimum is None:
        return None
    if minimum.os and node.operating_system != minimum.os:
        return Reason.UNSUPPORTED_OS, (
            f"node runs {node.operating_system or 'an unreported OS'}; the driver needs {minimum.os}"
        )
    if minimum.architectures and node.architecture not in minimum.architectures:
        return Reason.UNSUPPORTED_ARCHITECTURE, (
            f"node architecture {node.architecture or '(unreported)'} is not one of "
            f"{', '.join(minimum.architectures)}"
        )
    kernel_range = minimum.kernel_version
    if kernel_range and (kernel_range.at_least or kernel_range.below):
        try:
            kernel = kernel_tuple(node.kernel_version)
        except ValueError:
            return Reason.PLATFORM_UNKNOWN, (
                f"node kernel version {node.kernel_version!r} cannot be compared with the driver's range"
            )
        if kernel_range.at_least and kernel < kernel_tuple(kernel_range.at_least):
            return Reason.PLATFORM_TOO_OLD, (
                f"kernel {node.kernel_version} is older than {kernel_range.at_least}"
            )
        if kernel_range.below and kernel >= kernel_tuple(kernel_range.below):
            return Reason.PLATFORM_TOO_NEW, (
                f"kernel {node.kernel_version} is not below {kernel_range.below}"
            )
    return None


# --- devices -------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _pattern(expression: str) -> Any:
    return selector_pattern(expression)  # RE2: linear time, whatever a StorageDriver's author wrote


def _integer(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def requirement_matches(requirement: DeviceSelectorRequirement, attributes: Mapping[str, str]) -> bool:
    """One deviceSelector requirement against a device's attributes (as strings).

    NotIn and DoesNotExist match a device that lacks the attribute, as in label selectors;
    Gt, Lt and Regex never match a missing attribute.
    """
    value = attributes.get(requirement.key)
    op = requirement.operator
    if op == DeviceSelectorOperator.IN:
        return value is not None and value in requirement.values
    if op == DeviceSelectorOperator.NOT_IN:
        return value is None or value not in requirement.values
    if op == DeviceSelectorOperator.EXISTS:
        return value is not None
    if op == DeviceSelectorOperator.DOES_NOT_EXIST:
        return value is None
    if op in (DeviceSelectorOperator.GT, DeviceSelectorOperator.LT):
        number, bound = _integer(value), _integer(requirement.values[0])
        if number is None or bound is None:
            return False
        return number > bound if op == DeviceSelectorOperator.GT else number < bound
    # Regex (the last operator)
    return value is not None and _pattern(requirement.values[0]).fullmatch(value) is not None


def device_matches(types: Collection[str], spec: StorageDriverSpec, device: DeviceView) -> bool:
    """The device is of one of `types` (the spec's supportedDevices, or what the file declares)
    and passes every deviceSelector requirement."""
    if device.type not in types:
        return False
    return all(requirement_matches(r, device.attributes) for r in spec.device_selector)


# --- obtaining the file --------------------------------------------------------------------


def source_unavailable(spec: StorageDriverSpec, available: Mapping[str, AvailableFile] | None) -> str | None:
    """Why the node cannot obtain the driver file, or None when it can.

    configMap and url sources are fetched by the agent; a hostPath file must already be listed
    in the node's `status.available`, without a scan error, with the pinned sha256 if any, and
    declaring the spec's driver name and version (the agent refuses to load it otherwise).
    """
    source = spec.source.host_path
    if source is None:
        return None
    path = source.path
    if available is None:
        return f"the node's agent has not reported its driver directory yet (needs {path})"
    found = available.get(path)
    if found is None:
        return f"{path} is not in the node's driver directory"
    if found.error:
        return f"{path} cannot be used: {found.error}"
    if source.sha256 and found.sha256 != source.sha256:
        return f"{path} has sha256 {found.sha256 or '(unknown)'}, the StorageDriver pins {source.sha256}"
    if found.driver_name is not None and found.driver_name != spec.driver_name:
        return f"{path} declares driver {found.driver_name!r}, the StorageDriver names {spec.driver_name!r}"
    if found.version is not None and found.version != spec.version:
        return f"{path} declares version {found.version}, the StorageDriver asks for {spec.version}"
    return None


# --- the whole decision --------------------------------------------------------------------


def scanned_file(
    spec: StorageDriverSpec, available: Mapping[str, AvailableFile] | None
) -> AvailableFile | None:
    """The hostPath file as the node reports it, when the agent could read its declaration."""
    if spec.source.host_path is None or available is None:
        return None
    found = available.get(spec.source.host_path.path)
    return found if found is not None and not found.error else None


def declared_types(spec: StorageDriverSpec, available: Mapping[str, AvailableFile] | None) -> frozenset[str]:
    """The device types a hostPath file's decorator declares (empty: it declares none, or the
    source is fetched by the agent and so not scanned before it is wanted)."""
    found = scanned_file(spec, available)
    return frozenset(found.supported_devices) if found is not None else frozenset()


def _list(names: Iterable[str], limit: int = 5) -> str:
    items = sorted(names)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def match_node(
    driver_name: str,
    spec: StorageDriverSpec,
    node: NodeView,
    devices: Iterable[DeviceView],
    available: Mapping[str, AvailableFile] | None,
) -> Match:
    """Whether `node` must run the driver `driver_name` (the StorageDriver's object name)."""
    if not selects(spec.node_selector, node.labels):
        return Match(Reason.NODE_NOT_SELECTED, "node labels do not match nodeSelector")
    mismatch = platform_mismatch(spec.minimum_platform, node)
    if mismatch is not None:
        return Match(*mismatch)
    path = spec.source.host_path.path if spec.source.host_path else "the driver file"
    missing = source_unavailable(spec, available)
    scanned = scanned_file(spec, available)
    # What the file declares takes effect only for the file the node would load.
    declared = scanned if missing is None else None
    if declared is not None:
        mismatch = platform_mismatch(declared.minimum_platform, node)
        if mismatch is not None:
            return Match(mismatch[0], f"{path} declares minimum_platform: {mismatch[1]}")
    if spec.auto_load is not None:
        auto_load, said = spec.auto_load, "autoLoad is false"
    else:
        auto_load = declared.auto_load if declared is not None else True
        said = f"autoLoad is unset, {path} declares auto_load=False,"
    if not auto_load and node.labels.get(opt_in_label(driver_name)) != "true":
        return Match(
            Reason.NOT_OPTED_IN,
            f"{said} and the node lacks the label {opt_in_label(driver_name)}=true",
        )
    if spec.supported_devices is not None:
        types: Collection[str] = spec.supported_devices
    elif scanned is not None and scanned.supported_devices:
        types = scanned.supported_devices
    elif scanned is not None:
        return Match(
            Reason.DRIVER_NOT_AVAILABLE,
            f"supportedDevices is unset and {path} declares no supported_devices: "
            "list the device types in one of them",
        )
    else:
        # Unset, and the file not scanned: which devices it would bind is unknown.
        return Match(Reason.DRIVER_NOT_AVAILABLE, missing or path, hardware_unknown=True)
    present: list[str] = []
    present_views: list[DeviceView] = []
    absent_since: float | None = None
    absent = 0
    for device in devices:
        if not device_matches(types, spec, device):
            continue
        if device.present:
            present.append(device.name)
            present_views.append(device)
        else:
            absent += 1
            if device.since is not None and (absent_since is None or device.since > absent_since):
                absent_since = device.since
    if not present:
        wanted = ", ".join(types)
        detail = f" ({absent} matching device(s) marked absent)" if absent else ""
        selector = " passing deviceSelector" if spec.device_selector else ""
        return Match(
            Reason.NO_MATCHING_DEVICES,
            f"no present {wanted} device{selector}{detail}",
            absent_since=absent_since,
        )
    devices_found = tuple(sorted(present))
    if missing is not None:
        return Match(Reason.DRIVER_NOT_AVAILABLE, missing, devices=devices_found)
    declared_set = declared_types(spec, available)
    note = ""
    if declared_set:
        type_of = {d.name: d.type for d in present_views}
        undeclared = sorted({type_of[n] for n in devices_found if type_of[n] not in declared_set})
        if undeclared:
            said = (
                f"{path} declares supported devices {', '.join(sorted(declared_set))}, "
                f"not {', '.join(undeclared)}"
            )
            devices_found = tuple(n for n in devices_found if type_of[n] in declared_set)
            if not devices_found:
                return Match(
                    Reason.DRIVER_NOT_AVAILABLE,
                    f"{said} (the StorageDriver's supportedDevices asks for it)",
                    devices=tuple(sorted(present)),
                )
            note = f"; not binding {_list(sorted(set(present) - set(devices_found)))}: {said}"
    return Match(
        Reason.MATCHED,
        f"{len(devices_found)} matching device(s): {_list(devices_found)}{note}",
        devices=devices_found,
    )
