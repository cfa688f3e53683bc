"""The metrics of real components: a storage-operator, a storage-agent whose driver hosts a real
`storage-agent supervise` runs, on the real control plane, with a real loop device hot-plugged.

What a user's dashboards and alerts depend on: the device gauge follows the attach and the
detach, the load and unload counters and histograms move once per load and unload, a crashing
driver moves the crash and restart counters (and the supervisor's exits), and every query of
docs/grafana-dashboard.json evaluates against these scrapes with the metrics, labels and label
values it names (tests/harness/promql.py).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from storage_driver_api.constants import (
    NODE_DEVICES,
    NODE_DRIVER_CONFIGS,
    NODE_LABEL,
    STORAGE_DRIVERS,
    node_label_value,
)
from storage_driver_api.kube import KubeClient
from storage_driver_api.nodedevice import is_present

from tests.conftest import REPO_ROOT, require
from tests.e2e.test_operator_with_agent import (
    DRIVER_FILE,
    EXAMPLE,
    agent_missing,
    node_device_for,
    start_operator,
)
from tests.harness import localcluster, promql
from tests.harness.drivers import write_probe
from tests.harness.loopdev import LoopDevice, detach
from tests.harness.processes import ComponentProcess, console_script
from tests.harness.waiting import eventually
from tests.integration.operator import simulated as sim
from tests.integration.operator.conftest import free_port, remove_agent_leases

DASHBOARD = REPO_ROOT / "docs" / "grafana-dashboard.json"
METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"
AGENT = "storage_driver_agent"
SUPERVISOR = "storage_driver_supervisor"
OPERATOR = "storage_driver_operator"


class Target:
    """One component's /metrics, with the labels Prometheus adds to its series (the chart's
    PodMonitor adds `node` and `component` to the agent's and the supervisor's)."""

    def __init__(self, url: str, labels: dict[str, str]):
        self.url = url
        self.labels = labels

    async def text(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.url) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"].startswith("text/plain")
            return await response.text()

    async def scrape(self) -> promql.Vector:
        return promql.parse_scrape(await self.text(), self.labels)


async def scrape_all(targets: list[Target]) -> promql.Vector:
    samples: promql.Vector = []
    for target in targets:
        samples += await target.scrape()
    return samples


def value(samples: promql.Vector, name: str, **labels: str) -> float:
    """The sum of the series of `name` with these labels (0 when there is none yet)."""
    return sum(v for k, v in samples if dict(k)["__name__"] == name and labels.items() <= dict(k).items())


async def present_loop_devices(kube: KubeClient, node: str) -> int:
    items, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={node_label_value(node)}")
    return sum(1 for i in items if (i.get("spec") or {}).get("type") == "loop" and is_present(i))


async def driver_status(kube: KubeClient, node: str, name: str) -> dict[str, Any]:
    config = await kube.get(NODE_DRIVER_CONFIGS, node)
    runs = {d["name"]: d for d in (config.get("status") or {}).get("drivers") or []}
    return runs.get(name) or {}


def storage_driver(name: str, size: int, **spec: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["name"] = name
    # A size nobody else on this shared machine uses, so that other loop devices do not match.
    manifest["spec"]["deviceSelector"] = [{"key": "sizeBytes", "operator": "In", "values": [str(size)]}]
    manifest["spec"].update(spec)
    return manifest


async def test_metrics_follow_a_hot_plug_a_crashing_driver_and_the_dashboard_evaluates(
    clean_cluster: KubeClient,
    cluster: localcluster.ClusterConfig,
    loop_devices: Callable[..., LoopDevice],
    tmp_path: Path,
) -> None:
    require(agent_missing())
    kube = clean_cluster
    node = localcluster.local_node_name()
    await sim.ensure_lease_namespace(kube)
    await remove_agent_leases(kube)
    driver_dir = tmp_path / "drivers"
    driver_dir.mkdir()
    shutil.copy(DRIVER_FILE, driver_dir / "loop_info.py")
    write_probe(driver_dir, "crasher.py", driver_name="Crasher Driver")
    state_dir = tmp_path / "state"
    size = 5 * 2**20 + random.randrange(1, 256) * 4096
    ports = {name: free_port() for name in ("operator", "supervisor", "agent")}
    env = {"KUBECONFIG": str(cluster.kubeconfig)}
    operator = start_operator(env, tmp_path / "operator.log", ports["operator"])
    supervisor = ComponentProcess(
        "supervisor",
        [
            console_script("storage-agent"),
            "supervise",
            "--state-dir",
            str(state_dir),
            "--metrics",
            f"127.0.0.1:{ports['supervisor']}",
            "--log-format",
            "text",
        ],
        tmp_path / "supervisor.log",
    ).start()
    supervisor.wait_for_log("supervisor listening")
    agent = ComponentProcess(
        "storage-agent",
        [
            console_script("storage-agent"),
            "--node-name",
            node,
            "--driver-dir",
            str(driver_dir),
            "--state-dir",
            str(state_dir),
            "--launcher",
            "supervisor",
            "--metrics",
            f"127.0.0.1:{ports['agent']}",
            "--health-interval",
            "0.5",
            "--restart-backoff",
            "0.5",
            "--log-format",
            "text",
        ],
        tmp_path / "agent.log",
        env=env,
    ).start()
    targets = [
        Target(f"http://127.0.0.1:{ports['operator']}/metrics", {}),
        Target(f"http://127.0.0.1:{ports['supervisor']}/metrics", {"node": node, "component": "supervisor"}),
        Target(f"http://127.0.0.1:{ports['agent']}/metrics", {"node": node, "component": "agent"}),
    ]
    try:
        await eventually(
            lambda: _ready(targets), timeout=90, what="agent and operator ready in their metrics"
        )
        before = await scrape_all(targets)
        started = time.monotonic()
        assert value(before, f"{AGENT}_driver_loads_total", driver="loop-info") == 0
        assert value(before, f"{AGENT}_watch_synced", kind="NodeDevice") == 1
        assert value(before, f"{AGENT}_watch_synced", kind="NodeDriverConfig") == 1

        await kube.create(STORAGE_DRIVERS, storage_driver("loop-info", size))
        # Unhealthy from the start and exiting after a second: health checks fail, the host
        # crashes, the agent restarts it.
        await kube.create(
            STORAGE_DRIVERS,
            storage_driver(
                "crasher",
                size,
                driverName="Crasher Driver",
                source={"hostPath": {"path": "crasher.py"}},
                config={"crashAfter": 1.0, "exitCode": 7, "unhealthy": True},
            ),
        )
        device = loop_devices(size_bytes=size)
        published = await eventually(
            lambda: node_device_for(kube, node, device), timeout=60, what=f"a NodeDevice for {device.path}"
        )

        async def loaded_and_crashed() -> bool:
            loop_info = await driver_status(kube, node, "loop-info")
            crasher = await driver_status(kube, node, "crasher")
            return (
                loop_info.get("phase") == "Loaded"
                and published in loop_info.get("boundDevices", [])
                and crasher.get("restarts", 0) >= 3
            )

        await eventually(
            loaded_and_crashed, timeout=120, what="loop-info Loaded and crasher restarted three times"
        )

        # The device gauge says what the API server holds for this node, the new device included.
        async def devices_counted() -> promql.Vector | None:
            samples = await scrape_all(targets)
            want = await present_loop_devices(kube, node)
            got = value(samples, f"{AGENT}_devices", type="loop", present="true")
            return samples if got == want >= 1 else None

        during = await eventually(devices_counted, what="the loop device gauge to match the NodeDevices")
        assert during is not None
        assert value(during, f"{AGENT}_driver_loads_total", driver="loop-info", result="loaded") == 1
        assert value(during, f"{AGENT}_driver_load_duration_seconds_count", result="loaded") >= 1
        assert value(during, f"{AGENT}_driver_load_duration_seconds_sum", result="loaded") > 0
        assert value(during, f"{AGENT}_drivers", phase="Loaded") >= 1
        assert value(during, f"{SUPERVISOR}_host_starts_total", driver="loop-info") == 1
        assert value(during, f"{SUPERVISOR}_hosts") >= 1
        assert (
            value(during, f"{SUPERVISOR}_requests_total", op="spawn", result="ok") >= 4
        )  # 1 + 3 crasher starts
        assert (
            value(during, f"{OPERATOR}_storagedriver_nodes", storagedriver="loop-info", state="loaded") == 1
        )

        # The crasher: each crash counted, each restart counted, as many as the status says.
        crasher = await driver_status(kube, node, "crasher")
        crashes = value(during, f"{AGENT}_driver_crashes_total", driver="crasher")
        restarts = value(during, f"{AGENT}_driver_restarts_total", driver="crasher")
        assert crashes >= 3 and restarts >= 3, (crashes, restarts)
        assert restarts >= crasher["restarts"] - 1  # the status may already count one more
        assert value(during, f"{SUPERVISOR}_host_exits_total", driver="crasher", outcome="error") >= 2
        assert value(during, f"{AGENT}_driver_health_checks_total", driver="crasher", result="unhealthy") >= 1
        assert value(during, f"{AGENT}_driver_health_checks_total", driver="loop-info", result="healthy") >= 1

        # Unplug, and drop the crasher: both unload (loop-info after its unloadDelaySeconds).
        await kube.delete(STORAGE_DRIVERS, "crasher")
        detach(device)

        async def unloaded() -> promql.Vector | None:
            samples = await scrape_all(targets)
            counted = value(samples, f"{AGENT}_driver_unloads_total", driver="loop-info", result="unloaded")
            # The supervisor counts the exit when it reaps the host, which may come a moment later.
            reaped = value(samples, f"{SUPERVISOR}_host_exits_total", driver="loop-info", outcome="clean")
            gone = not await driver_status(kube, node, "loop-info")
            return samples if counted == 1 and reaped >= 1 and gone else None

        after = await eventually(unloaded, timeout=90, what="loop-info unloaded and reaped, and counted once")
        assert after is not None
        assert value(after, f"{AGENT}_driver_unload_duration_seconds_count", result="unloaded") >= 1
        assert value(after, f"{SUPERVISOR}_host_exits_total", driver="loop-info", outcome="clean") == 1
        assert value(after, f"{AGENT}_driver_loads_total", driver="loop-info") == 1  # never loaded twice
        assert value(after, f"{AGENT}_devices", type="loop", present="true") == await present_loop_devices(
            kube, node
        )

        scrapes = promql.Scrapes(before, after, time.monotonic() - started)
        evaluate_the_dashboard(scrapes)
        evaluate_the_alerts(scrapes)
        for target, section in (
            (targets[2], "## The agent's metrics"),
            (targets[1], "## The supervisor's metrics"),
        ):
            served = set(re.findall(r"^# TYPE (storage_\S+) ", await target.text(), re.MULTILINE))
            assert served == documented(section), f"docs/metrics.md, {section}"
    finally:
        agent.stop()
        supervisor.stop()
        operator.stop()
        await remove_agent_leases(kube)
        print(
            f"--- operator log ---\n{operator.log(60)}\n--- agent log ---\n{agent.log(120)}\n"
            f"--- supervisor log ---\n{supervisor.log(40)}"
        )


def evaluate_the_dashboard(scrapes: promql.Scrapes) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {"node": ".*", "__rate_interval": "5m", "datasource": "prometheus"}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(METRIC, LABEL)
            metric, label = variable["query"]["query"].removeprefix("label_values(").rstrip(")").split(", ")
            promql.check_names(f'{metric}{{{label}=~".+"}}', scrapes)
    queries = promql.dashboard_queries(dashboard)
    assert len(queries) >= 20
    results: dict[str, promql.Value] = {}
    for title, query in queries:
        expr = promql.substitute(query, variables)
        try:
            promql.check_names(expr, scrapes)
            results[query] = promql.evaluate(expr, scrapes)
        except (promql.Invalid, promql.Unsupported, ValueError) as exc:
            raise AssertionError(f"panel {title!r}: {query}: {exc}") from exc
    # A few panels a user looks at first, with what this run did.
    loads = _only(results, "storage_driver_agent_driver_loads_total")
    assert any(dict(k).get("result") == "loaded" and v > 0 for k, v in loads), loads
    crashes = _only(results, "storage_driver_agent_driver_crashes_total")
    assert any(dict(k).get("driver") == "crasher" and v >= 2 for k, v in crashes), crashes
    latency = _only(
        results, "histogram_quantile(0.9, sum by (le) (rate(storage_driver_agent_driver_load_duration"
    )
    assert latency and all(0 < v < 60 for _, v in latency), latency


def documented(heading: str) -> set[str]:
    doc = METRICS_DOC.read_text()
    section = doc[doc.index(heading) :]
    section = section[: section.index("\n## ", 1)]
    return set(re.findall(r"`(storage_driver_[a-z_]+)`", section))


def evaluate_the_alerts(scrapes: promql.Scrapes) -> None:
    """The alert rules docs/metrics.md suggests name what exists and evaluate."""
    doc = METRICS_DOC.read_text()
    block = doc[doc.index("## Alerts worth having") :].split("```yaml\n", 1)[1].split("```", 1)[0]
    rules = yaml.safe_load(block)
    assert len(rules) >= 4
    for rule in rules:
        promql.check_names(rule["expr"], scrapes)
        promql.evaluate(rule["expr"], scrapes)
    crash_loop = next(r for r in rules if r["alert"] == "StorageDriverCrashLooping")
    firing = promql.evaluate(crash_loop["expr"], scrapes)
    assert isinstance(firing, list) and [dict(k)["driver"] for k, _ in firing] == ["crasher"]


def _only(results: dict[str, promql.Value], fragment: str) -> promql.Vector:
    """The result of the first dashboard query that contains `fragment`."""
    return next(v for q, v in results.items() if fragment in q and not isinstance(v, float))


async def _ready(targets: list[Target]) -> bool:
    try:
        samples = await scrape_all(targets)
    except aiohttp.ClientConnectionError:
        return False  # not listening yet
    return value(samples, f"{AGENT}_ready") == 1 and value(samples, f"{OPERATOR}_ready") == 1
