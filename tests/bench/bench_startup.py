"""What the `kubernetes` package (its config loaders, for credentials) adds to the agent's start:
import time, peak RSS and modules, each measured in fresh interpreters (median of several), with
the package and with `storage_driver_api.credentials` replaced by a stub that imports nothing.

    python -m tests.bench startup
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tests.bench.table import Table

RUNS = 9
# The agent's imports, then its first step: credentials, which imports the package. CPU time,
# which other work on a shared machine disturbs less than wall time; peak RSS before and after.
PROBE = """
import json, resource, sys, time
def rss_kb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start_cpu, start_wall = time.process_time(), time.perf_counter()
import storage_driver_agent.main
imported_cpu, imported_wall, imported_rss = time.process_time(), time.perf_counter(), rss_kb()
before = set(sys.modules)
from storage_driver_api.credentials import load_kubeconfig
load_kubeconfig({kubeconfig!r})
new = set(sys.modules) - before
print(json.dumps({{
    "import_cpu": imported_cpu - start_cpu,
    "import_wall": imported_wall - start_wall,
    "load_cpu": time.process_time() - imported_cpu,
    "load_wall": time.perf_counter() - imported_wall,
    "rss_before": imported_rss,
    "rss_after": rss_kb(),
    "modules": len(new),
    "kubernetes_modules": sum(m.startswith("kubernetes") for m in new),
    "generated": sum(m.startswith(("kubernetes.client.api.", "kubernetes.client.models.")) for m in new),
}}))
"""


def measure(kubeconfig: Path) -> dict[str, float]:
    samples = []
    for _ in range(RUNS):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(kubeconfig=str(kubeconfig))],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        samples.append(json.loads(out))
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def run() -> list[Table]:
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = Path(tmp, "kubeconfig")
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "c",
                    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                }
            )
        )
        m = measure(kubeconfig)
    table = Table(
        "What the kubernetes package adds to the agent's start",
        ["step", "CPU time", "wall time", "peak RSS after", "modules imported"],
        command="python -m tests.bench startup",
        notes=(
            f"Median of {RUNS} fresh interpreters. Loading the kubeconfig is the agent's first step and "
            f"the only one that imports the package: kubernetes.config ({m['kubernetes_modules']:.0f} "
            f"kubernetes.* modules, with urllib3, requests and oauthlib) and none of the generated API or "
            f"model modules ({m['generated']:.0f}). The driver-host supervisor loads no credentials and "
            "imports nothing of the package."
        ),
    )
    table.add(
        "import storage_driver_agent.main",
        f"{m['import_cpu'] * 1000:.0f} ms",
        f"{m['import_wall'] * 1000:.0f} ms",
        f"{m['rss_before'] / 1024:.1f} MB",
        "",
    )
    table.add(
        "load a kubeconfig (imports the kubernetes package)",
        f"{m['load_cpu'] * 1000:.0f} ms",
        f"{m['load_wall'] * 1000:.0f} ms",
        f"{m['rss_after'] / 1024:.1f} MB (+{(m['rss_after'] - m['rss_before']) / 1024:.1f} MB)",
        f"{m['modules']:.0f}",
    )
    return [table]
