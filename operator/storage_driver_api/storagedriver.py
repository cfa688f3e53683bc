"""StorageDriver: which driver to run, on which nodes, for which devices. Written by users;
status written by the operator."""

from __future__ import annotations

import functools
import json
import re
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator
from storage_driver_sdk.devices import DeviceType

from storage_driver_api.meta import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    SEMVER,
    SHA256,
    ApiModel,
    Condition,
    LabelSelector,
    map_list,
)

# Device attributes a deviceSelector can test; `udev.<PROPERTY>` reads a whitelisted udev property.
DEVICE_ATTRIBUTES = (
    "vendor",
    "model",
    "serial",
    "wwn",
    "firmware",
    "sizeBytes",
    "rotational",
    "removable",
    "readOnly",
    "logicalBlockSize",
    "transport",
    "pciAddress",
    "kernelDriver",
    "devPath",
    "parent",
)
DEVICE_ATTRIBUTE_KEY = r"^(" + "|".join(DEVICE_ATTRIBUTES) + r"|udev\.[A-Z0-9_]{1,64})$"
KERNEL_VERSION = r"^[0-9]+(\.[0-9]+){0,3}$"
DRIVER_NAME = r"^[A-Za-z0-9]([A-Za-z0-9 ._+-]*[A-Za-z0-9+])?$"
RELATIVE_PATH = r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*$"
CONFIG_MAX_BYTES = 16 * 1024
MAX_UNLOAD_DELAY_SECONDS = 86400


@functools.cache
def _re2_options() -> Any:
    # Imported on first use: the agent, which imports this module but never compiles a
    # selector, would carry RE2 and the C++ runtime it loads (~1.8 MB resident) for nothing.
    import re2

    options = re2.Options()
    options.log_errors = False  # a refused expression is reported to the user, not logged by RE2
    return options


def selector_pattern(expression: str) -> Any:
    """A deviceSelector Regex, compiled with RE2: matching takes time linear in the attribute's
    length whatever the expression (Python's `re` backtracks: `(a|aa)+b` against 40 characters
    takes minutes, and the operator plans every node in one loop). Raises ValueError, naming
    what RE2 refused (backreferences and lookaround, which only backtracking can do)."""
    import re2

    try:
        return re2.compile(expression, options=_re2_options())
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(
            f"{expression!r} is not a valid regular expression (RE2 syntax: no backreferences or "
            f"lookaround): {reason}"
        ) from exc


class DeviceSelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"
    GT = "Gt"
    LT = "Lt"
    REGEX = "Regex"


class DeviceSelectorRequirement(ApiModel):
    """A test on one device attribute. A device matches when it passes every requirement."""

    key: str = Field(
        max_length=80,
        pattern=DEVICE_ATTRIBUTE_KEY,
        description="Device attribute to test: one of "
        + ", ".join(DEVICE_ATTRIBUTES)
        + ", or udev.<PROPERTY> "
        "for a udev property the agent publishes (for example udev.ID_BUS).",
    )
    operator: DeviceSelectorOperator = Field(
        description="In / NotIn: the attribute equals one of / none of values. Exists / DoesNotExist: the "
        "attribute is set / unset (no values). Gt / Lt: the integer attribute is greater / less than the "
        "single value. Regex: the attribute matches the single value, a regular expression (full match)."
    )
    values: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list,
        max_length=64,
        description="Operands; booleans are written 'true' or 'false', sizes in bytes.",
    )

    @model_validator(mode="after")
    def _values_fit_operator(self) -> Self:
        op = self.operator
        if op in (DeviceSelectorOperator.IN, DeviceSelectorOperator.NOT_IN) and not self.values:
            raise ValueError(f"values: operator {op} needs at least one value")
        if op in (DeviceSelectorOperator.EXISTS, DeviceSelectorOperator.DOES_NOT_EXIST) and self.values:
            raise ValueError(f"values: operator {op} takes no values; remove them")
        if op in (DeviceSelectorOperator.GT, DeviceSelectorOperator.LT, DeviceSelectorOperator.REGEX):
            if len(self.values) != 1:
                raise ValueError(f"values: operator {op} takes exactly one value, got {len(self.values)}")
            if op != DeviceSelectorOperator.REGEX and not re.fullmatch(r"-?[0-9]+", self.values[0]):
                raise ValueError(f"values: operator {op} needs an integer, got {self.values[0]!r}")
            if op == DeviceSelectorOperator.REGEX:
                try:
                    selector_pattern(self.values[0])
                except ValueError as exc:
                    raise ValueError(f"values: {exc}") from exc
        return self


class KernelVersionRange(ApiModel):
    """A range of kernel versions, compared numerically on the leading dotted numbers of
    Node.status.nodeInfo.kernelVersion (6.1.0-18-amd64 is 6.1.0)."""

    at_least: str | None = Field(
        default=None,
        max_length=32,
        pattern=KERNEL_VERSION,
        description="Lowest kernel version allowed, inclusive.",
    )
    below: str | None = Field(
        default=None,
        max_length=32,
        pattern=KERNEL_VERSION,
        description="Kernel versions from this one up are not allowed (exclusive upper bound).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.at_least and self.below and kernel_tuple(self.at_least) >= kernel_tuple(self.below):
            raise ValueError(f"below: {self.below} must be greater than atLeast {self.at_least}")
        return self


def kernel_tuple(version: str) -> tuple[int, int, int, int]:
    """The first four numbers of a kernel version string, zero-padded: '6.1.0-18-amd64' -> (6, 1, 0, 0)."""
    match = re.match(r"^\s*v?([0-9]+(?:\.[0-9]+){0,3})", version)
    if not match:
        raise ValueError(f"{version!r} is not a kernel version")
    numbers = [int(n) for n in match.group(1).split(".")]
    padded = [*numbers, 0, 0, 0, 0][:4]
    return padded[0], padded[1], padded[2], padded[3]


class MinimumPlatform(ApiModel):
    """The platform a node must have, checked against Node.status.nodeInfo."""

    kernel_version: KernelVersionRange | None = Field(default=None, description="Kernel version range.")
    os: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[a-z0-9]+$",
        description="Operating system (nodeInfo.operatingSystem), for example linux.",
    )
    architectures: list[Annotated[str, Field(max_length=32, pattern=r"^[a-z0-9_]+$")]] = Field(
        default_factory=list,
        max_length=16,
        description="Allowed architectures (nodeInfo.architecture), for example amd64, arm64; empty allows all.",
    )


class HostPathSource(ApiModel):
    """A driver file already present in each node's driver directory."""

    path: str = Field(
        max_length=255,
        pattern=RELATIVE_PATH,
        description="Path of the driver file (or package directory) relative to the node's driver directory; "
        "no leading '/', no '..'.",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256,
        description="If set, nodes load the file only when its sha256 (lowercase hex) matches.",
    )


class ConfigMapSource(ApiModel):
    """A driver file stored in a ConfigMap key; the agent writes it into the driver directory."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the ConfigMap.")
    namespace: str = Field(max_length=63, pattern=DNS_LABEL, description="Namespace of the ConfigMap.")
    key: str = Field(
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key whose value is the driver's Python source.",
    )
    sha256: str | None = Field(
        default=None, pattern=SHA256, description="If set, the content must have this sha256 (lowercase hex)."
    )


class UrlSource(ApiModel):
    """A driver file downloaded over HTTP(S), verified against sha256 before it is written."""

    url: str = Field(
        max_length=2048, pattern=r"^https?://[^\s]+$", description="http or https URL of the driver file."
    )
    sha256: str = Field(
        pattern=SHA256,
        description="sha256 (lowercase hex) the download must have; mandatory for a url source.",
    )


SOURCE_KINDS = ("hostPath", "configMap", "url")


class DriverSource(ApiModel):
    """Where nodes get the driver file. Exactly one of hostPath, configMap, url."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {"oneOf": [{"required": [kind]} for kind in SOURCE_KINDS]}
    }

    host_path: HostPathSource | None = Field(
        default=None, description="A file in each node's driver directory."
    )
    config_map: ConfigMapSource | None = Field(default=None, description="A key of a ConfigMap.")
    url: UrlSource | None = Field(default=None, description="A download with a mandatory sha256.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = (("hostPath", self.host_path), ("configMap", self.config_map), ("url", self.url))
        given = [kind for kind, value in chosen if value is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"exactly one of hostPath, configMap, url must be set (found: {found})")
        return self

    @property
    def kind(self) -> Literal["hostPath", "configMap", "url"]:
        if self.host_path:
            return "hostPath"
        if self.config_map:
            return "configMap"
        return "url"


class UnloadPolicy(ApiModel):
    """What an unload does with a device that is still in use on the node."""

    force: bool = Field(
        default=False,
        description="Detach a device even while it is in use (a filesystem of it, or of one of its "
        "partitions, is mounted, or another device such as device-mapper or md is built on it). When "
        "false, the node keeps the driver attached, reports UnloadBlocked with what holds the device, "
        "and retries until the device is free.",
    )


class StorageDriverSpec(ApiModel):
    """The desired state of a StorageDriver."""

    driver_name: str = Field(
        min_length=1,
        max_length=128,
        pattern=DRIVER_NAME,
        description="The name the driver file declares in its @storage_driver(...) decorator.",
    )
    version: str = Field(
        max_length=128, pattern=SEMVER, description="Semantic version of the driver, e.g. 1.2.0."
    )
    description: str = Field(default="", max_length=1024, description="What the driver does, for people.")
    supported_devices: list[DeviceType] | None = Field(
        default=None,
        min_length=1,
        max_length=len(DeviceType),
        description="Device types the driver binds: "
        + ", ".join(t.value for t in DeviceType)
        + ". Unset: the types the driver file's supported_devices declares on each node (hostPath "
        "sources only). When set, a node binds only the types its file also declares (a file that "
        "declares none is not checked).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    device_selector: list[DeviceSelectorRequirement] = Field(
        default_factory=list,
        max_length=16,
        description="Further tests a device must pass (all of them) to be bound; empty binds every device "
        "of a supported type.",
    )
    node_selector: LabelSelector | None = Field(
        default=None, description="Nodes the driver may run on; unset means every node."
    )
    minimum_platform: MinimumPlatform | None = Field(
        default=None,
        description="Kernel, OS and architecture a node must have. A hostPath file's declared "
        "minimum_platform applies as well: a node must meet both.",
    )
    auto_load: bool | None = Field(
        default=None,
        description="Load on every matching node. When false, a node loads the driver only if it carries the "
        "label load.storage.datawarehouse.io/<StorageDriver name>=true. Unset: what a hostPath file's "
        "auto_load declares on each node (true for configMap and url sources, and for a file that "
        "declares nothing).",
    )
    source: DriverSource = Field(description="Where nodes get the driver file.")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form settings handed to the driver's start(config); at most 16 KiB as JSON.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "maxProperties": 64},
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="When a node cannot run every matching driver, higher priority wins (then name).",
    )
    unload_grace_period_seconds: int = Field(
        default=5, ge=0, le=3600, description="How long a driver may take to stop before it is terminated."
    )
    unload_delay_seconds: int = Field(
        default=30,
        ge=0,
        le=MAX_UNLOAD_DELAY_SECONDS,
        description="How long no matching device must be present on a node before the driver is unloaded "
        "there; brief flaps and agent restarts shorter than this unload nothing.",
    )
    unload_policy: UnloadPolicy = Field(
        default_factory=UnloadPolicy,
        description="How an unload treats devices that are still in use on the node.",
    )
    max_unavailable: int | str = Field(
        default=1,
        description="During a version change, how many (or what percentage, e.g. '25%') of the nodes "
        "running the driver may be switching at once.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )

    @field_validator("max_unavailable")
    @classmethod
    def _max_unavailable(cls, value: int | str) -> int | str:
        if isinstance(value, str) and not re.fullmatch(r"([0-9]{1,2}|100)%", value):
            raise ValueError(f"{value!r} must be an integer or a percentage like 25%")
        if isinstance(value, int) and value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("supported_devices")
    @classmethod
    def _unique_device_types(cls, value: list[DeviceType] | None) -> list[DeviceType] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("each device type may appear only once")
        return value

    @model_validator(mode="after")
    def _device_types_known(self) -> Self:
        # Only a hostPath file is scanned on the node before it is wanted; a configMap or url
        # file is fetched once the node runs the driver, too late to say which devices it binds.
        if self.supported_devices is None and self.source.host_path is None:
            raise ValueError(
                f"supportedDevices: required for a {self.source.kind} source (only a hostPath file's "
                "declaration is read before the driver is loaded); list the device types, e.g. [loop]"
            )
        return self

    @field_validator("config")
    @classmethod
    def _config_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, separators=(",", ":")))
        if size > CONFIG_MAX_BYTES:
            raise ValueError(f"{size} bytes as JSON; at most {CONFIG_MAX_BYTES} allowed")
        return value


class FailingNode(ApiModel):
    """A node where the driver is not working, and why."""

    node: str = Field(max_length=253, description="Node name.")
    reason: str = Field(max_length=128, description="CamelCase reason, e.g. LoadFailed, PlatformTooOld.")
    message: str = Field(default="", max_length=1024, description="Details.")


FAILING_NODES_MAX = 20


class StorageDriverStatus(ApiModel):
    """The observed state of a StorageDriver, written by the operator."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Ready, Progressing and Degraded, each with reason, message and observedGeneration.",
        json_schema_extra=map_list("type"),
    )
    matching_nodes: int = Field(
        default=0, ge=0, description="Nodes that have a matching device and platform."
    )
    desired_nodes: int = Field(default=0, ge=0, description="Nodes told to run the driver.")
    loaded_nodes: int = Field(default=0, ge=0, description="Nodes that report the driver Loaded.")
    failed_nodes: int = Field(default=0, ge=0, description="Nodes where the driver failed to load or run.")
    failing_nodes: list[FailingNode] = Field(
        default_factory=list,
        max_length=FAILING_NODES_MAX,
        description=f"Up to {FAILING_NODES_MAX} nodes where the driver is failing, with reasons.",
        json_schema_extra=map_list("node"),
    )


class StorageDriver(ApiModel):
    """A storage driver and the rules for where it runs."""

    spec: StorageDriverSpec = Field(description="What the user asks for.")
    status: StorageDriverStatus = Field(
        default_factory=StorageDriverStatus, description="What the operator observes."
    )
