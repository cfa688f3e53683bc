"""The generated CRDs on the real control plane: examples apply, invalid objects are rejected
naming the field, printer columns and `kubectl explain` work."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from storage_driver_api.constants import NODE_DEVICES, STORAGE_DRIVERS
from storage_driver_api.kube import ApiError, KubeClient

from tests.api_cases import EXAMPLES, INVALID_CASES, InvalidCase, apply_changes, valid_storage_driver
from tests.conftest import kubectl
from tests.harness.localcluster import ClusterConfig

EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("name", EXAMPLE_FILES)
async def test_every_example_applies(name: str, clean_cluster: KubeClient, cluster: ClusterConfig) -> None:
    out = kubectl(cluster, "apply", "-f", str(EXAMPLES / name))
    manifest = yaml.safe_load((EXAMPLES / name).read_text())
    assert f"{manifest['metadata']['name']} created" in out
    res = {"StorageDriver": STORAGE_DRIVERS, "NodeDevice": NODE_DEVICES}.get(manifest["kind"])
    if res is not None:
        stored = await clean_cluster.get(res, manifest["metadata"]["name"])
        assert (
            stored["spec"]["driverName" if manifest["kind"] == "StorageDriver" else "type"]
            == manifest["spec"]["driverName" if manifest["kind"] == "StorageDriver" else "type"]
        )


def storage_driver(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(valid_storage_driver())
    body["metadata"] = {"name": name}
    body["spec"] = spec
    return body


@pytest.mark.parametrize("case", [c for c in INVALID_CASES if c.schema_rejects], ids=lambda c: c.id)
async def test_control_plane_rejects_invalid_storage_driver(
    case: InvalidCase, clean_cluster: KubeClient
) -> None:
    spec = apply_changes(valid_storage_driver()["spec"], case.spec_changes)
    with pytest.raises(ApiError) as rejected:
        await clean_cluster.create(STORAGE_DRIVERS, storage_driver(case.id, spec))
    assert rejected.value.status == 422
    # The API server names fields without list indexes' brackets in some messages.
    field = case.field.replace("[0]", "")
    assert field.split(".")[-1] in rejected.value.message, rejected.value.message
    assert await clean_cluster.get_or_none(STORAGE_DRIVERS, case.id) is None


@pytest.mark.parametrize("case", [c for c in INVALID_CASES if not c.schema_rejects], ids=lambda c: c.id)
async def test_what_the_schema_cannot_express_is_left_to_the_models(
    case: InvalidCase, clean_cluster: KubeClient
) -> None:
    """A 1.20 schema accepts these; the operator refuses them through the models (InvalidSpec)."""
    spec = apply_changes(valid_storage_driver()["spec"], case.spec_changes)
    created = await clean_cluster.create(STORAGE_DRIVERS, storage_driver(case.id, spec))
    assert created["metadata"]["name"] == case.id


async def test_server_fills_documented_defaults(clean_cluster: KubeClient) -> None:
    # supportedDevices, minimumPlatform and autoLoad may be left to the driver file's declaration.
    minimal = {"driverName": "X", "version": "1.0.0", "source": {"hostPath": {"path": "x.py"}}}
    created = await clean_cluster.create(STORAGE_DRIVERS, storage_driver("minimal", minimal))
    assert "autoLoad" not in created["spec"] and "supportedDevices" not in created["spec"]
    assert created["spec"]["unloadGracePeriodSeconds"] == 5
    assert created["spec"]["unloadDelaySeconds"] == 30
    assert created["spec"]["maxUnavailable"] == 1


async def test_empty_strings_are_kept_not_turned_into_null(clean_cluster: KubeClient) -> None:
    """A real 1.20 API server keeps "" (the test control plane's build is patched to, see
    hack/build-kubernetes.sh); an empty description is a user's right."""
    minimal = {
        "driverName": "X",
        "version": "1.0.0",
        "description": "",
        "supportedDevices": ["loop"],
        "source": {"hostPath": {"path": "x.py"}},
    }
    created = await clean_cluster.create(STORAGE_DRIVERS, storage_driver("empty-description", minimal))
    assert created["spec"]["description"] == ""
    with pytest.raises(ApiError) as rejected:
        await clean_cluster.create(
            STORAGE_DRIVERS, storage_driver("empty-name", minimal | {"driverName": ""})
        )
    assert "should be at least 1 chars long" in rejected.value.message
    assert "null" not in rejected.value.message


async def test_printer_columns_and_short_names(clean_cluster: KubeClient, cluster: ClusterConfig) -> None:
    kubectl(
        cluster,
        "apply",
        "-f",
        str(EXAMPLES / "storagedriver-loop.yaml"),
        "-f",
        str(EXAMPLES / "nodedevice.yaml"),
    )
    kubectl(cluster, "apply", "-f", str(EXAMPLES / "nodedriverconfig.yaml"))
    out = kubectl(cluster, "get", "sd,nd,ndc")
    header_sd, header_nd, header_ndc = (line for line in out.splitlines() if line.startswith("NAME"))
    assert header_sd.split() == ["NAME", "VERSION", "MATCHING", "LOADED", "FAILED", "READY", "AGE"]
    assert header_nd.split() == ["NAME", "NODE", "TYPE", "SIZE", "MODEL", "PRESENT", "AGE"]
    assert header_ndc.split() == ["NAME", "DRIVERS", "LOADED", "AGE"]
    assert "loop-info" in out and "1.0.0" in out and "worker-1-67803195e4" in out
    assert "storagedriver.storage.datawarehouse.io/loop-info" in kubectl(
        cluster, "get", "storage-drivers", "-o", "name"
    )


def test_kubectl_explain_explains_the_api(cluster: ClusterConfig) -> None:
    out = kubectl(cluster, "explain", "storagedriver.spec.unloadDelaySeconds")
    assert "How long no matching device must be present" in out
    out = kubectl(cluster, "explain", "nodedevice.spec.identity")
    assert "Stable identity" in out


def test_crd_files_are_the_ones_applied(cluster: ClusterConfig) -> None:
    out = kubectl(cluster, "apply", "--dry-run=server", "-f", str(Path(EXAMPLES).parent / "crds"))
    assert out.count("unchanged") == 3, out
