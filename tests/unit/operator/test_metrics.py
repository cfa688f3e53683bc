"""The operator's metric families, as a Prometheus server reads them."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from storage_driver_operator.metrics import (
    DriverStats,
    InformerStats,
    Snapshot,
    listen_address,
    registry,
    render,
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted labels) -> value, as a Prometheus server parses the exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_render_lists_every_family_with_help_and_type() -> None:
    text = render(
        Snapshot(
            ready=True,
            ready_seconds=1.5,
            counters={"plans": 7, "spec_writes": 2},
            informers=[InformerStats("nodedevices", 16000, 1, 3, 42, True)],
            drivers=[DriverStats('odd "name"\n', 3, 2, 1, 1, False)],
        )
    )
    found = samples(text)
    assert found["storage_driver_operator_ready", ()] == 1
    assert found["storage_driver_operator_ready_seconds", ()] == 1.5
    assert found["storage_driver_operator_plans_total", ()] == 7
    assert found["storage_driver_operator_status_writes_total", ()] == 0
    assert found["storage_driver_operator_cached_objects", (("kind", "nodedevices"),)] == 16000
    assert found["storage_driver_operator_cache_watch_events_total", (("kind", "nodedevices"),)] == 42
    # A label value is escaped: the name comes back as it was.
    labels = (("state", "failed"), ("storagedriver", 'odd "name"\n'))
    assert found["storage_driver_operator_storagedriver_nodes", labels] == 1
    assert found["storage_driver_operator_storagedriver_ready", (("storagedriver", 'odd "name"\n'),)] == 0
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families))
    for family in families:
        assert f"# HELP {family} " in text


def test_not_ready_before_the_first_plan() -> None:
    found = samples(render(Snapshot(ready=False, ready_seconds=None, counters={})))
    assert found["storage_driver_operator_ready", ()] == 0
    assert not [name for name, _ in found if "ready_seconds" in name]


def test_a_scrape_reads_the_snapshot_then_and_adds_the_process_metrics() -> None:
    current = [Snapshot(ready=False, ready_seconds=None, counters={})]
    served = registry(lambda: current[0])
    current[0] = Snapshot(ready=True, ready_seconds=2.0, counters={"events": 3})
    found = samples(generate_latest(served).decode())
    assert found["storage_driver_operator_ready", ()] == 1
    assert found["storage_driver_operator_events_total", ()] == 3
    assert found["process_resident_memory_bytes", ()] > 0


@pytest.mark.parametrize("url", ["0.0.0.0:8081", "https://0.0.0.0:8081/metrics", "http://0.0.0.0/metrics"])
def test_a_bad_metrics_address_names_the_flag_and_the_form(url: str) -> None:
    with pytest.raises(ValueError, match=r"--metrics .*expected http://HOST:PORT/PATH"):
        listen_address(url)


def test_listen_address() -> None:
    assert listen_address("http://127.0.0.1:9100/m") == ("127.0.0.1", 9100, "/m")
    assert listen_address("http://0.0.0.0:8081") == ("0.0.0.0", 8081, "/metrics")
