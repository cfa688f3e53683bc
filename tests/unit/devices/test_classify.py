"""Device types and transports from sysfs facts, and specs that the API always accepts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from storage_driver_agent.devices.classify import device_type, kernel_driver, pci_address, transport
from storage_driver_agent.devices.describe import describe
from storage_driver_agent.devices.facts import BackingFile, DeviceClass, RawDevice, SysNode
from storage_driver_agent.devices.identity import MMC_AREA
from storage_driver_api.nodedevice import NodeDeviceSpec
from storage_driver_sdk.devices import DeviceType

from tests.unit.devices.hosts import NODE, block_device, mmc_card, scsi_disk


def scsi(path: str, type_: str = "0") -> SysNode:
    return SysNode(path, "scsi", "sd", {"DEVTYPE": "scsi_device"}, {"type": type_, "model": "M"})


def test_virtual_devices_by_kernel_name() -> None:
    for name, kind in [("loop0", "loop"), ("zram1", "zram"), ("dm-3", "device-mapper"), ("md127", "md-raid")]:
        assert device_type(block_device(name, f"/sys/devices/virtual/block/{name}")) == kind


def test_partitions_of_anything_are_partitions() -> None:
    part = block_device("loop0p1", "/sys/devices/virtual/block/loop0/loop0p1", devtype="partition")
    assert device_type(part) == DeviceType.PARTITION
    assert transport(part, DeviceType.PARTITION) is None


def test_optical_drives_and_unknown_block_devices_are_not_published() -> None:
    dvd = block_device(
        "sr0",
        "/sys/devices/pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0/block/sr0",
        scsi("/sys/devices/pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0", "5"),
    )
    assert device_type(dvd) is None
    assert device_type(block_device("ram0", "/sys/devices/virtual/block/ram0")) is None
    assert device_type(block_device("nbd0", "/sys/devices/virtual/block/nbd0")) is None
    assert describe(block_device("nbd0", "/sys/devices/virtual/block/nbd0"), NODE) is None


def test_scsi_transports_from_the_device_path() -> None:
    cases = {
        "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0": "sata",
        "pci0000:00/0000:00:01.0/0000:01:00.0/host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0": "sas",
        "platform/host3/session1/target3:0:0/3:0:0:0": "iscsi",
        "pci0000:00/0000:00:05.0/host2/target2:0:1/2:0:1:0": "scsi",
    }
    for slot, expected in cases.items():
        disk = scsi_disk("sdx", slot)
        assert device_type(disk) == DeviceType.SCSI_DISK
        assert transport(disk, DeviceType.SCSI_DISK) == expected, slot


def test_virtio_scsi_is_a_scsi_disk_and_virtio_blk_a_virtio_block_device() -> None:
    virtio = SysNode("/sys/devices/pci0000:00/0000:00:04.0/virtio2", "virtio", "virtio_scsi", {}, {})
    sd = block_device(
        "sda",
        "/sys/devices/pci0000:00/0000:00:04.0/virtio2/host0/target0:0:0/0:0:0:0/block/sda",
        scsi("/sys/devices/pci0000:00/0000:00:04.0/virtio2/host0/target0:0:0/0:0:0:0"),
        virtio,
    )
    assert device_type(sd) == DeviceType.SCSI_DISK and transport(sd, DeviceType.SCSI_DISK) == "virtio"
    vd = block_device(
        "vdb",
        "/sys/devices/pci0000:00/0000:00:05.0/virtio3/block/vdb",
        SysNode("/sys/devices/pci0000:00/0000:00:05.0/virtio3", "virtio", "virtio_blk", {}, {}),
    )
    assert device_type(vd) == DeviceType.VIRTIO_BLOCK


def test_nvme_over_fabrics_names_the_fabric() -> None:
    controller = RawDevice(
        "nvme2",
        DeviceClass.NVME,
        (SysNode("/sys/devices/virtual/nvme-fabrics/ctl/nvme2", "nvme", None, {}, {"transport": "tcp"}),),
    )
    assert device_type(controller) == DeviceType.NVME_CONTROLLER
    assert transport(controller, DeviceType.NVME_CONTROLLER) == "nvme-tcp"
    for fabric in ("fc", "loop", "rdma"):
        other = RawDevice(
            "nvme3",
            DeviceClass.NVME,
            (
                SysNode(
                    "/sys/devices/virtual/nvme-fabrics/ctl/nvme3", "nvme", None, {}, {"transport": fabric}
                ),
            ),
        )
        assert transport(other, DeviceType.NVME_CONTROLLER) == f"nvme-{fabric}"


def test_mmc_cards_and_their_boot_areas() -> None:
    card = mmc_card()
    main = block_device("mmcblk0", card.path + "/block/mmcblk0", card)
    boot = block_device("mmcblk0boot0", card.path + "/block/mmcblk0boot0", card)
    assert device_type(main) == device_type(boot) == DeviceType.MMC
    assert transport(main, DeviceType.MMC) == "mmc"
    main_spec, boot_spec = describe(main, NODE), describe(boot, NODE)
    assert main_spec is not None and boot_spec is not None
    assert main_spec.spec.identity.value == "0x1a2b3c4d/DG4016"
    assert boot_spec.spec.identity.value == "0x1a2b3c4d/DG4016/boot0"
    assert MMC_AREA.match("mmcblk0rpmb")


text = st.text(max_size=300)
attr_names = st.sampled_from(
    [
        "size",
        "ro",
        "removable",
        "queue/rotational",
        "queue/logical_block_size",
        "serial",
        "wwid",
        "eui",
        "nguid",
        "nsid",
        "loop/backing_file",
        "dm/uuid",
        "model",
        "vendor",
        "type",
        "rev",
        "partition",
        "md/uuid",
    ]
)


@st.composite
def raw_devices(draw: st.DrawFn) -> RawDevice:
    name = draw(
        st.sampled_from(["sda", "sda1", "vda", "nvme0n1", "loop0", "zram0", "dm-0", "md0", "mmcblk0"])
    )
    subsystem = draw(st.sampled_from(["scsi", "usb", "nvme", "mmc", "virtio", "pci"]))
    ancestor = SysNode(
        "/sys/devices/pci0000:00/0000:00:02.0/x",
        subsystem,
        "drv",
        {"DEVTYPE": "scsi_device" if subsystem == "scsi" else "usb_device"},
        draw(st.dictionaries(attr_names, text, max_size=10)),
    )
    own = SysNode(
        f"{ancestor.path}/block/{name}",
        "block",
        None,
        {"DEVNAME": name, "DEVTYPE": "partition" if draw(st.booleans()) else "disk"},
        draw(st.dictionaries(attr_names, text, max_size=10)),
    )
    return RawDevice(
        name,
        DeviceClass.BLOCK,
        (own, ancestor),
        udev=draw(
            st.dictionaries(st.sampled_from(["ID_SERIAL", "ID_MODEL", "ID_SERIAL_SHORT", "ID_PATH"]), text)
        ),
        links=tuple(draw(st.lists(text, max_size=40))),
        read_errors=tuple(draw(st.lists(text, max_size=40))),
        backing=BackingFile(1, 2, 3),
    )


@settings(max_examples=200, deadline=None)
@given(raw_devices())
def test_whatever_the_kernel_reports_the_spec_is_valid(device: RawDevice) -> None:
    result = describe(device, NODE)
    if result is not None:
        assert NodeDeviceSpec.model_validate(result.spec.to_api()) == result.spec


def test_the_kernel_driver_is_the_nearest_driver_on_any_bus() -> None:
    # An SD card on an ARM board: the card's own node has no driver here, the AMBA controller
    # it hangs off does; a partition's disk (also a block node) is passed over.
    controller = SysNode("/sys/devices/platform/amba/1c0f000.mmc", "amba", "mmci-pl18x", {}, {})
    card = block_device(
        "mmcblk0", "/sys/devices/platform/amba/1c0f000.mmc/mmc_host/mmc0/mmc0:0001/block/mmcblk0", controller
    )
    assert kernel_driver(card, DeviceType.MMC) == "mmci-pl18x"
    # (The subsystem is read from sysfs: an equal string, not the literal's object.)
    disk = SysNode(
        "/sys/devices/platform/amba/1c0f000.mmc/block/mmcblk0", "".join(["bl", "ock"]), "ignored", {}, {}
    )
    part = block_device(
        "mmcblk0p1",
        "/sys/devices/platform/amba/1c0f000.mmc/block/mmcblk0/mmcblk0p1",
        disk,
        controller,
        devtype="partition",
    )
    assert kernel_driver(part, DeviceType.PARTITION) == "mmci-pl18x"
    assert kernel_driver(block_device("loop0", "/sys/devices/virtual/block/loop0"), DeviceType.LOOP) == "loop"


def test_nvme_namespaces_by_name_or_by_their_controller_or_subsystem() -> None:
    controller = SysNode("/sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0", "nvme", None, {}, {})
    subsystem = SysNode("/sys/devices/virtual/nvme-subsystem/nvme-subsys0", "nvme-subsystem", None, {}, {})
    # Native multipath: the per-path device has no nvmeXnY name, but hangs off its controller.
    path = block_device("nvme0c0n1", f"{controller.path}/nvme0c0n1", controller)
    assert device_type(path) == DeviceType.NVME_NAMESPACE
    head = block_device("nvme0n1", f"{subsystem.path}/nvme0n1", subsystem)
    assert device_type(head) == DeviceType.NVME_NAMESPACE
    alone = block_device("nvme1n1", "/sys/devices/virtual/block/nvme1n1")
    assert device_type(alone) == DeviceType.NVME_NAMESPACE
    assert device_type(block_device("nvmefoo", "/sys/devices/virtual/block/nvmefoo")) is None


def test_only_an_nvme_controller_reports_its_own_pci_address() -> None:
    # A controller (in /sys/class/nvme) has an `address` attribute; anything else gets the
    # address of the nearest PCI ancestor, or none.
    controller = RawDevice(
        "nvme0",
        DeviceClass.NVME,
        (
            SysNode(
                "/sys/devices/virtual/nvme-fabrics/ctl/nvme0", "nvme", None, {}, {"address": "0000:3d:00.0"}
            ),
        ),
    )
    assert pci_address(controller) == "0000:3d:00.0"
    mmio = SysNode("/sys/devices/platform/a003e00.virtio_mmio/virtio0", "virtio", "virtio_blk", {}, {})
    disk = block_device("vda", f"{mmio.path}/block/vda", mmio, attrs={"address": "0000:00:01.0"})
    assert pci_address(disk) is None
    pci = SysNode("/sys/devices/pci0000:00/0000:00:04.0", "pci", "virtio-pci", {}, {})
    on_pci = block_device("vdb", f"{pci.path}/virtio1/block/vdb", pci)
    assert pci_address(on_pci) == "0000:00:04.0"


def test_a_vd_disk_outside_virtio_is_not_a_virtio_block_device() -> None:
    assert device_type(block_device("vda", "/sys/devices/virtual/block/vda")) is None
