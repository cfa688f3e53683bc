"""The agent's device options: defaults, durations, and clear errors for bad values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from storage_driver_agent.devices.filters import DEFAULT_EXCLUDE_PATHS
from storage_driver_agent.devices.options import Options, parse_duration
from storage_driver_agent.main import build_parser
from storage_driver_sdk.devices import DeviceType


def parse(*argv: str) -> Options:
    return Options.from_args(build_parser().parse_args(list(argv)))


def test_defaults() -> None:
    options = parse()
    assert options.host_root == Path("/")
    assert options.resync_interval == 300.0
    assert options.retention == 600.0
    assert options.coalesce_window == 0.02
    assert options.uevent_source == "auto"
    assert options.filter.include_types is None
    assert options.filter.exclude_paths == DEFAULT_EXCLUDE_PATHS


def test_every_option_reaches_the_filter_and_timers() -> None:
    options = parse(
        "--host-root=/host",
        "--include-types=loop,virtio-block",
        "--exclude-types=partition",
        "--include-paths=/dev/loop*,vd*",
        "--exclude-paths=",
        "--exclude-backing-files=/tmp/*",
        "--resync-interval=2m",
        "--retention=30s",
        "--coalesce-window=5ms",
        "--uevent-source=kernel",
    )
    assert options.host_root == Path("/host")
    assert options.filter.include_types == frozenset({DeviceType.LOOP, DeviceType.VIRTIO_BLOCK})
    assert options.filter.exclude_types == frozenset({DeviceType.PARTITION})
    assert options.filter.include_paths == ("/dev/loop*", "vd*")
    assert options.filter.exclude_paths == ()
    assert options.filter.exclude_backing_files == ("/tmp/*",)
    assert (options.resync_interval, options.retention, options.coalesce_window) == (120.0, 30.0, 0.005)
    assert options.uevent_source == "kernel"


def test_durations() -> None:
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1.5s") == 1.5
    assert parse_duration(" 5m ") == 300.0
    assert parse_duration("1h") == 3600.0
    assert parse_duration("300") == 300.0
    with pytest.raises(ValueError, match="--retention: '10 minutes' is not a duration"):
        parse_duration("10 minutes", "--retention")


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--include-types=loop,disk", "argument --include-types: unknown device type 'disk'; valid types:"),
        ("--retention=soon", "argument --retention: 'soon' is not a duration"),
        ("--resync-interval=10ms", "argument --resync-interval: must be at least 1s, got '10ms'"),
    ],
)
def test_bad_values_are_refused_naming_the_option(
    argument: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([argument])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_parser_accepts_the_group_of_the_devices_part() -> None:
    group = argparse.ArgumentParser().add_argument_group("device discovery")
    Options.add_arguments(group)
    assert {a.dest for a in group._group_actions} >= {"host_root", "retention", "resync_interval"}
