"""The SDK driver authors import: the decorator checks its arguments and marks the class."""

from __future__ import annotations

from typing import Any

import pytest
from storage_driver_sdk import (
    Device,
    DeviceType,
    DriverDeclarationError,
    MinimumPlatform,
    driver_metadata,
    storage_driver,
)
from storage_driver_sdk.protocol import (
    ErrorInfo,
    Op,
    ProtocolError,
    Request,
    Response,
    decode_request,
    decode_response,
)


class _Complete:
    def start(self, config: Any) -> None: ...
    def attach(self, device: Device) -> None: ...
    def detach(self, device: Device) -> None: ...
    def stop(self) -> None: ...


def test_decorator_records_every_declared_field() -> None:
    @storage_driver(
        "Loop Info",
        version="1.2.3",
        supported_devices=[DeviceType.LOOP, "virtio-block"],
        description="reads sysfs",
        minimum_platform=MinimumPlatform(kernel="5.10", os="linux", architectures=["amd64"]),
        auto_load=False,
    )
    class Driver(_Complete):
        pass

    meta = driver_metadata(Driver)
    assert meta is not None
    assert meta.name == "Loop Info"
    assert meta.version == "1.2.3"
    assert meta.supported_devices == (DeviceType.LOOP, DeviceType.VIRTIO_BLOCK)
    assert meta.description == "reads sysfs"
    assert meta.minimum_platform == MinimumPlatform(kernel="5.10", os="linux", architectures=("amd64",))
    assert meta.auto_load is False
    assert meta.class_name == "Driver"


def test_a_kernel_string_is_a_minimum_kernel_version() -> None:
    @storage_driver("K", minimum_platform="6.1")
    class Driver(_Complete):
        pass

    meta = driver_metadata(Driver)
    assert meta is not None and meta.minimum_platform == MinimumPlatform(kernel="6.1")


def test_undecorated_class_has_no_metadata() -> None:
    assert driver_metadata(_Complete) is None


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"name": ""}, "name:"),
        ({"name": "-bad name"}, "name:"),
        ({"name": "x" * 129}, "name:"),
        ({"name": "D", "version": "1.0"}, "version: '1.0' is not a semantic version"),
        ({"name": "D", "supported_devices": ["floppy"]}, "supported_devices: unknown device type 'floppy'"),
        ({"name": "D", "supported_devices": "loop"}, "supported_devices: pass a list"),
        ({"name": "D", "supported_devices": ["loop", "loop"]}, "loop is listed twice"),
        ({"name": "D", "auto_load": "yes"}, "auto_load:"),
        ({"name": "D", "minimum_platform": 5}, "minimum_platform:"),
        (
            {"name": "D", "minimum_platform": "five"},
            "minimum_platform.kernel: 'five' is not a kernel version",
        ),
        ({"name": "D", "description": "x" * 2000}, "description:"),
    ],
)
def test_bad_arguments_name_the_argument_and_the_fix(kwargs: dict[str, Any], names: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(DriverDeclarationError, match=names.replace("(", r"\(").replace(")", r"\)")):
        storage_driver(name, **kwargs)


def test_platform_range_must_be_ordered() -> None:
    with pytest.raises(DriverDeclarationError, match=r"kernel_below: 5\.4 must be greater than kernel 5\.10"):
        MinimumPlatform(kernel="5.10", kernel_below="5.4")


def test_a_driver_needs_the_lifecycle_methods() -> None:
    with pytest.raises(DriverDeclarationError, match="missing: detach, stop"):

        @storage_driver("Incomplete")
        class Incomplete:
            def start(self, config: Any) -> None: ...
            def attach(self, device: Device) -> None: ...


def test_device_from_a_node_device_spec() -> None:
    spec = {
        "type": "loop",
        "kernelName": "loop3",
        "sysPath": "/sys/devices/virtual/block/loop3",
        "devPath": "/dev/loop3",
        "sizeBytes": 8388608,
        "logicalBlockSize": 512,
    }
    device = Device.from_spec("node-a-1234567890", spec)
    assert device.type is DeviceType.LOOP
    assert device.kernel_name == "loop3"
    assert device.size_bytes == 8388608
    assert str(device.sysfs) == "/sys/devices/virtual/block/loop3"
    assert device.spec["logicalBlockSize"] == 512
    assert Device.from_message(device.to_message()) == device


def test_protocol_round_trips() -> None:
    request = Request(7, Op.ATTACH, {"device": {"name": "d"}})
    assert decode_request(request.encode()) == request
    ok = Response(7, True, {"facts": {"size": 1}})
    assert decode_response(ok.encode()) == ok
    failed = Response(8, False, error=ErrorInfo("MemoryError", "out of memory", "tb"))
    assert decode_response(failed.encode()) == failed


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "integer id"),
        (b'{"id": "1", "op": "hello"}', "integer id"),
        (b'{"id": 1, "op": "format-disk"}', "unknown op 'format-disk'"),
        (b'{"id": 1, "op": "hello", "args": [1]}', "args must be a JSON object"),
    ],
)
def test_protocol_refuses_malformed_requests(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_request(line)
