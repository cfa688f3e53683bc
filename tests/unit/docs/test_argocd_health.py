"""docs/argocd-health.lua, run by real Lua interpreters (5.1, which Argo CD embeds, and 5.4) on
sample StorageDriver objects that the API models accept."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from storage_driver_api.storagedriver import StorageDriver

from tests.conftest import REPO_ROOT, require

SCRIPT = REPO_ROOT / "docs" / "argocd-health.lua"
INTERPRETERS = ("lua5.1", "lua5.4")
EXAMPLE = yaml.safe_load((REPO_ROOT / "examples" / "storagedriver-loop.yaml").read_text())


def lua_literal(value: Any) -> str:
    """A Python value (as JSON would carry it) as a Lua table constructor; None becomes nil."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def health(interpreter: str, obj: dict[str, Any]) -> tuple[str, str]:
    program = (
        f"obj = {lua_literal(obj)}\n"
        f"local hs = assert(loadfile({json.dumps(str(SCRIPT))}))()\n"
        'io.write(hs.status, "\\n", hs.message or "", "\\n")\n'
    )
    result = subprocess.run([interpreter, "-"], input=program, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    status, message = result.stdout.split("\n", 1)
    return status, message.rstrip("\n")


def condition(type_: str, status: str, reason: str, message: str = "", generation: int = 2) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-11-25T10:00:00Z",
        "observedGeneration": generation,
    }


def storage_driver(status: dict[str, Any] | None, generation: int = 2, **metadata: Any) -> dict[str, Any]:
    obj = {**EXAMPLE, "metadata": {**EXAMPLE["metadata"], "generation": generation, **metadata}}
    if status is not None:
        obj["status"] = status
        # The samples are objects the operator could write.
        StorageDriver.model_validate({"spec": obj["spec"], "status": status})
    return obj


READY = condition("Ready", "True", "Loaded", "loaded on every matching node")
NOT_PROGRESSING = condition("Progressing", "False", "Stable")
NOT_DEGRADED = condition("Degraded", "False", "NoFailures")

CASES = {
    "no status yet": (storage_driver(None), "Progressing", "Waiting for the operator to report status"),
    "status of an older generation": (
        storage_driver({"observedGeneration": 1, "conditions": [READY]}),
        "Progressing",
        "Waiting for the operator to observe generation 2",
    ),
    "a condition of an older generation": (
        storage_driver(
            {"observedGeneration": 2, "conditions": [condition("Ready", "True", "Loaded", generation=1)]}
        ),
        "Progressing",
        "Waiting for the operator to update condition Ready",
    ),
    "ready everywhere": (
        storage_driver(
            {
                "observedGeneration": 2,
                "conditions": [READY, NOT_PROGRESSING, NOT_DEGRADED],
                "matchingNodes": 3,
                "desiredNodes": 3,
                "loadedNodes": 3,
            }
        ),
        "Healthy",
        "Loaded on 3 of 3 nodes",
    ),
    "rolling out": (
        storage_driver(
            {
                "observedGeneration": 2,
                "conditions": [
                    condition("Ready", "False", "Loading"),
                    condition("Progressing", "True", "Loading", "loaded on 1 of 3 nodes"),
                    NOT_DEGRADED,
                ],
                "desiredNodes": 3,
                "loadedNodes": 1,
            }
        ),
        "Progressing",
        "loaded on 1 of 3 nodes",
    ),
    "degraded": (
        storage_driver(
            {
                "observedGeneration": 2,
                "conditions": [
                    READY,
                    NOT_PROGRESSING,
                    condition("Degraded", "True", "LoadFailed", "failed on node-b"),
                ],
                "failedNodes": 1,
            }
        ),
        "Degraded",
        "failed on node-b",
    ),
    "invalid spec": (
        storage_driver(
            {
                "observedGeneration": 2,
                "conditions": [
                    condition(
                        "Ready", "False", "InvalidSpec", "spec.deviceSelector[0].values: Gt needs one integer"
                    )
                ],
            }
        ),
        "Degraded",
        "spec.deviceSelector[0].values: Gt needs one integer",
    ),
    "not ready with failing nodes": (
        storage_driver(
            {
                "observedGeneration": 2,
                "conditions": [condition("Ready", "False", "LoadFailed")],
                "failedNodes": 2,
            }
        ),
        "Degraded",
        "LoadFailed",
    ),
    "not ready, nothing failing": (
        storage_driver(
            {"observedGeneration": 2, "conditions": [condition("Ready", "False", "NoMatchingDevices")]}
        ),
        "Progressing",
        "NoMatchingDevices",
    ),
    "no conditions yet": (
        storage_driver({"observedGeneration": 2}),
        "Progressing",
        "Waiting for the Ready condition",
    ),
    "stalled": (
        storage_driver(
            {
                "observedGeneration": 2,
                "conditions": [
                    READY,
                    NOT_PROGRESSING,
                    condition("Stalled", "True", "LoadFailed", "1 node failing"),
                ],
            }
        ),
        "Degraded",
        "1 node failing",
    ),
    "reconciling": (
        storage_driver(
            {
                "observedGeneration": 2,
                "conditions": [READY, condition("Reconciling", "True", "Loading", "loading on 1 node: b")],
            }
        ),
        "Progressing",
        "loading on 1 node: b",
    ),
    "a kstatus condition of an older generation": (
        storage_driver(
            {
                "observedGeneration": 2,
                "conditions": [READY, condition("Stalled", "False", "AsExpected", generation=1)],
            }
        ),
        "Progressing",
        "Waiting for the operator to update condition Stalled",
    ),
    "being deleted": (
        storage_driver(
            {"observedGeneration": 2, "conditions": [READY]},
            deletionTimestamp="2026-11-25T10:05:00Z",
            finalizers=["storage.datawarehouse.io/unload"],
        ),
        "Progressing",
        "Deleting: waiting for every node to unload the driver",
    ),
}


@pytest.mark.parametrize("interpreter", INTERPRETERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_health(interpreter: str, case: str) -> None:
    require(None if shutil.which(interpreter) else f"{interpreter} is not installed: run 'make deps'")
    obj, expected_status, expected_message = CASES[case]
    assert health(interpreter, obj) == (expected_status, expected_message)
