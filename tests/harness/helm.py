"""The real helm binary that `make helm` (hack/fetch-helm.sh) caches, run against the chart.

Helm's own configuration, cache and data go under `.local-cluster/helm/`, so tests never touch
the user's helm setup; the kubeconfig is always given explicitly.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.harness.localcluster import REPO_ROOT, ClusterConfig

CHART = REPO_ROOT / "charts" / "storage-driver-operator"
# Keep equal to hack/fetch-helm.sh, which stores the binary under this version.
HELM_WHEEL_VERSION = os.environ.get("HELM_WHEEL_VERSION", "2.0.0")


def cache_dir() -> Path:
    return Path(
        os.environ.get("SDO_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "storage-driver-operator"
    )


def helm_binary() -> Path:
    return cache_dir() / f"helm-from-kubectl-layer-{HELM_WHEEL_VERSION}" / "helm"


def missing() -> str | None:
    """Why helm cannot run here, or None."""
    if not os.access(helm_binary(), os.X_OK):
        return f"helm is not cached at {helm_binary()}: run 'make helm'"
    return None


def environment(kubeconfig: Path | None = None) -> dict[str, str]:
    home = REPO_ROOT / ".local-cluster" / "helm"
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return env


def run(
    *args: str, cluster: ClusterConfig | None = None, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        env=environment(cluster.kubeconfig if cluster else None),
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def values_args(values: Mapping[str, Any] | None, tmp_dir: Path) -> list[str]:
    if not values:
        return []
    path = tmp_dir / f"values-{abs(hash(yaml.safe_dump(dict(values))))}.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return ["--values", str(path)]


def template(
    tmp_dir: Path,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "sdo",
    namespace: str = "storage-driver-operator",
    api_versions: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """`helm template` of the chart: the rendered objects (with the hooks and NOTES left out)."""
    args = ["template", release, str(CHART), "--namespace", namespace, *values_args(values, tmp_dir)]
    for api in api_versions:
        args += ["--api-versions", api]
    result = run(*args, check=False)
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class RenderError(Exception):
    """helm template refused the values; the message is helm's."""


def find(objects: Iterable[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, (
        f"expected one {kind} named *{name_suffix}, found {[m['metadata']['name'] for m in matches]}"
    )
    return matches[0]
