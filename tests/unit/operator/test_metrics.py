"""Rendering the Prometheus exposition format (pure)."""

from __future__ import annotations

import pytest
from storage_driver_operator.metrics import DriverStats, InformerStats, Snapshot, listen_address, render


def test_render_lists_every_family_with_help_and_type() -> None:
    text = render(
        Snapshot(
            ready=True,
            ready_seconds=1.5,
            counters={"plans": 7, "spec_writes": 2},
            informers=[InformerStats("nodedevices", 16000, 1, 3, 42, True)],
            drivers=[DriverStats('odd "name"', 3, 2, 1, 1, False)],
        )
    )
    lines = text.splitlines()
    assert "storage_driver_operator_ready 1" in lines
    assert "storage_driver_operator_ready_seconds 1.5" in lines
    assert "storage_driver_operator_plans_total 7" in lines
    assert "storage_driver_operator_status_writes_total 0" in lines
    assert 'storage_driver_operator_cached_objects{kind="nodedevices"} 16000' in lines
    assert (
        'storage_driver_operator_storagedriver_nodes{storagedriver="odd \\"name\\"",state="failed"} 1'
        in lines
    )
    families = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(families) == len(set(families))
    for family in families:
        assert f"# HELP {family} " in text


def test_not_ready_before_the_first_plan() -> None:
    text = render(Snapshot(ready=False, ready_seconds=None, counters={}))
    assert "storage_driver_operator_ready 0" in text.splitlines()
    assert "ready_seconds" not in text


@pytest.mark.parametrize("url", ["0.0.0.0:8081", "https://0.0.0.0:8081/metrics", "http://0.0.0.0/metrics"])
def test_a_bad_metrics_address_names_the_flag_and_the_form(url: str) -> None:
    with pytest.raises(ValueError, match=r"--metrics .*expected http://HOST:PORT/PATH"):
        listen_address(url)


def test_listen_address() -> None:
    assert listen_address("http://127.0.0.1:9100/m") == ("127.0.0.1", 9100, "/m")
    assert listen_address("http://0.0.0.0:8081") == ("0.0.0.0", 8081, "/metrics")
