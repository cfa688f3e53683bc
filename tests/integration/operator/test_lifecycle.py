"""StorageDriver deletion with the finalizer, restarts of the operator (which must write
nothing), rolling version changes, the liveness endpoint, and running with no arguments."""

from __future__ import annotations

import asyncio
import copy
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from storage_driver_api.constants import FINALIZER, NODE_DRIVER_CONFIGS, STORAGE_DRIVERS
from storage_driver_api.kube import LEASES, NODES, KubeClient

from tests.conftest import kubectl, require
from tests.harness import accounts, helm
from tests.harness.localcluster import ClusterConfig
from tests.harness.processes import ComponentProcess, console_script
from tests.harness.waiting import consistently, eventually
from tests.integration.operator import simulated as sim
from tests.integration.operator.conftest import Operator, free_port
from tests.integration.operator.test_reconcile import devices_of, live_node, wait_devices, wait_status

KOPF_RELEASE = "sdo-kopf"

NodeFactory = Callable[..., Any]


async def loaded_everywhere(kube: KubeClient, nodes: list[str], driver: str) -> None:
    for node in nodes:
        await wait_devices(kube, node, driver, [f"{node}-loop0"])
        await sim.report_loaded(kube, node)


async def unloaded(kube: KubeClient, node: str) -> None:
    """The node's agent reports it runs nothing any more."""
    await sim.report(kube, node, drivers=[])


async def test_deletion_waits_until_every_live_node_has_unloaded(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    for name in ("del-a", "del-b"):
        uid = await live_node(make_node, kube, name)
        await sim.add_device(kube, name, f"{name}-loop0", node_uid=uid)
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("loop-info"))
    await loaded_everywhere(kube, ["del-a", "del-b"], "loop-info")

    async def finalizer() -> bool:
        obj = await kube.get(STORAGE_DRIVERS, "loop-info")
        return FINALIZER in (obj["metadata"].get("finalizers") or [])

    await eventually(finalizer, what="the operator's finalizer on the StorageDriver")
    await kube.delete(STORAGE_DRIVERS, "loop-info")
    await wait_devices(kube, "del-a", "loop-info", None)
    await wait_devices(kube, "del-b", "loop-info", None)
    status = await wait_status(
        kube,
        "loop-info",
        lambda s: sim.condition(s, "Ready").get("reason") == "Deleting",
        "Ready=False Deleting",
    )
    assert "waiting for 2 nodes" in sim.condition(status, "Progressing")["message"]

    await unloaded(kube, "del-a")

    async def still_held() -> bool:
        return await kube.get_or_none(STORAGE_DRIVERS, "loop-info") is not None

    await consistently(still_held, duration=3, what="the finalizer to hold while del-b still runs it")
    # A node that no longer exists counts as done.
    await kube.delete(NODES, "del-b")

    async def gone() -> bool:
        return await kube.get_or_none(STORAGE_DRIVERS, "loop-info") is None

    await eventually(gone, timeout=60, what="the StorageDriver to be deleted")


async def test_a_deletion_made_while_the_operator_was_down_completes_when_it_returns(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    uid = await live_node(make_node, kube, "down-a")
    await sim.add_device(kube, "down-a", "down-a-loop0", node_uid=uid)
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("loop-info"))
    await loaded_everywhere(kube, ["down-a"], "loop-info")
    await eventually(
        lambda: _has_finalizer(kube, "loop-info"), what="the finalizer before the operator goes down"
    )
    operator.stop()
    await kube.delete(STORAGE_DRIVERS, "loop-info")
    assert await devices_of(kube, "down-a", "loop-info") == ["down-a-loop0"]
    await sim.renew_lease(kube, "down-a")
    await operator.start()
    await wait_devices(kube, "down-a", "loop-info", None)
    assert await kube.get_or_none(STORAGE_DRIVERS, "loop-info") is not None
    await unloaded(kube, "down-a")

    async def gone() -> bool:
        return await kube.get_or_none(STORAGE_DRIVERS, "loop-info") is None

    await eventually(gone, timeout=60, what="the deletion to complete")


async def _has_finalizer(kube: KubeClient, name: str) -> bool:
    obj = await kube.get(STORAGE_DRIVERS, name)
    return FINALIZER in (obj["metadata"].get("finalizers") or [])


async def versions(kube: KubeClient) -> dict[str, str]:
    """resourceVersion of every NodeDriverConfig and StorageDriver: any write changes one."""
    found = {}
    for res in (NODE_DRIVER_CONFIGS, STORAGE_DRIVERS):
        items, _ = await kube.list(res)
        for item in items:
            found[f"{res.plural}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return found


async def test_a_restart_writes_nothing_and_loads_or_unloads_nothing(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    """A world in every interesting state: loaded, loading, failed, a held unload, a rollout
    halfway, a capacity limit, an invalid spec. Restarting the operator changes no object."""
    kube = clean_cluster
    nodes = ["rs-a", "rs-b", "rs-c"]
    for name in nodes:
        uid = await live_node(make_node, kube, name)
        await sim.add_device(kube, name, f"{name}-loop0", node_uid=uid)
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("steady", unloadDelaySeconds=3600))
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("rolling", maxUnavailable=1))
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("broken"))
    for name in nodes:
        await wait_devices(kube, name, "rolling", [f"{name}-loop0"])
        await sim.report_loaded(kube, name, max_loaded=2 if name == "rs-c" else None)
    await kube.patch(STORAGE_DRIVERS, "rolling", {"spec": {"version": "2.0.0"}})
    await kube.patch(STORAGE_DRIVERS, "broken", {"spec": {"maxUnavailable": "many"}})

    async def rolled_one() -> bool:
        specs = [await sim.spec_drivers(kube, n) or {} for n in nodes]
        return sum(1 for s in specs if s.get("rolling", {}).get("version") == "2.0.0") == 1

    await eventually(rolled_one, what="the rollout to switch one node")
    await sim.set_present(kube, "rs-b-loop0", False)  # 'steady' holds on rs-b for an hour
    await wait_devices(kube, "rs-b", "steady", [])
    await wait_status(
        kube, "broken", lambda s: sim.condition(s, "Ready").get("reason") == "InvalidSpec", "InvalidSpec"
    )

    async def settled() -> bool:
        first = await versions(kube)
        await consistently(lambda: _same(kube, first), duration=2, what="quiet")
        return True

    await eventually(settled, timeout=30, what="the world to settle")
    before = await versions(kube)
    objects = await snapshot(kube)
    ready = await operator.restart()
    assert "spec_writes=0" in ready, ready

    async def unchanged() -> bool:
        now = await versions(kube)
        if now != before:
            changed = [key for key in now if now[key] != before.get(key)]
            after = await snapshot(kube)
            raise AssertionError(
                "written after the restart: "
                + "; ".join(f"{k}:\n before {objects.get(k)}\n after  {after.get(k)}" for k in changed)
            )
        return True

    await consistently(unchanged, duration=5, what="no object to be written after the restart")


async def snapshot(kube: KubeClient) -> dict[str, Any]:
    found = {}
    for res in (NODE_DRIVER_CONFIGS, STORAGE_DRIVERS):
        items, _ = await kube.list(res)
        for item in items:
            item["metadata"].pop("managedFields", None)
            found[f"{res.plural}/{item['metadata']['name']}"] = item
    return found


async def _same(kube: KubeClient, expected: dict[str, str]) -> bool:
    return await versions(kube) == expected


async def test_a_version_change_rolls_with_max_unavailable(
    operator: Operator, clean_cluster: KubeClient, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    nodes = ["ro-a", "ro-b", "ro-c"]
    for name in nodes:
        uid = await live_node(make_node, kube, name)
        await sim.add_device(kube, name, f"{name}-loop0", node_uid=uid)
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("loop-info", maxUnavailable=1))
    await loaded_everywhere(kube, nodes, "loop-info")
    await wait_status(
        kube,
        "loop-info",
        lambda s: sim.condition(s, "Ready").get("status") == "True",
        "Ready before the change",
    )
    await kube.patch(STORAGE_DRIVERS, "loop-info", {"spec": {"version": "1.1.0"}})

    async def on_new() -> list[str]:
        return [
            n
            for n in nodes
            if ((await sim.spec_drivers(kube, n) or {}).get("loop-info") or {}).get("version") == "1.1.0"
        ]

    for step in range(1, 4):

        async def switched_now(step: int = step) -> list[str]:
            found = await on_new()
            return found if len(found) == step else []

        switched: list[str] = await eventually(switched_now, what=f"{step} node(s) on the new version")
        if step < 3:
            status = await wait_status(
                kube,
                "loop-info",
                lambda s: sim.condition(s, "Progressing").get("observedGeneration") == 2,
                "a status for the new version",
            )
            progressing = sim.condition(status, "Progressing")
            assert (progressing["status"], progressing["reason"]) == ("True", "RollingUpdate")

        async def no_more(step: int = step) -> bool:
            return len(await on_new()) == step

        await consistently(no_more, duration=2, what=f"no more than {step} node(s) switching")
        await sim.report_loaded(kube, switched[-1])
    await wait_status(
        kube,
        "loop-info",
        lambda s: sim.condition(s, "Ready").get("status") == "True",
        "Ready after the rollout",
    )


async def test_liveness_endpoint(operator: Operator) -> None:
    with urllib.request.urlopen(operator.liveness, timeout=10) as response:  # noqa: ASYNC210
        assert response.status == 200
        body = json.loads(response.read())
    assert body["controller"]["ready"] is True
    assert all(body["controller"]["synced"].values())


async def test_no_arguments_runs_against_the_current_kubeconfig(
    clean_cluster: KubeClient, cluster: ClusterConfig, tmp_path: Path, make_node: NodeFactory
) -> None:
    kube = clean_cluster
    await sim.ensure_lease_namespace(kube)
    uid = await live_node(make_node, kube, "noarg-a")
    await sim.add_device(kube, "noarg-a", "noarg-a-loop0", node_uid=uid)
    await kube.create(STORAGE_DRIVERS, sim.storage_driver("loop-info"))
    # Only the environment a pod or a shell gives; the liveness and metrics ports moved off 8080
    # and 8081, which another program on a shared machine may hold.
    process = ComponentProcess(
        "storage-operator",
        [console_script("storage-operator")],
        tmp_path / "operator.log",
        env={
            "KUBECONFIG": str(cluster.kubeconfig),
            "LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
            "METRICS_ENDPOINT": f"http://127.0.0.1:{free_port()}/metrics",
        },
    ).start()
    try:
        await wait_devices(kube, "noarg-a", "loop-info", ["noarg-a-loop0"])
        first = json.loads(process.log().splitlines()[0])
        assert first["msg"] == "operator starting"
        assert first["credentials"].startswith(f"kubeconfig {cluster.kubeconfig}")
    finally:
        process.stop()


async def test_sigterm_leaves_kopf_no_task_to_wait_for(
    clean_cluster: KubeClient, cluster: ClusterConfig, tmp_path: Path
) -> None:
    """On SIGTERM the operator ends its own watches and planner while kopf stops, so kopf finds no
    task left that it must wait for (it waits 5 s for such "hung" tasks before it cancels them,
    which made every stop, `make demo-down` and a Recreate rollout 5 s longer)."""
    handle = Operator(cluster, tmp_path, "--log-level", "DEBUG")
    await handle.start()
    process = handle.process
    assert process is not None
    assert process.stop() == 0, process.log()
    log = process.log(100_000)
    assert "operator stopped" in log
    # kopf 1.45 at DEBUG: "Hung tasks are stopped: ..." after waiting for leftovers, or this.
    assert "Hung tasks stopping is skipped: no tasks given." in log, log[-3000:]


def operator_rights(tmp_path: Path, namespace: str) -> list[dict[str, Any]]:
    """The chart's operator ServiceAccount and RBAC objects, rendered for `namespace`."""
    objects = helm.template(tmp_path, release=KOPF_RELEASE, namespace=namespace)
    account = helm.find(objects, "ServiceAccount", "-operator")
    name = account["metadata"]["name"]
    bindings = [
        o
        for o in objects
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(s.get("name") == name for s in o.get("subjects") or [])
    ]
    roles = {b["roleRef"]["name"] for b in bindings}
    granted = [o for o in objects if o["kind"] in ("ClusterRole", "Role") and o["metadata"]["name"] in roles]
    return [account, *granted, *bindings]


def without_storage_driver_watch(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    changed = copy.deepcopy(objects)
    for role in changed:
        for rule in role.get("rules") or []:
            if rule["resources"] == [STORAGE_DRIVERS.plural]:
                rule["verbs"] = [verb for verb in rule["verbs"] if verb != "watch"]
    return changed


async def test_kopf_refused_its_storage_driver_watch_stops_the_operator_with_an_error_and_hands_over(
    clean_cluster: KubeClient, cluster: ClusterConfig, test_namespace: str, tmp_path: Path
) -> None:
    """kopf gives up for good when a watch of its own is refused (a 403 or 404 on it, as an API
    server that is starting answers for a CRD it does not serve yet): it stops every task and
    raises. The operator must then not look like it stopped cleanly: it says what failed, hands
    its Lease over at once (a standby leads without waiting the Lease out) and exits non-zero, so
    that its Deployment starts it again."""
    require(helm.missing())
    rights = without_storage_driver_watch(operator_rights(tmp_path, test_namespace))
    account = rights[0]["metadata"]["name"]
    kubectl(cluster, "apply", "-f", "-", input=yaml.safe_dump_all(rights))
    try:
        token = await accounts.service_account_token(clean_cluster, test_namespace, account)
        kubeconfig = accounts.write_token_kubeconfig(
            cluster, tmp_path / "operator.kubeconfig", accounts.username(test_namespace, account), token
        )
        handle = Operator(
            cluster,
            tmp_path,
            "--kubeconfig",
            str(kubeconfig),
            "--lease-namespace",
            test_namespace,
            "--leader-election",
        )
        process = await handle.start(wait=False)
        try:
            assert process.process is not None
            code = await asyncio.to_thread(process.process.wait, 120)
            log = process.log(100_000)
            assert code == 1, log[-3000:]
            assert "kopf stopped by itself" in log and STORAGE_DRIVERS.plural in log, log[-3000:]
            assert "released the leadership" in log, log[-3000:]
            lease = await clean_cluster.get(LEASES, "storage-operator-leader", test_namespace)
            assert not lease["spec"].get("holderIdentity"), lease
        finally:
            handle.stop()
    finally:
        kubectl(cluster, "delete", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all(rights))
