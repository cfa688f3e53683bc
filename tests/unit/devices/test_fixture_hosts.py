"""The probe, classification and identity on recorded host trees: what each machine publishes."""

from __future__ import annotations

import shutil
from pathlib import Path

from storage_driver_agent.devices.describe import describe_all
from storage_driver_agent.devices.probe import Probe
from storage_driver_agent.devices.sysfs import HostRoot
from storage_driver_api.nodedevice import IdentityKind, NodeDeviceSpec

from tests.unit.devices.hosts import HOSTS, described, probe


def specs(host: str) -> dict[str, NodeDeviceSpec]:
    return {name: d.spec for name, d in described(host).items()}


def test_virtio_vm_publishes_the_virtio_disk_zram_and_only_the_attached_loop_device() -> None:
    found = specs("virtio-vm")
    assert sorted(found) == ["loop0", "vda", "zram0"]  # loop1..loop7 are not attached
    vda = found["vda"]
    assert vda.type == "virtio-block"
    assert vda.size_bytes == 536870912 * 512
    assert vda.transport == "virtio"
    assert vda.kernel_driver == "virtio_blk"
    assert vda.pci_address == "0000:00:02.0"
    assert vda.serial == "2006643131655933"
    assert (vda.identity.kind, vda.identity.value) == (IdentityKind.SERIAL_MODEL, "2006643131655933")
    assert (vda.logical_block_size, vda.physical_block_size) == (512, 4096)
    assert vda.dev_path == "/dev/vda"
    assert vda.sys_path == "/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda"
    assert vda.read_errors == []
    zram = found["zram0"]
    assert (zram.type, zram.size_bytes, zram.kernel_driver) == ("zram", 0, "zram")
    assert zram.identity.value == "worker-1/zram0"


def test_a_loop_device_whose_backing_inode_cannot_be_read_is_published_with_the_reason() -> None:
    loop = specs("virtio-vm")["loop0"]
    assert loop.type == "loop"
    assert loop.backing_file == "/var/lib/images/scratch.img"
    assert loop.size_bytes == 16 * 1024 * 1024
    assert loop.identity.kind == IdentityKind.VIRTUAL
    assert loop.identity.value == "worker-1/loop0//var/lib/images/scratch.img"
    # A recorded tree has no /dev/loop0 and no backing file: the inode is missing, and says why.
    assert len(loop.read_errors) == 1
    assert loop.read_errors[0].startswith("loop/backing_file inode: /dev/loop0: No such file or directory")


def test_nvme_workstation_controllers_namespaces_and_partitions() -> None:
    found = specs("nvme-workstation")
    # The hidden multipath path devices (nvme0c0n1, nvme1c1n1) are not devices of their own.
    assert sorted(found) == ["nvme0", "nvme0n1", "nvme0n1p1", "nvme0n1p2", "nvme1", "nvme1n1"]
    controller = found["nvme0"]
    assert controller.type == "nvme-controller"
    assert controller.model == "Samsung SSD 980 PRO 1TB"
    assert controller.serial == "S5GXNF0R123456A"
    assert controller.firmware == "5B2QGXA7"
    assert controller.pci_address == "0000:3d:00.0"
    assert controller.kernel_driver == "nvme"
    assert controller.transport == "nvme"
    assert controller.size_bytes is None
    assert controller.dev_path == "/dev/nvme0"
    namespace = found["nvme0n1"]
    assert namespace.type == "nvme-namespace"
    assert namespace.parent == "nvme0"
    assert namespace.size_bytes == 1953525168 * 512
    assert namespace.rotational is False
    assert namespace.wwn == "eui.002538b911b2c3d4"
    assert (namespace.identity.kind, namespace.identity.value) == (
        IdentityKind.NVME_EUI64,
        "002538b911b2c3d4",
    )
    assert namespace.pci_address == "0000:3d:00.0"
    assert namespace.by_id == [
        "/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GXNF0R123456A",
        "/dev/disk/by-id/nvme-eui.002538b911b2c3d4",
    ]
    assert namespace.udev["ID_PATH"] == "pci-0000:3d:00.0-nvme-1"
    # The second SSD has an NGUID but no EUI-64, and udevd never saw it: sysfs alone suffices.
    second = found["nvme1n1"]
    assert (second.identity.kind, second.identity.value) == (
        IdentityKind.NVME_NGUID,
        "e8238fa6bf530001001b448b4a1c2d3e",
    )
    assert second.udev == {} and second.by_id == []
    assert second.model == "WD_BLACK SN850X 2000GB"
    partition = found["nvme0n1p1"]
    assert partition.type == "partition"
    assert partition.parent == "nvme0n1"
    assert partition.identity.value == "002538b911b2c3d4/part1"
    assert partition.identity.kind == IdentityKind.NVME_EUI64
    assert partition.size_bytes == 1050624 * 512
    assert partition.logical_block_size == 512  # from its disk's queue
    assert partition.udev["ID_FS_TYPE"] == "vfat"


def test_sata_server_disks_raid_lvm_and_no_dvd_drive() -> None:
    found = specs("sata-server")
    assert sorted(found) == ["dm-0", "md127", "sda", "sda1", "sda2", "sdb", "sdb1"]  # sr0 is a DVD drive
    ssd, hdd = found["sda"], found["sdb"]
    assert (ssd.type, ssd.transport, ssd.kernel_driver) == ("scsi-disk", "sata", "sd")
    assert (ssd.vendor, ssd.model, ssd.firmware) == ("ATA", "Samsung SSD 870", "2B6Q")
    assert (ssd.identity.kind, ssd.identity.value) == (IdentityKind.WWN, "naa.5002538f4123abcd")
    assert ssd.wwn == "naa.5002538f4123abcd"
    assert ssd.serial == "S6PUNX0T123456A"  # shown from udev; never part of the identity
    assert ssd.pci_address == "0000:00:17.0"
    assert "/dev/disk/by-id/wwn-0x5002538f4123abcd" in ssd.by_id
    assert ssd.rotational is False and hdd.rotational is True
    assert hdd.physical_block_size == 4096
    assert hdd.serial is None  # no udev data and no VPD page recorded for it
    assert hdd.size_bytes == 7814037168 * 512
    array = found["md127"]
    assert (array.type, array.kernel_driver, array.parent) == ("md-raid", "md", None)  # two members
    assert array.identity.value == "worker-1/md-uuid/3f2c1a9b:8d7e6f50:41a2b3c4:d5e6f708"
    volume = found["dm-0"]
    assert (volume.type, volume.parent) == ("device-mapper", "md127")
    assert volume.identity.value.startswith("worker-1/dm-uuid/LVM-")
    assert found["sdb1"].identity.value == "naa.5000c500c8a1b2c3/part1"


def test_usb_laptop_sticks_and_two_sticks_with_the_same_serial() -> None:
    found = specs("usb-laptop")
    assert sorted(found) == ["sdb", "sdb1", "sdc", "sdd"]
    stick = found["sdb"]
    assert (stick.type, stick.transport, stick.removable) == ("usb-mass-storage", "usb", True)
    assert (stick.vendor, stick.model, stick.serial) == ("SanDisk", "Cruzer Blade", "4C530001230521112345")
    assert (stick.identity.kind, stick.identity.value) == (
        IdentityKind.SERIAL_MODEL,
        "4C530001230521112345/Cruzer Blade",
    )
    assert stick.udev["ID_USB_DRIVER"] == "usb-storage"
    assert found["sdb1"].identity.value == "4C530001230521112345/Cruzer Blade/part1"
    # The probe reports what each stick says: the same serial, so the same chain identity ...
    assert found["sdc"].identity == found["sdd"].identity
    assert found["sdc"].serial == found["sdd"].serial == "AA00000000000489"


def test_every_tree_publishes_only_valid_specs() -> None:
    for tree in ("virtio-vm", "nvme-workstation", "sata-server", "usb-laptop"):
        for name, spec in specs(tree).items():
            again = NodeDeviceSpec.model_validate(spec.to_api())
            assert again == spec, f"{tree}/{name} does not survive the API round trip"


def test_an_unreadable_attribute_is_reported_and_the_device_still_published(tmp_path: Path) -> None:
    tree = tmp_path / "host"
    shutil.copytree(HOSTS / "virtio-vm", tree, symlinks=True)
    vda = tree / "sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda"
    (vda / "size").unlink()
    (vda / "size").mkdir()  # reading it fails with EISDIR, as a broken attribute fails with EIO
    (vda / "serial").write_bytes(b"\xff\xfe\x00bad")
    devices = {d.spec.kernel_name: d.spec for d in describe_all(Probe(HostRoot(tree)).all(), "worker-1")}
    broken = devices["vda"]
    assert broken.size_bytes is None
    assert broken.serial is None
    assert sorted(broken.read_errors) == ["serial: not valid UTF-8 text", "size: Is a directory"]
    # Still identified (by where it is plugged in) and otherwise complete.
    assert broken.identity.kind == IdentityKind.BY_PATH
    assert broken.identity.value == "pci0000:00/0000:00:02.0/virtio1"
    assert broken.physical_block_size == 4096


def test_probing_some_devices_reads_them_and_their_disks_and_reports_the_missing() -> None:
    found = Probe(HostRoot(HOSTS / "nvme-workstation")).some(["nvme0n1p2", "nvme7n1", "../etc"])
    assert found["nvme7n1"] is None and found["../etc"] is None
    assert found["nvme0n1p2"] is not None
    assert found["nvme0n1"] is not None  # the partition's disk, for its identity
    assert set(found) == {"nvme0n1p2", "nvme0n1", "nvme7n1", "../etc"}


def test_probe_finds_the_same_on_repeated_reads() -> None:
    assert probe("sata-server") == probe("sata-server")
