"""The identity chain, renames, re-attached loop devices and duplicates."""

from __future__ import annotations

import json
import string
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_driver_agent.devices.describe import describe, describe_all
from storage_driver_agent.devices.facts import BackingFile, RawDevice, SysNode, parse_vpd_pg80
from storage_driver_agent.devices.identity import (
    MAX_IDENTITY,
    Candidate,
    Claim,
    base_identity,
    bounded,
    claims_from,
    hex_id,
    location,
    qualified,
    resolve_duplicates,
)
from storage_driver_api.nodedevice import DeviceIdentity, IdentityKind, node_device_name
from storage_driver_sdk.devices import DeviceType

from tests.unit.devices.hosts import NODE, block_device, mmc_card, scsi_disk


def identity_of(device: RawDevice) -> DeviceIdentity:
    result = describe(device, NODE)
    assert result is not None
    return result.spec.identity


# --- the chain -------------------------------------------------------------------------------


def test_wwn_comes_first() -> None:
    disk = scsi_disk("sda", wwid="naa.5002538F4123ABCD", serial="S6PUNX0T123456A")
    assert identity_of(disk) == DeviceIdentity(kind=IdentityKind.WWN, value="naa.5002538f4123abcd")


def test_a_t10_vendor_id_is_not_a_wwn_so_serial_and_model_follow() -> None:
    disk = scsi_disk("sda", wwid="t10.ATA     Samsung SSD 870", serial="S6PUNX0T123456A")
    assert identity_of(disk) == DeviceIdentity(
        kind=IdentityKind.SERIAL_MODEL, value="S6PUNX0T123456A/Samsung SSD 870"
    )


def test_a_usb_stick_without_vpd_serial_uses_the_usb_serial() -> None:
    stick = scsi_disk(
        "sdb",
        "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0",
        model="Cruzer Blade",
        usb_serial="4C530001230521112345",
    )
    assert identity_of(stick).value == "4C530001230521112345/Cruzer Blade"


def test_without_any_id_a_disk_is_identified_by_where_it_is_plugged_in() -> None:
    disk = scsi_disk("sdb", "pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0")
    assert identity_of(disk) == DeviceIdentity(
        kind=IdentityKind.BY_PATH, value="pci0000:00/0000:00:17.0/ata2/0:0:0"
    )


def namespace(name: str, **attrs: str) -> RawDevice:
    controller = SysNode(
        "/sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0",
        "nvme",
        None,
        {},
        {"serial": "S5GX", "model": "Samsung SSD 980 PRO 1TB"},
    )
    return block_device(name, f"{controller.path}/{name}", controller, attrs=attrs)


def test_nvme_eui64_then_nguid_then_serial_model_and_namespace_id() -> None:
    eui = "00 25 38 b9 11 b2 c3 d4"
    nguid = "e8238fa6-bf53-0001-001b-448b4a1c2d3e"
    assert identity_of(namespace("nvme0n1", eui=eui, nguid=nguid)) == DeviceIdentity(
        kind=IdentityKind.NVME_EUI64, value="002538b911b2c3d4"
    )
    assert identity_of(namespace("nvme0n1", nguid=nguid)) == DeviceIdentity(
        kind=IdentityKind.NVME_NGUID, value="e8238fa6bf530001001b448b4a1c2d3e"
    )
    # All-zero IDs mean "not provided" in NVMe; two namespaces of one controller stay apart.
    one = identity_of(namespace("nvme0n1", eui="00 00 00 00 00 00 00 00", nsid="1"))
    two = identity_of(namespace("nvme0n2", nsid="2"))
    assert one == DeviceIdentity(kind=IdentityKind.SERIAL_MODEL, value="S5GX/Samsung SSD 980 PRO 1TB/ns1")
    assert two.value == "S5GX/Samsung SSD 980 PRO 1TB/ns2"
    # An older kernel without the nsid attribute: the id comes from the name.
    assert identity_of(namespace("nvme0n3")).value == "S5GX/Samsung SSD 980 PRO 1TB/ns3"


def test_hex_ids_are_normalised() -> None:
    assert hex_id("00 25 38 B9") == "002538b9"
    assert hex_id("e823-8fa6") == "e8238fa6"
    assert hex_id("00:00") is None
    assert hex_id("not hex") is None
    assert hex_id(None) is None


def test_vpd_page_0x80_serial() -> None:
    assert parse_vpd_pg80(b"\x00\x80\x00\x11  S6PUNX0T123456A") == "S6PUNX0T123456A"
    assert parse_vpd_pg80(b"\x00\x83\x00\x04abcd") is None  # another page
    assert parse_vpd_pg80(b"\x00\x80") is None
    assert parse_vpd_pg80(b"\x00\x80\x00\x04\x00\x00\x00\x00") is None


# --- renames ---------------------------------------------------------------------------------


def test_a_renamed_disk_keeps_its_nodedevice_name() -> None:
    before = scsi_disk(
        "sdb", "pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0", wwid="naa.5000c500c8a1b2c3"
    )
    after = scsi_disk(
        "sdc", "pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0", wwid="naa.5000c500c8a1b2c3"
    )
    assert node_device_name(NODE, identity_of(before)) == node_device_name(NODE, identity_of(after))


def test_a_replugged_stick_keeps_its_location_although_the_scsi_host_number_changes() -> None:
    first = "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb"
    again = "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host9/target9:0:0/9:0:0:0/block/sdd"
    other_port = "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-2/2-2:1.0/host7/target7:0:0/7:0:0:0/block/sdc"
    assert location(first) == location(again) == "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/0:0:0"
    assert location(other_port) != location(first)
    assert location(first + "/sdb1") == location(first)


def loop(name: str, backing: str, which: BackingFile | None) -> RawDevice:
    return block_device(
        name, f"/sys/devices/virtual/block/{name}", attrs={"loop/backing_file": backing}, backing=which
    )


def test_a_loop_device_reattached_to_a_different_file_at_the_same_path_is_a_new_device() -> None:
    path = "/var/lib/images/scratch.img"
    first = identity_of(loop("loop3", path, BackingFile(65024, 1001, 77)))
    same_file_again = identity_of(loop("loop3", path, BackingFile(65024, 1001, 77)))
    replaced_file = identity_of(loop("loop3", path, BackingFile(65024, 2002, 5)))
    reused_inode = identity_of(loop("loop3", path, BackingFile(65024, 1001, 78)))
    other_loop = identity_of(loop("loop4", path, BackingFile(65024, 1001, 77)))
    assert first == same_file_again
    assert first.kind == IdentityKind.VIRTUAL
    assert first.value == f"{NODE}/loop3/{path}@65024:1001:77"
    assert replaced_file != first
    assert reused_inode != first  # ext4 hands a deleted file's inode to the next new file
    assert other_loop != first  # the chain names the kernel name for virtual devices
    names = {node_device_name(NODE, i) for i in (first, replaced_file, reused_inode, other_loop)}
    assert len(names) == 4
    # Where the filesystem keeps no generation, device and inode still tell files apart.
    assert (
        identity_of(loop("loop3", path, BackingFile(65024, 1001))).value == f"{NODE}/loop3/{path}@65024:1001"
    )
    assert identity_of(loop("loop3", path, None)).value == f"{NODE}/loop3/{path}"


def test_virtual_identities_name_the_node() -> None:
    device = loop("loop0", "/images/a.img", BackingFile(1, 2))
    assert identity_of(device).value.startswith(f"{NODE}/")
    other = describe(device, "worker-2")
    assert other is not None and other.spec.identity.value.startswith("worker-2/")


def test_partitions_follow_their_disk() -> None:
    disk = scsi_disk("sda", wwid="naa.5002538f4123abcd")
    part_node = SysNode(
        disk.node.path + "/sda1",
        "block",
        None,
        {"DEVTYPE": "partition", "DEVNAME": "sda1", "PARTN": "1"},
        {"partition": "1"},
    )
    partition = type(disk)("sda1", disk.device_class, (part_node, *disk.chain))
    found = {d.spec.kernel_name: d.spec for d in describe_all({"sda": disk, "sda1": partition}, NODE)}
    assert found["sda1"].identity == DeviceIdentity(kind=IdentityKind.WWN, value="naa.5002538f4123abcd/part1")
    assert found["sda1"].parent == "sda"
    # Without its disk probed, a partition still gets an identity from its location.
    alone = describe_all({"sda1": partition}, NODE)[0].spec.identity
    assert alone.kind == IdentityKind.BY_PATH and alone.value.endswith("/part1")


def test_long_identities_are_bounded_and_still_distinct() -> None:
    a = bounded("x" * 5000 + "a")
    b = bounded("x" * 5000 + "b")
    assert len(a) <= MAX_IDENTITY and len(b) <= MAX_IDENTITY and a != b
    assert bounded("short") == "short"
    # A reader still sees what the identity is: its head is kept, as much as fits.
    assert len(a) == MAX_IDENTITY and a.startswith("x" * 900)
    exact = "y" * MAX_IDENTITY
    assert bounded(exact) == exact
    deep = loop("loop1", "/" + "d/" * 2000 + "f.img", BackingFile(1, 2))
    assert len(identity_of(deep).value) <= MAX_IDENTITY


def test_base_identity_of_a_partition_without_number_uses_the_kernel_name() -> None:
    part = block_device("sdz9", "/sys/devices/x/block/sdz/sdz9", devtype="partition")
    ident = base_identity(part, DeviceType.PARTITION, NODE, None)
    assert ident.value.endswith("/partsdz9")


# --- duplicates ------------------------------------------------------------------------------

SERIAL = DeviceIdentity(kind=IdentityKind.SERIAL_MODEL, value="AA00000000000489/Flash Disk")
PORT_2 = "pci0000:00/0000:00:14.0/usb2/2-2/2-2:1.0/0:0:0"
PORT_3 = "pci0000:00/0000:00:14.0/usb2/2-3/2-3:1.0/0:0:0"


def test_a_device_alone_keeps_its_plain_identity() -> None:
    assert resolve_duplicates([Candidate("sdc", SERIAL, PORT_2)], []) == {"sdc": SERIAL}


def test_two_sticks_with_the_same_serial_are_told_apart_by_their_port() -> None:
    result = resolve_duplicates([Candidate("sdc", SERIAL, PORT_2), Candidate("sdd", SERIAL, PORT_3)], [])
    assert result == {"sdc": qualified(SERIAL, PORT_2), "sdd": qualified(SERIAL, PORT_3)}
    assert result["sdc"].value == f"{SERIAL.value}@{PORT_2}"


def test_a_second_stick_with_the_same_serial_does_not_take_the_first_ones_nodedevice() -> None:
    first = resolve_duplicates([Candidate("sdc", SERIAL, PORT_2)], [])
    claims = [Claim(first["sdc"], PORT_2, present=True)]
    both = resolve_duplicates([Candidate("sdc", SERIAL, PORT_2), Candidate("sdd", SERIAL, PORT_3)], claims)
    assert both["sdc"] == SERIAL  # unchanged
    assert both["sdd"] == qualified(SERIAL, PORT_3)
    # The first one leaves; the second keeps its (qualified) identity while it stays put.
    claims.append(Claim(both["sdd"], PORT_3, present=True))
    claims[0] = Claim(SERIAL, PORT_2, present=False)
    after = resolve_duplicates([Candidate("sdd", SERIAL, PORT_3)], claims)
    assert after["sdd"] == qualified(SERIAL, PORT_3)


def test_the_same_disk_over_two_paths_gets_two_nodedevices() -> None:
    wwn = DeviceIdentity(kind=IdentityKind.WWN, value="naa.600a098038303053453f463045727a4f")
    result = resolve_duplicates(
        [Candidate("sdb", wwn, "pci/host-a/0:0:1"), Candidate("sdc", wwn, "pci/host-b/0:0:1")], []
    )
    assert len({node_device_name(NODE, i) for i in result.values()}) == 2


def test_duplicates_at_one_location_still_get_distinct_identities() -> None:
    result = resolve_duplicates([Candidate("sdc", SERIAL, PORT_2), Candidate("sdd", SERIAL, PORT_2)], [])
    assert result["sdc"] != result["sdd"]


identities = st.builds(
    DeviceIdentity,
    kind=st.sampled_from(list(IdentityKind)),
    value=st.text(string.ascii_letters + string.digits + "/:.", min_size=1, max_size=12),
)
locations = st.text("abc/0123:", min_size=1, max_size=8)


@st.composite
def populations(draw: st.DrawFn) -> tuple[list[Candidate], list[Claim]]:
    count = draw(st.integers(0, 8))
    pool = draw(st.lists(identities, min_size=1, max_size=3))
    candidates = [Candidate(f"dev{i}", draw(st.sampled_from(pool)), draw(locations)) for i in range(count)]
    claims = draw(
        st.lists(
            st.builds(
                Claim,
                identity=st.one_of(
                    st.sampled_from(pool),
                    st.builds(qualified, st.sampled_from(pool), locations),
                ),
                location=locations,
                present=st.booleans(),
            ),
            max_size=6,
        )
    )
    return candidates, claims


@given(populations())
def test_resolved_identities_are_always_unique_and_complete(
    population: tuple[list[Candidate], list[Claim]],
) -> None:
    candidates, claims = population
    result = resolve_duplicates(candidates, claims)
    assert set(result) == {c.key for c in candidates}
    values = [(i.kind, i.value) for i in result.values()]
    assert len(values) == len(set(values))
    for candidate in candidates:
        assert result[candidate.key].kind == candidate.identity.kind
        assert result[candidate.key].value.startswith(candidate.identity.value)


@given(populations())
def test_resolution_is_stable_once_published(population: tuple[list[Candidate], list[Claim]]) -> None:
    """Publishing the result and resolving again (nothing changed) gives the same identities."""
    candidates, claims = population
    first = resolve_duplicates(candidates, claims)
    by_key = {c.key: c for c in candidates}
    published = [Claim(identity, by_key[key].location, present=True) for key, identity in first.items()]
    assert resolve_duplicates(candidates, published) == first


def test_claims_are_read_from_the_nodedevices_the_api_holds_and_keep_the_first_sticks_name() -> None:
    sys_path = "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdc"
    present = {"type": "Present", "status": "True", "reason": "Detected", "message": "m"}
    objects: dict[str, dict[str, object]] = {
        "first": {
            "spec": {"identity": SERIAL.to_api(), "sysPath": sys_path},
            "status": {"conditions": [present]},
        },
        "gone": {
            "spec": {"identity": {"kind": "by-path", "value": "x"}, "sysPath": "/sys/devices/virtual/x"},
            "status": {"conditions": [{**present, "status": "False"}]},
        },
        "no-spec": {"status": {}},
        "bad-spec": {"spec": "text"},
        "no-path": {"spec": {"identity": SERIAL.to_api()}},
        "bad-identity": {"spec": {"identity": {"kind": "unheard-of", "value": ""}, "sysPath": sys_path}},
    }
    claims = claims_from(objects)
    assert claims == [
        Claim(SERIAL, location(sys_path), present=True),
        Claim(DeviceIdentity(kind=IdentityKind.BY_PATH, value="x"), "virtual/x", present=False),
    ]
    # A second stick with the same serial appears in another port: the first keeps its name.
    second = resolve_duplicates(
        [Candidate("sdc", SERIAL, location(sys_path)), Candidate("sdd", SERIAL, PORT_3)], claims
    )
    assert second["sdc"] == SERIAL


# --- what the full mutation run found unpinned -------------------------------------------------


def test_an_identity_exactly_as_long_as_the_api_allows_is_kept_whole() -> None:
    # NodeDevice.spec.identity.value has maxLength 1024: a value of that length needs no hash.
    head = f"{NODE}/loop1/"
    tail = "@1:2"
    path = "/" + "p" * (1024 - len(head) - len(tail) - 1)
    value = identity_of(loop("loop1", path, BackingFile(1, 2))).value
    assert value == f"{head}{path}{tail}" and len(value) == 1024
    longer = identity_of(loop("loop1", path + "q", BackingFile(1, 2))).value
    assert len(longer) == 1024 and "...sha256:" in longer


def test_a_partition_whose_uevent_has_no_number_is_named_by_its_sysfs_number() -> None:
    disk = scsi_disk("sda", wwid="naa.5002538f4123abcd")
    part_node = SysNode(disk.node.path + "/sda2", "block", None, {"DEVTYPE": "partition"}, {"partition": "2"})
    partition = type(disk)("sda2", disk.device_class, (part_node, *disk.chain))
    found = {d.spec.kernel_name: d.spec for d in describe_all({"sda": disk, "sda2": partition}, NODE)}
    assert found["sda2"].identity == DeviceIdentity(kind=IdentityKind.WWN, value="naa.5002538f4123abcd/part2")


def test_a_usb_stick_whose_scsi_layer_reports_no_model_takes_the_usb_product() -> None:
    slot = "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0"
    scsi = SysNode(f"/sys/devices/{slot}", "scsi", "sd", {"DEVTYPE": "scsi_device"}, {"type": "0"})
    usb = SysNode(
        "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1",
        "usb",
        "usb",
        {"DEVTYPE": "usb_device"},
        {"serial": "4C530001230521112345", "product": "Cruzer Blade"},
    )
    stick = block_device("sdb", f"{scsi.path}/block/sdb", scsi, usb)
    assert identity_of(stick).value == "4C530001230521112345/Cruzer Blade"
    # A SATA disk with a serial but no model (and no USB above it) is known by its serial alone.
    bare = SysNode(scsi.path, "scsi", "sd", {"DEVTYPE": "scsi_device"}, {"type": "0", "vpd_pg80": "WD-123"})
    disk = block_device("sdc", f"{scsi.path}/block/sdc", bare)
    assert identity_of(disk) == DeviceIdentity(kind=IdentityKind.SERIAL_MODEL, value="WD-123")


def test_a_partition_of_an_mmc_card_does_not_report_the_cards_serial_as_its_own() -> None:
    # A selector on serial picks the card, not each of its partitions (as for SCSI disks).
    card = mmc_card()
    disk = block_device("mmcblk0", card.path + "/block/mmcblk0", card)
    part_node = SysNode(
        disk.node.path + "/mmcblk0p1",
        "block",
        None,
        {"DEVTYPE": "partition", "PARTN": "1"},
        {"partition": "1"},
    )
    partition = type(disk)("mmcblk0p1", disk.device_class, (part_node, *disk.chain))
    found = {
        d.spec.kernel_name: d.spec for d in describe_all({"mmcblk0": disk, "mmcblk0p1": partition}, NODE)
    }
    assert (found["mmcblk0"].serial, found["mmcblk0"].model) == ("0x1a2b3c4d", "DG4016")
    assert found["mmcblk0p1"].serial is None
    assert found["mmcblk0p1"].identity.value == "0x1a2b3c4d/DG4016/part1"


def test_candidates_and_claims_cannot_change_while_identities_are_resolved() -> None:
    candidate = Candidate("sdc", SERIAL, PORT_2)
    claim = Claim(SERIAL, PORT_2, present=True)
    with pytest.raises(FrozenInstanceError):
        candidate.location = PORT_3  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        claim.present = False  # type: ignore[misc]


def test_an_unplugged_stick_that_comes_back_with_a_twin_keeps_its_nodedevice() -> None:
    # The first stick was alone (plain identity); it was unplugged, so its NodeDevice is not
    # Present. After a reboot it comes back together with a second stick of the same serial.
    claims = [Claim(SERIAL, PORT_2, present=False)]
    both = resolve_duplicates([Candidate("sdc", SERIAL, PORT_2), Candidate("sdd", SERIAL, PORT_3)], claims)
    assert both == {"sdc": SERIAL, "sdd": qualified(SERIAL, PORT_3)}
    # The same when the old NodeDevice is listed twice, once absent and once present.
    twice = [Claim(SERIAL, PORT_2, present=True), Claim(SERIAL, PORT_2, present=False)]
    again = resolve_duplicates([Candidate("sdc", SERIAL, PORT_2), Candidate("sdd", SERIAL, PORT_3)], twice)
    assert again == both


def test_a_malformed_nodedevice_does_not_hide_the_claims_of_the_ones_after_it() -> None:
    sys_path = "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdc"
    objects: dict[str, dict[str, object]] = {
        "bad-spec": {"spec": "text"},
        "no-path": {"spec": {"identity": SERIAL.to_api()}},
        "bad-identity": {"spec": {"identity": {"kind": "unheard-of", "value": ""}, "sysPath": sys_path}},
        "first": {"spec": {"identity": SERIAL.to_api(), "sysPath": sys_path}},
    }
    assert claims_from(objects) == [Claim(SERIAL, location(sys_path), present=False)]


def present_in(conditions: list[dict[str, str]] | None) -> bool:
    """Whether claims_from reads a NodeDevice as present, the object parsed from the API's JSON."""
    obj: dict[str, object] = {"spec": {"identity": SERIAL.to_api(), "sysPath": "/sys/devices/virtual/x"}}
    if conditions is not None:
        obj["status"] = {"conditions": conditions}
    (claim,) = claims_from({"x": json.loads(json.dumps(obj))})
    return claim.present


def test_a_nodedevice_is_present_only_when_its_present_condition_is_true() -> None:
    assert present_in([{"type": "Present", "status": "True"}])
    assert not present_in(None)  # just created, no status yet
    assert not present_in([])
    assert not present_in([{"type": "Present", "status": "Unknown"}])
    assert not present_in([{"type": "Present", "status": "False"}])
    # Other conditions, before Present and sorting either side of it, are not Present.
    assert not present_in([{"type": "Bound", "status": "True"}, {"type": "Present", "status": "False"}])
    assert not present_in([{"type": "Ready", "status": "True"}, {"type": "Present", "status": "False"}])
    assert not present_in([{"type": "Ready", "status": "True"}])
