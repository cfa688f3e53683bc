"""`sdctl plan`, `sdctl drivers` and `sdctl driver` against the local control plane (no operator
running: the tests write NodeDriverConfigs as the operator and agents would)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from storage_driver_api.constants import NODE_DRIVER_CONFIGS, STORAGE_DRIVERS
from storage_driver_api.kube import KubeClient

from tests.conftest import REPO_ROOT
from tests.harness.localcluster import ClusterConfig
from tests.harness.processes import console_script
from tests.integration.operator import simulated as sim
from tests.integration.operator.test_reconcile import live_node

NodeFactory = Callable[..., Any]
EXAMPLE = REPO_ROOT / "examples" / "storagedriver-loop.yaml"


def sdctl(cluster: ClusterConfig, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("sdctl"), *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


async def write_spec(kube: KubeClient, node: str, *entries: dict[str, Any]) -> None:
    """Put entries in a node's NodeDriverConfig spec, as the operator would have."""
    await sim.report(kube, node, available=[sim.available_entry("loop_info.py")])
    await kube.patch(NODE_DRIVER_CONFIGS, node, {"spec": {"drivers": list(entries)}})


def loop_entry(node: str, version: str = "1.0.0") -> dict[str, Any]:
    return {
        "name": "loop-info",
        "driverName": "Loop Info Driver",
        "version": version,
        "source": {"kind": "hostPath", "path": "loop_info.py"},
        "config": {},
        "unloadGracePeriodSeconds": 5,
        "devices": [f"{node}-loop0"],
        "priority": 0,
    }


async def test_plan_shows_every_node_with_a_reason_and_changes_nothing(
    clean_cluster: KubeClient, make_node: NodeFactory, cluster: ClusterConfig
) -> None:
    kube = clean_cluster
    await sim.ensure_lease_namespace(kube)
    a = await live_node(make_node, kube, "pl-a")
    b = await live_node(make_node, kube, "pl-b")
    await live_node(make_node, kube, "pl-c")
    await sim.add_device(kube, "pl-a", "pl-a-loop0", node_uid=a)
    await sim.add_device(kube, "pl-b", "pl-b-loop0", node_uid=b)
    await sim.report(kube, "pl-a", available=[sim.available_entry("loop_info.py")])
    before = (await kube.get(NODE_DRIVER_CONFIGS, "pl-a"))["metadata"]["resourceVersion"]

    result = sdctl(cluster, "plan", "-f", str(EXAMPLE), "-o", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [p["storageDriver"] for p in plan] == ["loop-info"]
    assert plan[0]["state"] == "new"
    nodes = {n["node"]: n for n in plan[0]["nodes"]}
    assert (nodes["pl-a"]["action"], nodes["pl-a"]["devices"]) == ("load", ["pl-a-loop0"])
    assert (nodes["pl-b"]["action"], nodes["pl-b"]["reason"]) == ("-", "DriverNotAvailable")
    assert (nodes["pl-c"]["action"], nodes["pl-c"]["reason"]) == ("-", "NoMatchingDevices")
    assert all(n["message"] for n in nodes.values())

    text = sdctl(cluster, "plan", "-f", str(EXAMPLE))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("StorageDriver loop-info (new): load on 1; not on ")
    assert lines[1].split() == ["NODE", "ACTION", "VERSION", "DEVICES", "REASON", "DETAIL"]
    assert any(line.split()[:2] == ["pl-a", "load"] for line in lines)

    assert await kube.get_or_none(STORAGE_DRIVERS, "loop-info") is None
    assert (await kube.get(NODE_DRIVER_CONFIGS, "pl-a"))["metadata"]["resourceVersion"] == before


async def test_plan_of_a_new_version_shows_the_rollout(
    clean_cluster: KubeClient, make_node: NodeFactory, cluster: ClusterConfig, tmp_path: Path
) -> None:
    kube = clean_cluster
    await sim.ensure_lease_namespace(kube)
    manifest = yaml.safe_load(EXAMPLE.read_text())
    await kube.create(STORAGE_DRIVERS, manifest)
    for name in ("ru-a", "ru-b"):
        uid = await live_node(make_node, kube, name)
        await sim.add_device(kube, name, f"{name}-loop0", node_uid=uid)
        await write_spec(kube, name, loop_entry(name))
        await sim.report_loaded(kube, name)

    unchanged = sdctl(cluster, "plan", "-f", str(EXAMPLE), "-o", "json")
    assert json.loads(unchanged.stdout)[0]["state"] == "unchanged"
    assert {n["action"] for n in json.loads(unchanged.stdout)[0]["nodes"] if n["node"].startswith("ru-")} == {
        "keep"
    }

    manifest["spec"]["version"] = "1.1.0"
    newer = tmp_path / "newer.yaml"
    newer.write_text(yaml.safe_dump(manifest))

    def plan_newer() -> dict[str, dict[str, Any]]:
        result = sdctl(cluster, "plan", "-f", str(newer), "-o", "json")
        assert result.returncode == 0, result.stderr
        return {n["node"]: n for n in json.loads(result.stdout)[0]["nodes"]}

    # The nodes' file still declares 1.0.0: no node switches to a version it cannot load.
    for node in plan_newer().values():
        if node["node"].startswith("ru-"):
            assert (node["action"], node["reason"], node["version"]) == (
                "hold",
                "DriverNotAvailable",
                "1.0.0",
            )
            assert "declares version 1.0.0" in node["message"]

    for name in ("ru-a", "ru-b"):
        await sim.report(kube, name, available=[sim.available_entry("loop_info.py", "v1.1", version="1.1.0")])
    nodes = plan_newer()
    assert (nodes["ru-a"]["action"], nodes["ru-a"]["version"]) == ("update", "1.1.0")
    assert (nodes["ru-b"]["action"], nodes["ru-b"]["reason"], nodes["ru-b"]["version"]) == (
        "hold",
        "RolloutPending",
        "1.0.0",
    )


async def test_plan_refuses_what_it_cannot_plan(
    clean_cluster: KubeClient, cluster: ClusterConfig, tmp_path: Path
) -> None:
    invalid = yaml.safe_load(EXAMPLE.read_text())
    invalid["spec"]["deviceSelector"] = [{"key": "model", "operator": "Regex", "values": ["(["]}]
    result = sdctl(cluster, "plan", "-f", "-", stdin=yaml.safe_dump(invalid))
    assert result.returncode == 2
    assert "spec.deviceSelector[0].values" in result.stderr
    assert "InvalidSpec" in result.stderr

    other = tmp_path / "cm.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    result = sdctl(cluster, "plan", "-f", str(other))
    assert result.returncode == 2
    assert "no StorageDriver in the file" in result.stderr
    assert sdctl(cluster, "plan", "-f", str(tmp_path / "missing.yaml")).returncode == 2


async def test_drivers_and_driver_show_what_nodes_run(
    clean_cluster: KubeClient, make_node: NodeFactory, cluster: ClusterConfig
) -> None:
    kube = clean_cluster
    await sim.ensure_lease_namespace(kube)
    await kube.create(STORAGE_DRIVERS, yaml.safe_load(EXAMPLE.read_text()))
    uid = await live_node(make_node, kube, "dr-a")
    await sim.add_device(kube, "dr-a", "dr-a-loop0", node_uid=uid)
    await write_spec(kube, "dr-a", loop_entry("dr-a"))
    crash = {"reason": "Crashed", "message": "driver host exited with 3", "time": sim.stamp()}
    await sim.report(
        kube,
        "dr-a",
        drivers=[
            {"name": "loop-info", "phase": "Failed", "version": "1.0.0", "restarts": 2, "lastError": crash}
        ],
    )

    result = sdctl(cluster, "drivers", "--node", "dr-a", "-o", "json")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert (row["driver"], row["phase"], row["restarts"]) == ("loop-info", "Failed", 2)
    assert row["error"] == "Crashed: driver host exited with 3"
    table = sdctl(cluster, "drivers")
    assert table.stdout.splitlines()[1].split()[:6] == ["dr-a", "loop-info", "1.0.0", "Failed", "-", "2"]
    assert sdctl(cluster, "drivers", "--node", "nowhere").returncode == 1

    shown = sdctl(cluster, "driver", "loop-info", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["storageDriver"]["metadata"]["name"] == "loop-info"
    nodes = {n["node"]: n for n in detail["nodes"]}
    assert (nodes["dr-a"]["phase"], nodes["dr-a"]["decision"], nodes["dr-a"]["inSpec"]) == (
        "Failed",
        "keep",
        True,
    )
    text = sdctl(cluster, "driver", "loop-info").stdout
    assert "Driver:       Loop Info Driver 1.0.0" in text
    assert "Per node:" in text
    missing = sdctl(cluster, "driver", "no-such-driver")
    assert missing.returncode == 1 and "not found" in missing.stderr


async def test_plan_with_directory_autoload_shows_the_file_a_new_storage_driver_takes_over(
    clean_cluster: KubeClient, make_node: NodeFactory, cluster: ClusterConfig
) -> None:
    kube = clean_cluster
    await sim.ensure_lease_namespace(kube)
    uid = await live_node(make_node, kube, "pl-auto")
    await sim.add_device(kube, "pl-auto", "pl-auto-loop0", node_uid=uid)
    file = {**sim.available_entry("loop_info.py"), "supportedDevices": ["loop"], "autoLoad": True}
    await sim.report(kube, "pl-auto", available=[file])
    entry = {**loop_entry("pl-auto"), "name": "file:loop_info.py"}
    await kube.patch(NODE_DRIVER_CONFIGS, "pl-auto", {"spec": {"drivers": [entry]}})

    # Planned as an operator without the setting: the file's entry leaves anyway, not because of
    # the new StorageDriver.
    plain = json.loads(sdctl(cluster, "plan", "-f", str(EXAMPLE), "-o", "json").stdout)
    assert plain[0]["sideEffects"] == []
    result = sdctl(cluster, "plan", "--directory-autoload", "-f", str(EXAMPLE), "-o", "json")
    assert result.returncode == 0, result.stderr
    (planned,) = json.loads(result.stdout)
    (row,) = [n for n in planned["nodes"] if n["node"] == "pl-auto"]
    assert (row["action"], row["devices"]) == ("load", ["pl-auto-loop0"])
    assert planned["sideEffects"] == [
        "file:loop_info.py would leave pl-auto (ClaimedByStorageDriver: a StorageDriver declares driver "
        "'Loop Info Driver', which loop_info.py declares; the StorageDriver decides where it runs)"
    ]
