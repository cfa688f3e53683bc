"""Logging in as a ServiceAccount of the local control plane: its token (which the 1.20 token
controller writes into a Secret) in a kubeconfig of its own, so that a real component process
runs with exactly that account's rights instead of admin."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import yaml
from storage_driver_api.kube import SECRETS, KubeClient

from tests.harness.localcluster import ClusterConfig

TOKEN_SECRET_TYPE = "kubernetes.io/service-account-token"
ACCOUNT_ANNOTATION = "kubernetes.io/service-account.name"


def username(namespace: str, account: str) -> str:
    return f"system:serviceaccount:{namespace}:{account}"


async def service_account_token(kube: KubeClient, namespace: str, account: str, timeout: float = 60) -> str:
    """The token of `account`, waiting for the token controller to write its Secret."""
    deadline = time.monotonic() + timeout
    while True:
        secrets, _ = await kube.list(SECRETS, namespace=namespace, field_selector=f"type={TOKEN_SECRET_TYPE}")
        for secret in secrets:
            annotations = secret["metadata"].get("annotations") or {}
            token = (secret.get("data") or {}).get("token")
            if annotations.get(ACCOUNT_ANNOTATION) == account and token:
                return base64.b64decode(token).decode()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no token Secret for ServiceAccount {namespace}/{account} within {timeout:.0f}s: "
                "is kube-controller-manager running (its token controller writes them)?"
            )
        await asyncio.sleep(0.2)


def write_token_kubeconfig(cluster: ClusterConfig, path: Path, user: str, token: str) -> Path:
    """A kubeconfig for the local control plane that authenticates with `token` (mode 0600)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {"server": cluster.server, "certificate-authority": str(cluster.pki / "ca.crt")},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
