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
# The agent's imports, then (or not) its first step: credentials, which imports the package.
PROBE = """
import json, resource, sys, time
before = set(sys.modules)
start = time.perf_counter()
import storage_driver_agent.main
imported = time.perf_counter() - start
if {load}:
    from storage_driver_api.credentials import load_kubeconfig
    load_kubeconfig({kubeconfig!r})
loaded = time.perf_counter() - start
new = set(sys.modules) - before
print(json.dumps({{
    "startup_s": loaded,
    "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "modules": len(new),
    "kubernetes_modules": sum(m.startswith("kubernetes") for m in new),
    "generated": sum(m.startswith(("kubernetes.client.api.", "kubernetes.client.models.")) for m in new),
}}))
"""


def measure(load: bool, kubeconfig: Path) -> dict[str, float]:
    samples = []
    for _ in range(RUNS):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(load=load, kubeconfig=str(kubeconfig))],
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
        with_package = measure(True, kubeconfig)
        without = measure(False, kubeconfig)
    table = Table(
        "What the kubernetes package adds to the agent's start",
        ["", "time", "peak RSS", "modules imported"],
        command="python -m tests.bench startup",
        notes=(
            f"Median of {RUNS} fresh interpreters. Loading a kubeconfig is the agent's first step; it imports "
            f"kubernetes.config ({with_package['kubernetes_modules']:.0f} kubernetes.* modules, with urllib3, "
            f"requests and oauthlib) and none of the generated API or model modules "
            f"({with_package['generated']:.0f}). Without credentials (the driver-host supervisor) nothing of the "
            "package is imported."
        ),
    )
    for name, m in (
        ("import storage_driver_agent.main, then load a kubeconfig", with_package),
        ("import storage_driver_agent.main only", without),
    ):
        table.add(
            name, f"{m['startup_s'] * 1000:.0f} ms", f"{m['rss_kb'] / 1024:.1f} MB", f"{m['modules']:.0f}"
        )
    table.add(
        "added by the package",
        f"{(with_package['startup_s'] - without['startup_s']) * 1000:.0f} ms",
        f"{(with_package['rss_kb'] - without['rss_kb']) / 1024:.1f} MB",
        f"{with_package['modules'] - without['modules']:.0f}",
    )
    return [table]
