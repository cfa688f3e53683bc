"""The probe on this machine's real /sys and real loop devices (no cluster needed)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from storage_driver_agent.devices.describe import DescribedDevice, describe_all
from storage_driver_agent.devices.probe import Probe
from storage_driver_agent.devices.sysfs import HostRoot
from storage_driver_api.nodedevice import node_device_name

from tests.conftest import require
from tests.harness.loopdev import LoopDevice, loop_devices_available

NODE = "this-machine"


def probe_now() -> dict[str, DescribedDevice]:
    return {d.spec.kernel_name: d for d in describe_all(Probe(HostRoot("/")).all(), NODE)}


def sectors(name: str) -> int:
    return int(Path(f"/sys/class/block/{name}/size").read_text())


@pytest.fixture(scope="module")
def zram() -> Iterator[str]:
    """A zram device: this machine has zram0; elsewhere load the module for the test."""
    existing = sorted(p.name for p in Path("/sys/class/block").glob("zram*"))
    if existing:
        yield existing[0]
        return
    loaded = subprocess.run(["modprobe", "zram"], capture_output=True, text=True)
    require(
        None
        if loaded.returncode == 0
        else f"no zram device and 'modprobe zram' failed: {loaded.stderr.strip()}"
    )
    yield "zram0"
    subprocess.run(["modprobe", "-r", "zram"], capture_output=True)


def test_the_probe_finds_the_virtio_disk_and_the_zram_device(zram: str) -> None:
    virtio_disks = sorted(p.name for p in Path("/sys/class/block").glob("vd*") if not p.name[-1].isdigit())
    require(None if virtio_disks else "this machine has no virtio disk")
    found = probe_now()
    for name in virtio_disks:
        spec = found[name].spec
        assert spec.type == "virtio-block"
        assert spec.size_bytes == sectors(name) * 512
        assert spec.transport == "virtio" and spec.kernel_driver == "virtio_blk"
        assert spec.pci_address and spec.pci_address in Path(f"/sys/class/block/{name}").resolve().as_posix()
        assert spec.read_errors == []
    device = found[zram].spec
    assert device.type == "zram"
    assert device.size_bytes == sectors(zram) * 512
    assert device.identity.value == f"{NODE}/{zram}"


def test_an_attached_loop_device_is_found_with_its_backing_inode_and_a_detached_one_is_not(
    loop_devices: Callable[..., LoopDevice],
) -> None:
    device = loop_devices(size_bytes=3 * 1024 * 1024)
    spec = probe_now()[device.name].spec
    stat = device.backing_file.stat()
    assert spec.type == "loop"
    assert spec.size_bytes == 3 * 1024 * 1024
    assert spec.backing_file == str(device.backing_file)
    assert spec.identity.value.startswith(
        f"{NODE}/{device.name}/{device.backing_file}@{stat.st_dev}:{stat.st_ino}"
    )
    assert spec.read_errors == []
    subprocess.run(["losetup", "--detach", str(device.path)], check=True)
    assert device.name not in probe_now()
    assert Probe(HostRoot("/")).some([device.name]) == {device.name: None}


def attach_at(loop: Path, backing: Path) -> bool:
    return subprocess.run(["losetup", str(loop), str(backing)], capture_output=True).returncode == 0


def test_a_loop_device_reattached_to_a_new_file_at_the_same_path_gets_a_new_nodedevice(
    tmp_path: Path,
) -> None:
    require(loop_devices_available())
    backing = tmp_path / "disk.img"
    for _ in range(3):  # another test on this machine may take the free loop device first
        backing.unlink(missing_ok=True)
        with backing.open("wb") as handle:
            handle.truncate(2 * 1024 * 1024)
        loop = Path(
            subprocess.run(["losetup", "--find"], capture_output=True, text=True, check=True).stdout.strip()
        )
        if not attach_at(loop, backing):
            continue
        try:
            first = probe_now()[loop.name].spec.identity
            subprocess.run(["losetup", "--detach", str(loop)], check=True)
            if not attach_at(loop, backing):  # the same file again
                continue
            again = probe_now()[loop.name].spec.identity
            subprocess.run(["losetup", "--detach", str(loop)], check=True)
            backing.unlink()  # a new file at the same path: a new inode
            with backing.open("wb") as handle:
                handle.truncate(2 * 1024 * 1024)
            if not attach_at(loop, backing):
                continue
            replaced = probe_now()[loop.name].spec.identity
        finally:
            if Path(f"/sys/block/{loop.name}/loop/backing_file").exists():
                current = Path(f"/sys/block/{loop.name}/loop/backing_file").read_text().strip()
                if current.startswith(str(tmp_path)):
                    subprocess.run(["losetup", "--detach", str(loop)], capture_output=True)
        assert again == first
        assert replaced != first
        assert node_device_name(NODE, replaced) != node_device_name(NODE, first)
        assert f"@{backing.stat().st_dev}:{backing.stat().st_ino}" in replaced.value
        return
    pytest.fail("could not attach the same loop device three times in a row (busy machine?)")
