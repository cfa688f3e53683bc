"""Credentials as kubectl finds them, for the real sdctl, storage-operator and storage-agent
processes against the real control plane: a kubeconfig split over several `$KUBECONFIG` files
whose user is an `exec` credential plugin issuing a ServiceAccount's token that expires within
seconds, and a `tokenFile` that rotates. In both, the first token is revoked mid-run (its Secret
deleted, which the API server checks for legacy ServiceAccount tokens): the components keep
working only if they really renewed their credentials."""

from __future__ import annotations

import asyncio
import base64
import datetime
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from storage_driver_api.constants import FINALIZER, LEASE_NAMESPACE_DEFAULT, LEASE_PREFIX, STORAGE_DRIVERS
from storage_driver_api.kube import LEASES, SECRETS, SERVICEACCOUNTS, KubeClient

from tests.conftest import REPO_ROOT, kubectl
from tests.harness import localcluster
from tests.harness.processes import ComponentProcess, console_script
from tests.harness.waiting import eventually
from tests.integration.operator import simulated as sim
from tests.integration.operator.conftest import free_port, remove_agent_leases

ACCOUNT = "sdo-credentials"
TOKEN_TYPE = "kubernetes.io/service-account-token"
LIFETIME_S = 6  # renewed a fifth of its life before expiry: every ~5 s
PLUGIN = """#!{python}
# An exec credential plugin: the token in TOKEN_PATH, expiring in {lifetime} s; one line per run.
import json, os
from datetime import datetime, timedelta, timezone
with open(os.environ["PLUGIN_RUNS"], "a") as runs:
    runs.write("run\\n")
expires = datetime.now(timezone.utc) + timedelta(seconds={lifetime})
print(json.dumps({{
    "apiVersion": "client.authentication.k8s.io/v1beta1",
    "kind": "ExecCredential",
    "status": {{"token": open({token!r}).read().strip(),
               "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}},
}}))
"""


async def token_of(kube: KubeClient, namespace: str, secret: str) -> str:
    async def filled() -> str | None:
        obj = await kube.get_or_none(SECRETS, secret, namespace)
        token = ((obj or {}).get("data") or {}).get("token")
        return base64.b64decode(token).decode() if token else None

    token = await eventually(filled, timeout=60, what=f"the token controller to fill Secret {secret}")
    assert token is not None
    return token


@pytest.fixture
async def two_tokens(
    clean_cluster: KubeClient, test_namespace: str, cluster: Any
) -> AsyncIterator[list[str]]:
    """Two tokens of one cluster-admin ServiceAccount, each in a Secret of its own (token-0, token-1)."""
    kube = clean_cluster
    await kube.create(
        SERVICEACCOUNTS,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}},
        test_namespace,
    )
    binding = f"{ACCOUNT}-admin"
    kubectl(cluster, "delete", "clusterrolebinding", binding, "--ignore-not-found")
    kubectl(
        cluster, "create", "clusterrolebinding", binding, "--clusterrole=cluster-admin",
        f"--serviceaccount={test_namespace}:{ACCOUNT}",
    )  # fmt: skip
    tokens = []
    for i in range(2):
        meta = {"name": f"token-{i}", "annotations": {"kubernetes.io/service-account.name": ACCOUNT}}
        await kube.create(
            SECRETS,
            {"apiVersion": "v1", "kind": "Secret", "type": TOKEN_TYPE, "metadata": meta},
            test_namespace,
        )
        tokens.append(await token_of(kube, test_namespace, f"token-{i}"))
    try:
        yield tokens
    finally:
        kubectl(cluster, "delete", "clusterrolebinding", binding, "--ignore-not-found")


def write(path: Path, content: str) -> None:
    """Replace a file as the kubelet does a projected token: a new file renamed over the old."""
    tmp = path.with_suffix(".new")
    tmp.write_text(content)
    tmp.replace(path)


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def sdctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("sdctl"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", **env},
    )


def components(tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[ComponentProcess, ComponentProcess]:
    operator = ComponentProcess(
        "storage-operator",
        [
            console_script("storage-operator"), *extra,
            "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
            "--metrics", f"http://127.0.0.1:{free_port()}/metrics",
        ],
        tmp_path / "operator.log",
        env={**env, "PLUGIN_RUNS": str(tmp_path / "operator.runs")},
    )  # fmt: skip
    agent = ComponentProcess(
        "storage-agent",
        [
            console_script("storage-agent"), *extra,
            "--node-name", localcluster.local_node_name(),
            "--driver-dir", str(tmp_path / "drivers"),
            "--state-dir", str(tmp_path / "agent-state"),
            "--lease-renew", "2",  # requests all the time, so a refused token shows at once
        ],
        tmp_path / "agent.log",
        env={**env, "PLUGIN_RUNS": str(tmp_path / "agent.runs")},
    )  # fmt: skip
    (tmp_path / "drivers").mkdir(exist_ok=True)
    return operator, agent


def storage_driver(name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "examples" / "storagedriver-loop.yaml").read_text()
    )
    manifest["metadata"] = {"name": name}
    return manifest


async def still_working(kube: KubeClient, name: str, since: datetime.datetime) -> None:
    """The agent renews its Lease and the operator (kopf's finalizer, the controller's status)
    handles a new StorageDriver, all after `since`."""
    node = localcluster.local_node_name()

    async def lease_renewed() -> bool:
        lease = await kube.get_or_none(LEASES, LEASE_PREFIX + node, LEASE_NAMESPACE_DEFAULT)
        renewed = ((lease or {}).get("spec") or {}).get("renewTime")
        return bool(renewed) and datetime.datetime.fromisoformat(str(renewed).replace("Z", "+00:00")) > since

    await eventually(lease_renewed, timeout=60, what="the agent to renew its Lease with the new token")
    await kube.create(STORAGE_DRIVERS, storage_driver(name))

    async def handled() -> bool:
        obj = await kube.get(STORAGE_DRIVERS, name)
        status = obj.get("status") or {}
        return (
            FINALIZER in (obj["metadata"].get("finalizers") or []) and status.get("observedGeneration") == 1
        )

    await eventually(handled, timeout=60, what=f"the operator to take {name} (finalizer and status)")


async def test_an_exec_plugin_in_a_kubeconfig_split_over_several_files(
    clean_cluster: KubeClient, two_tokens: list[str], test_namespace: str, cluster: Any, tmp_path: Path
) -> None:
    kube = clean_cluster
    await sim.ensure_lease_namespace(kube)
    await remove_agent_leases(kube)
    token_path = tmp_path / "current-token"
    write(token_path, two_tokens[0])
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN.format(python=sys.executable, lifetime=LIFETIME_S, token=str(token_path)))
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    # Clusters and contexts in one file, users in another; the current context is not the one to use.
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "stale",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": cluster.server,
                            "certificate-authority": str(cluster.pki / "ca.crt"),
                        },
                    }
                ],
                "contexts": [
                    {"name": "stale", "context": {"cluster": "local", "user": "stale"}},
                    {"name": "plugin", "context": {"cluster": "local", "user": "plugin"}},
                ],
            }
        )
    )
    users = tmp_path / "users.yaml"
    users.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "users": [
                    {"name": "stale", "user": {"token": "no-longer-valid"}},
                    {
                        "name": "plugin",
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1beta1",
                                "command": str(plugin),
                            }
                        },
                    },
                ],
            }
        )
    )
    env = {"KUBECONFIG": f"{clusters}:{tmp_path / 'absent.yaml'}:{users}"}

    # sdctl: the current context's user is refused; --context picks the plugin.
    refused = sdctl({**env, "PLUGIN_RUNS": str(tmp_path / "sdctl.runs")}, "drivers")
    assert refused.returncode == 2 and "401" in refused.stderr, refused
    shown = sdctl({**env, "PLUGIN_RUNS": str(tmp_path / "sdctl.runs")}, "drivers", "--context", "plugin")
    assert shown.returncode == 0, shown.stderr
    assert runs(tmp_path / "sdctl.runs") == 1

    operator, agent = components(tmp_path, env, "--context", "plugin")
    try:
        started = time.monotonic()
        operator.start()
        agent.start()
        operator.wait_for_log("(context plugin)", timeout=60)
        agent.wait_for_log("(context plugin)", timeout=60)
        await still_working(kube, "first", datetime.datetime.now(datetime.UTC))

        # Revoke the first token; the plugin hands out the second from now on.
        write(token_path, two_tokens[1])
        await kube.delete(SECRETS, "token-0", test_namespace)
        revoked = datetime.datetime.now(datetime.UTC)
        await asyncio.sleep(LIFETIME_S)  # every token the plugin issued before has expired
        await still_working(kube, "second", revoked + datetime.timedelta(seconds=LIFETIME_S))
        elapsed = time.monotonic() - started
        for process in (operator, agent):
            assert process.running, process.log()
            count = runs(tmp_path / f"{process.name.removeprefix('storage-')}.runs")
            # Renewed when a request finds the token due (about every 5 s while requests flow;
            # the operator is idle between changes), never on every request: the agent alone
            # renews its Lease every 2 s and writes its status.
            assert 2 <= count <= 2 * elapsed / (LIFETIME_S * 0.8) + 4, (process.name, count, elapsed)
            print(f"{process.name}: the plugin ran {count} times in {elapsed:.0f} s")
        assert runs(tmp_path / "agent.runs") >= elapsed / LIFETIME_S - 1
    finally:
        for process in (agent, operator):
            process.stop()


async def test_a_token_file_that_rotates(
    clean_cluster: KubeClient, two_tokens: list[str], test_namespace: str, cluster: Any, tmp_path: Path
) -> None:
    kube = clean_cluster
    await sim.ensure_lease_namespace(kube)
    await remove_agent_leases(kube)
    token_path = tmp_path / "token"
    write(token_path, two_tokens[0])
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "sa",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": cluster.server,
                            "certificate-authority": str(cluster.pki / "ca.crt"),
                        },
                    }
                ],
                "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}],
                "users": [{"name": "sa", "user": {"tokenFile": "token"}}],  # relative to the kubeconfig
            }
        )
    )
    env = {"KUBECONFIG": str(config)}
    assert sdctl(env, "drivers").returncode == 0
    operator, agent = components(tmp_path, env)
    try:
        operator.start()
        agent.start()
        operator.wait_for_log(f"kubeconfig {config}", timeout=60)
        agent.wait_for_log(f"kubeconfig {config}", timeout=60)
        await still_working(kube, "first", datetime.datetime.now(datetime.UTC))

        write(token_path, two_tokens[1])
        await kube.delete(SECRETS, "token-0", test_namespace)
        revoked = datetime.datetime.now(datetime.UTC)
        await still_working(kube, "second", revoked)
        for process in (operator, agent):
            assert process.running, process.log()
        after = sdctl(env, "driver", "second")  # a new process, with the rotated file
        assert after.returncode == 0 and "Name:         second" in after.stdout, after
    finally:
        for process in (agent, operator):
            process.stop()
