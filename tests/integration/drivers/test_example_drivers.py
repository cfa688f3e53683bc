"""The sample drivers doing real work on real loop devices, each in a real driver host."""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from storage_driver_agent.drivers.host import HOST_MODULE
from storage_driver_agent.drivers.hostclient import HostCallError, HostConnection
from storage_driver_agent.drivers.launcher import DirectLauncher, HostProcess
from storage_driver_sdk.protocol import Op

from tests.harness.drivers import kill_hosts, loop_node_device, short_tmpdir
from tests.harness.loopdev import LoopDevice
from tests.harness.waiting import eventually

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "drivers"


@pytest.fixture
def root() -> Iterator[Path]:
    path = short_tmpdir()
    yield path
    kill_hosts(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def launcher() -> AsyncIterator[DirectLauncher]:
    launcher = DirectLauncher()
    yield launcher
    await launcher.close()


async def start_example(
    launcher: DirectLauncher, root: Path, file: str, *, driver: str, cls: str, version: str
) -> tuple[HostProcess, HostConnection]:
    path = EXAMPLES / file
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    socket = root / f"{file}.sock"
    argv = [
        sys.executable, "-m", HOST_MODULE, "--name", file, "--driver-name", driver, "--version", version,
        "--sha256", sha, "--path", str(path), "--class-name", cls, "--socket", str(socket),
        "--state-file", str(root / f"{file}.json"), "--memory-limit", str(256 * 2**20),
    ]  # fmt: skip
    pid = await launcher.spawn(file, argv, root / f"{file}.log")
    process = HostProcess(pid, socket)
    return process, await HostConnection.connect(socket, alive=lambda: launcher.alive(process))


def device_message(device: LoopDevice) -> dict[str, object]:
    obj = loop_node_device("test-node", device)
    return {"name": obj["metadata"]["name"], "spec": obj["spec"]}


async def test_loop_info_reports_size_backing_file_and_io(
    root: Path, launcher: DirectLauncher, loop_devices: Callable[..., LoopDevice]
) -> None:
    device = loop_devices(size_bytes=6 * 1024 * 1024)
    with device.path.open("rb") as handle:  # some real reads, so the statistics move
        handle.read(1024 * 1024)
    _, conn = await start_example(
        launcher, root, "loop_info.py", driver="Loop Info Driver", cls="LoopInfoDriver", version="1.0.0"
    )
    message = device_message(device)
    result = await conn.call(Op.LOAD, {"config": {}, "devices": [message]})
    facts = result["attached"][message["name"]]
    assert facts["sizeBytes"] == 6 * 1024 * 1024
    assert facts["backingFile"] == str(device.backing_file)
    assert facts["kernelName"] == device.name
    assert facts["readBytes"] >= 1024 * 1024 and facts["readIos"] > 0
    assert (await conn.call(Op.HEALTH))["healthy"] is True

    not_loop = {
        "name": "vda",
        "spec": {
            "type": "virtio-block",
            "kernelName": "zram0",
            "sysPath": "/sys/devices/virtual/block/zram0",
        },
    }
    with pytest.raises(HostCallError, match="is not a loop device"):
        await conn.call(Op.ATTACH, {"device": not_loop})

    await conn.call(Op.UNLOAD)


async def test_loop_info_notices_a_device_detached_underneath(
    root: Path, launcher: DirectLauncher, loop_devices: Callable[..., LoopDevice]
) -> None:
    device = loop_devices()
    _, conn = await start_example(
        launcher, root, "loop_info.py", driver="Loop Info Driver", cls="LoopInfoDriver", version="1.0.0"
    )
    await conn.call(Op.LOAD, {"config": {}, "devices": [device_message(device)]})
    from tests.harness.loopdev import detach

    detach(device)
    health = await conn.call(Op.HEALTH)
    assert health["healthy"] is False and "detached underneath" in health["message"]


def read_ahead(device: LoopDevice) -> int:
    return int(Path(f"/sys/block/{device.name}/queue/read_ahead_kb").read_text())


def set_read_ahead(device: LoopDevice, kb: int) -> None:
    Path(f"/sys/block/{device.name}/queue/read_ahead_kb").write_text(str(kb))


async def test_queue_settings_applies_config_and_restores_it(
    root: Path, launcher: DirectLauncher, loop_devices: Callable[..., LoopDevice]
) -> None:
    device = loop_devices()
    original = read_ahead(device)
    wanted = 1024 if original != 1024 else 2048
    process, conn = await start_example(
        launcher,
        root,
        "queue_settings.py",
        driver="Queue Settings Driver",
        cls="QueueSettingsDriver",
        version="1.1.0",
    )
    message = device_message(device)
    result = await conn.call(Op.LOAD, {"config": {"read_ahead_kb": wanted}, "devices": [message]})
    assert result["attached"][message["name"]] == {"read_ahead_kb": f"{original} -> {wanted}"}
    assert read_ahead(device) == wanted
    assert (await conn.call(Op.HEALTH))["healthy"] is True

    set_read_ahead(device, 64)  # someone changes it
    drift = await conn.call(Op.HEALTH)
    assert drift["healthy"] is False and "read_ahead_kb" in drift["message"]
    set_read_ahead(device, wanted)

    await conn.call(Op.UNLOAD)  # detach restores the previous value
    assert read_ahead(device) == original
    await eventually(lambda: _exited(launcher, process), what="the host to exit")


async def _exited(launcher: DirectLauncher, process: HostProcess) -> bool:
    return not await launcher.alive(process)


async def test_queue_settings_refuses_bad_config_and_rolls_back_partial_settings(
    root: Path, launcher: DirectLauncher, loop_devices: Callable[..., LoopDevice]
) -> None:
    device = loop_devices()
    refused, conn = await start_example(
        launcher,
        root,
        "queue_settings.py",
        driver="Queue Settings Driver",
        cls="QueueSettingsDriver",
        version="1.1.0",
    )
    with pytest.raises(HostCallError, match=r"unknown queue setting.*format_disk"):
        await conn.call(Op.LOAD, {"config": {"format_disk": True}})
    # The next host serves the same socket path: let this one go first, or the next connect may
    # reach this host's closing listener.
    assert await launcher.wait_exited(refused, 10)

    original = read_ahead(device)
    _, conn = await start_example(
        launcher,
        root,
        "queue_settings.py",
        driver="Queue Settings Driver",
        cls="QueueSettingsDriver",
        version="1.1.0",
    )
    message = device_message(device)
    # read_ahead_kb is applied first, then the kernel refuses the scheduler: both end as before.
    result = await conn.call(
        Op.LOAD,
        {"config": {"read_ahead_kb": original + 512, "scheduler": "no-such-scheduler"}, "devices": [message]},
    )
    assert message["name"] in result["failed"]
    assert read_ahead(device) == original
