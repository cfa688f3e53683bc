"""`sdctl devices` on recorded hosts: the table and the JSON show what the agent would publish."""

from __future__ import annotations

import json

import pytest
from storage_driver_agent.devices.describe import describe_all
from storage_driver_agent.devices.diff import desired
from storage_driver_agent.devices.filters import DeviceFilter
from storage_driver_cli.devices import human_size
from storage_driver_cli.main import main

from tests.unit.devices.hosts import HOSTS, probe


def test_json_is_the_nodedevices_the_agent_would_publish(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["devices", "--json", "--host-root", str(HOSTS / "nvme-workstation"), "--node-name", "worker-1"])
        == 0
    )
    objects = json.loads(capsys.readouterr().out)
    agent_view = desired(describe_all(probe("nvme-workstation"), "worker-1"), {}, "worker-1", DeviceFilter())
    assert {o["metadata"]["name"]: o["spec"] for o in objects} == {
        n: s.to_api() for n, s in agent_view.items()
    }
    assert all(o["kind"] == "NodeDevice" for o in objects)


def test_table_lists_each_device_with_type_size_and_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "--host-root", str(HOSTS / "sata-server"), "--node-name", "worker-1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "DEVICE",
        "TYPE",
        "SIZE",
        "TRANSPORT",
        "MODEL",
        "SERIAL",
        "IDENTITY",
        "NODEDEVICE",
        "NOTE",
    ]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"dm-0", "md127", "sda", "sda1", "sda2", "sdb", "sdb1"}
    assert (
        "scsi-disk" in rows["sda"] and "932 GiB" in rows["sda"] and "wwn:naa.5002538f4123abcd" in rows["sda"]
    )


def test_read_errors_are_noted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "--host-root", str(HOSTS / "virtio-vm"), "--node-name", "worker-1"]) == 0
    loop_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("loop0"))
    assert loop_row.endswith("1 unreadable attribute(s)")


def test_a_wrong_host_root_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    assert main(["devices", "--host-root", str(tmp_path)]) == 2
    assert "is not a directory; is --host-root right?" in capsys.readouterr().err


def test_human_sizes() -> None:
    assert human_size(None) == "-"
    assert human_size(0) == "0 B"
    assert human_size(8 * 1024 * 1024) == "8.0 MiB"
    assert human_size(274877906944) == "256 GiB"
