"""Which devices are published: types, path patterns, backing files, and the defaults."""

from __future__ import annotations

import pytest
from storage_driver_agent.devices.filters import DeviceFilter, parse_patterns, parse_types
from storage_driver_api.nodedevice import DeviceIdentity, IdentityKind, NodeDeviceSpec
from storage_driver_sdk.devices import DeviceType


def spec(
    kernel_name: str, type_: str, *, by_id: list[str] | None = None, backing: str | None = None
) -> NodeDeviceSpec:
    return NodeDeviceSpec(
        node_name="worker-1",
        type=type_,
        identity=DeviceIdentity(kind=IdentityKind.BY_PATH, value=kernel_name),
        kernel_name=kernel_name,
        dev_path=f"/dev/{kernel_name}",
        sys_path=f"/sys/devices/x/{kernel_name}",
        by_id=by_id or [],
        backing_file=backing,
    )


def test_defaults_publish_every_type_but_emmc_boot_areas_and_snap_images() -> None:
    default = DeviceFilter()
    for kind in DeviceType:
        assert default.allows(spec("dev0", kind.value))
    assert not default.allows(spec("mmcblk0boot0", "mmc"))
    assert not default.allows(spec("mmcblk0rpmb", "mmc"))
    assert default.allows(spec("mmcblk0", "mmc"))
    assert not default.allows(spec("loop7", "loop", backing="/var/lib/snapd/snaps/core22_1380.snap"))
    assert default.allows(spec("loop7", "loop", backing="/var/lib/images/scratch.img"))


def test_types_are_included_and_excluded() -> None:
    only_loops = DeviceFilter(include_types=frozenset({DeviceType.LOOP}))
    assert only_loops.allows(spec("loop0", "loop"))
    assert only_loops.rejection(spec("sda", "scsi-disk")) == "type scsi-disk is not in the included types"
    no_partitions = DeviceFilter(exclude_types=frozenset({DeviceType.PARTITION}))
    assert no_partitions.rejection(spec("sda1", "partition")) == "type partition is excluded"
    assert no_partitions.allows(spec("sda", "scsi-disk"))


def test_patterns_match_kernel_names_device_paths_and_by_id_links() -> None:
    usb = spec("sdb", "usb-mass-storage", by_id=["/dev/disk/by-id/usb-SanDisk_Cruzer_Blade_4C53-0:0"])
    by_link = DeviceFilter(exclude_paths=("/dev/disk/by-id/usb-*",))
    assert by_link.rejection(usb) == "matches excluded path pattern /dev/disk/by-id/usb-*"
    assert by_link.allows(spec("sda", "scsi-disk"))
    by_name = DeviceFilter(include_paths=("loop*",))
    assert by_name.allows(spec("loop3", "loop")) and not by_name.allows(usb)
    by_path = DeviceFilter(include_paths=("/dev/sd[a-b]",))
    assert by_path.allows(usb) and not by_path.allows(spec("sdc", "scsi-disk"))
    # Excluding a disk leaves its partitions unless the pattern says so.
    assert DeviceFilter(exclude_paths=("/dev/sdb",)).allows(spec("sdb1", "partition"))
    assert not DeviceFilter(exclude_paths=("/dev/sdb*",)).allows(spec("sdb1", "partition"))


def test_type_lists_are_parsed_with_errors_that_name_the_option_and_the_valid_values() -> None:
    assert parse_types(" loop, nvme-namespace ,", "--include-types") == {
        DeviceType.LOOP,
        DeviceType.NVME_NAMESPACE,
    }
    assert parse_types("", "--exclude-types") == frozenset()
    with pytest.raises(ValueError) as error:
        parse_types("loop,nvme", "--include-types")
    assert str(error.value).startswith(
        "--include-types: unknown device type 'nvme'; valid types: nvme-controller,"
    )
    assert parse_patterns("/dev/sd*, loop*,,") == ("/dev/sd*", "loop*")
