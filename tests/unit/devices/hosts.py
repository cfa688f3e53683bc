"""The recorded host trees and small builders of probe facts for the device unit tests."""

from __future__ import annotations

from pathlib import Path

from storage_driver_agent.devices.describe import DescribedDevice, describe_all
from storage_driver_agent.devices.facts import BackingFile, DeviceClass, RawDevice, SysNode
from storage_driver_agent.devices.probe import Probe
from storage_driver_agent.devices.sysfs import HostRoot

HOSTS = Path(__file__).resolve().parents[2] / "fixtures" / "hosts"
NODE = "worker-1"


def host(name: str) -> HostRoot:
    return HostRoot(HOSTS / name)


def probe(name: str) -> dict[str, RawDevice]:
    return Probe(host(name)).all()


def described(name: str, node: str = NODE) -> dict[str, DescribedDevice]:
    return {d.spec.kernel_name: d for d in describe_all(probe(name), node)}


def block_device(
    name: str,
    path: str,
    *ancestors: SysNode,
    devtype: str = "disk",
    attrs: dict[str, str] | None = None,
    backing: BackingFile | None = None,
    udev: dict[str, str] | None = None,
) -> RawDevice:
    own = SysNode(
        path,
        "block",
        None,
        {"DEVNAME": name, "DEVTYPE": devtype, "MAJOR": "8", "MINOR": "0"},
        {"size": "2048", **(attrs or {})},
    )
    return RawDevice(name, DeviceClass.BLOCK, (own, *ancestors), udev=udev or {}, backing=backing)


def scsi_disk(
    name: str,
    slot: str = "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0",
    *,
    wwid: str | None = None,
    serial: str | None = None,
    model: str = "Samsung SSD 870",
    usb_serial: str | None = None,
) -> RawDevice:
    scsi_attrs = {"vendor": "ATA", "model": model, "rev": "2B6Q", "type": "0"}
    if wwid:
        scsi_attrs["wwid"] = wwid
    if serial:
        scsi_attrs["vpd_pg80"] = serial
    scsi_path = f"/sys/devices/{slot}"
    chain = [SysNode(scsi_path, "scsi", "sd", {"DEVTYPE": "scsi_device"}, scsi_attrs)]
    if usb_serial is not None:
        usb_path = scsi_path.split("/host", maxsplit=1)[0].rsplit("/", 1)[0]
        chain.append(SysNode(usb_path, "usb", "usb", {"DEVTYPE": "usb_device"}, {"serial": usb_serial}))
    return block_device(name, f"{scsi_path}/block/{name}", *chain)


def mmc_card() -> SysNode:
    """An eMMC card (the parent of mmcblk0 and its boot areas and partitions)."""
    return SysNode(
        "/sys/devices/platform/fe320000.mmc/mmc_host/mmc0/mmc0:0001",
        "mmc",
        "mmcblk",
        {},
        {"name": "DG4016", "serial": "0x1a2b3c4d"},
    )
