"""The agent's scrape-time metrics from its state, the supervisor's op label, and the small PromQL
evaluator the dashboard test relies on (tests/harness/promql.py), on hand-made scrapes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector
from storage_driver_agent.drivers.supervisor import _op_label
from storage_driver_agent.metrics import AgentState, state_metrics
from storage_driver_sdk.devices import ALL_DEVICE_TYPES

from tests.harness import promql


def device(kind: str, present: str | None) -> dict[str, Any]:
    status = {"conditions": [{"type": "Present", "status": present}]} if present else {}
    return {"spec": {"type": kind}, "status": status}


def scrape(state: AgentState) -> promql.Vector:
    class Fixed(Collector):
        def collect(self):
            yield from state_metrics(state)

    registry = CollectorRegistry()
    registry.register(Fixed())
    return promql.parse_scrape(generate_latest(registry).decode())


def value(samples: promql.Vector, name: str, **labels: str) -> float:
    matching = [v for k, v in samples if dict(k)["__name__"] == name and labels.items() <= dict(k).items()]
    assert len(matching) == 1, (name, labels, matching)
    return matching[0]


def test_devices_are_counted_by_type_and_presence_with_every_type_present_as_zero() -> None:
    state = AgentState(
        devices=lambda: [
            device("loop", "True"),
            device("loop", "False"),
            device("loop", None),  # Present not written yet: present
            device("scsi-disk", "True"),
        ]
    )
    samples = scrape(state)
    assert value(samples, "storage_driver_agent_devices", type="loop", present="true") == 2
    assert value(samples, "storage_driver_agent_devices", type="loop", present="false") == 1
    assert value(samples, "storage_driver_agent_devices", type="scsi-disk", present="true") == 1
    # A type with no device is 0, not missing: a device going shows as 1 -> 0 on a graph.
    types = {dict(k)["type"] for k, _ in samples if dict(k)["__name__"] == "storage_driver_agent_devices"}
    assert types == set(ALL_DEVICE_TYPES)
    assert value(samples, "storage_driver_agent_devices", type="nvme-namespace", present="true") == 0


def test_drivers_are_counted_by_phase_every_phase_listed() -> None:
    samples = scrape(AgentState(phases=lambda: ["Loaded", "Loaded", "Failed"]))
    assert value(samples, "storage_driver_agent_drivers", phase="Loaded") == 2
    assert value(samples, "storage_driver_agent_drivers", phase="Failed") == 1
    assert value(samples, "storage_driver_agent_drivers", phase="Pending") == 0


def test_api_answers_readiness_and_counters_come_from_the_state() -> None:
    samples = scrape(
        AgentState(
            api_responses=lambda: {("GET", "200"): 5, ("PATCH", "409"): 1, ("WATCH", "error"): 2},
            uevents=lambda: 7,
            ready=lambda: True,
        )
    )
    assert value(samples, "storage_driver_agent_api_requests_total", verb="PATCH", code="409") == 1
    assert value(samples, "storage_driver_agent_api_requests_total", verb="WATCH", code="error") == 2
    assert value(samples, "storage_driver_agent_uevents_total") == 7
    assert value(samples, "storage_driver_agent_ready") == 1


@pytest.mark.parametrize(
    ("request_", "label"),
    [
        ({"op": "spawn"}, "spawn"),
        ({"op": "end_tree"}, "end_tree"),
        ({"op": "wait"}, "wait"),
        ({"op": "x" * 200}, "other"),
        ({}, "other"),
    ],
)
def test_a_supervisor_op_label_takes_only_known_ops(request_: dict[str, Any], label: str) -> None:
    assert _op_label(request_) == label


# --- the PromQL evaluator ------------------------------------------------------------------

BEFORE = """
# TYPE loads counter
loads_total{driver="a",result="loaded"} 1
loads_total{driver="b",result="loaded"} 3
# TYPE up gauge
up{job="x"} 1
# TYPE lat histogram
lat_bucket{le="1.0"} 0
lat_bucket{le="2.0"} 0
lat_bucket{le="+Inf"} 0
lat_count 0
lat_sum 0
"""
AFTER = """
# TYPE loads counter
loads_total{driver="a",result="loaded"} 4
loads_total{driver="b",result="loaded"} 3
loads_total{driver="c",result="failed"} 2
# TYPE up gauge
up{job="x"} 0
# TYPE lat histogram
lat_bucket{le="1.0"} 2
lat_bucket{le="2.0"} 4
lat_bucket{le="+Inf"} 4
lat_count 4
lat_sum 5
"""
SCRAPES = promql.Scrapes(promql.parse_scrape(BEFORE), promql.parse_scrape(AFTER), seconds=10.0)


def result(query: str) -> dict[tuple[tuple[str, str], ...], float] | float:
    value = promql.evaluate(query, SCRAPES)
    return value if isinstance(value, float) else dict(value)


def test_rate_and_increase_over_the_two_scrapes() -> None:
    assert result("sum by (result) (increase(loads_total[5m]))") == {
        (("result", "loaded"),): 3.0,
        (("result", "failed"),): 2.0,  # born between the scrapes: counted from 0
    }
    assert result('rate(loads_total{driver="a"}[1m])') == {(("driver", "a"), ("result", "loaded")): 0.3}


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    median = result("histogram_quantile(0.5, sum by (le) (rate(lat_bucket[5m])))")
    assert median == {(): 1.0}
    p75 = result("histogram_quantile(0.75, sum by (le) (rate(lat_bucket[5m])))")
    assert p75 == {(): 1.5}


def test_comparisons_filter_and_arithmetic_combines_matching_series() -> None:
    assert result("sum(up) > 0") == {}
    assert result("count(loads_total) - sum(up)") == {(): 3.0}
    assert result('loads_total{result="loaded"} / on (driver) loads_total') == {
        (("driver", "a"), ("result", "loaded")): 1.0,
        (("driver", "b"), ("result", "loaded")): 1.0,
    }
    assert math.isnan(promql.evaluate("0 / 0", SCRAPES))  # type: ignore[arg-type]


def test_names_labels_and_values_are_checked_against_the_scrape() -> None:
    promql.check_names('sum by (driver) (rate(loads_total{result="failed"}[5m]))', SCRAPES)
    with pytest.raises(promql.Invalid, match="no metric loads_totl"):
        promql.check_names("loads_totl", SCRAPES)
    with pytest.raises(promql.Invalid, match="no label 'reason'"):
        promql.check_names('loads_total{reason="x"}', SCRAPES)
    with pytest.raises(promql.Invalid, match="no such value"):
        promql.check_names('loads_total{result="loded"}', SCRAPES)


def test_promql_outside_the_subset_is_refused_not_passed() -> None:
    with pytest.raises(promql.Unsupported, match="topk"):
        promql.evaluate("topk(1, up)", SCRAPES)
    with pytest.raises(promql.Unsupported, match="predict_linear"):
        promql.evaluate("predict_linear(up[5m], 60)", SCRAPES)


def test_grafana_variables_are_substituted_longest_first() -> None:
    assert (
        promql.substitute(
            'x{node=~"$node", n="$node_x"}[$__rate_interval]',
            {
                "node": ".*",
                "node_x": "y",
                "__rate_interval": "5m",
            },
        )
        == 'x{node=~".*", n="y"}[5m]'
    )
