"""The SDK driver authors import: the decorator, device types, the driver protocol and Device.

    from storage_driver_sdk import DeviceType, storage_driver

    @storage_driver("Loop Info", version="1.0.0", supported_devices=[DeviceType.LOOP])
    class LoopInfo:
        def start(self, config): ...
        def attach(self, device): return {"sizeBytes": device.size_bytes}
        def detach(self, device): ...
        def health(self): return True
        def stop(self): ...

It depends on nothing but the Python standard library. See docs/writing-drivers.md.
"""

from storage_driver_sdk.decorator import (
    DriverDeclarationError,
    DriverMetadata,
    MinimumPlatform,
    driver_metadata,
    storage_driver,
)
from storage_driver_sdk.devices import ALL_DEVICE_TYPES, DeviceType
from storage_driver_sdk.driver import Device, Driver, Facts

__all__ = [
    "ALL_DEVICE_TYPES",
    "Device",
    "DeviceType",
    "Driver",
    "DriverDeclarationError",
    "DriverMetadata",
    "Facts",
    "MinimumPlatform",
    "driver_metadata",
    "storage_driver",
]
