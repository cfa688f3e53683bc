"""How most benchmarks run: on the local cluster (started for the run and stopped after it, when
it was not up already, unless SDO_KEEP_CLUSTER=1), with the CRDs applied, in a scratch directory
that goes afterwards."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path

from storage_driver_api.constants import NODE_DEVICES, NODE_LABEL, node_label_value
from storage_driver_api.kube import KubeClient

from tests.bench.table import Table
from tests.conftest import apply_crds
from tests.harness import localcluster
from tests.harness.loopdev import loop_devices_available

Measure = Callable[[localcluster.ClusterConfig, Path], Coroutine[object, object, list[Table]]]


def run_on_local_cluster(
    name: str,
    measure: Measure,
    *,
    loop_devices: bool = False,
    prepare: Callable[[localcluster.ClusterConfig], None] = apply_crds,
) -> list[Table]:
    """`measure(cluster, scratch directory)`, after `prepare(cluster)`; `loop_devices`: refuse
    to start, saying why, where this machine cannot attach them."""
    if loop_devices and (missing := loop_devices_available()):
        raise SystemExit(f"bench {name}: {missing}")
    cfg = localcluster.ClusterConfig.from_env()
    started = not localcluster.is_up(cfg)
    if started:
        localcluster.up(cfg)
    work = Path(tempfile.mkdtemp(prefix=f"sdo-bench-{name}-"))
    try:
        prepare(cfg)
        return asyncio.run(measure(cfg, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if started and os.environ.get("SDO_KEEP_CLUSTER") != "1":
            localcluster.down(cfg)


async def clear_node_devices(kube: KubeClient, node: str) -> None:
    """Delete the node's NodeDevices: a clean slate, so that the retention of an earlier run's
    absent devices does not end (and delete them) in the middle of this run's counts."""
    items, _ = await kube.list(NODE_DEVICES, label_selector=f"{NODE_LABEL}={node_label_value(node)}")
    for item in items:
        await kube.delete(NODE_DEVICES, item["metadata"]["name"])
