"""An agent's identity without a kubelet: a Pod object bound to a node (it never runs), and a
real TokenRequest token bound to that Pod, as the kubelet would project it into the agent's pod;
plus the operator webhook's serving certificate, signed by the local cluster's CA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from storage_driver_api.kube import PODS, SERVICEACCOUNTS, KubeClient

from tests.harness import localcluster


async def pod_on_node(kube: KubeClient, namespace: str, name: str, node: str, account: str) -> dict[str, Any]:
    """A Pod already bound to `node` (spec.nodeName), running as `account`; no kubelet starts it."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/component": "agent"},
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": account,
            "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": "localhost/never-pulled:0"}],
        },
    }
    return await kube.create(PODS, body, namespace=namespace)


async def bound_token(
    kube: KubeClient, namespace: str, account: str, pod: dict[str, Any], expiration: int = 3600
) -> str:
    """A token of `account` bound to `pod` (TokenRequest with boundObjectRef), with the API
    server's own audience: its user info carries the pod's name and uid."""
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": expiration,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            },
        },
    }
    path = SERVICEACCOUNTS.path(account, namespace, "token")
    response = await kube.request("POST", path, body=request)
    return str(response["status"]["token"])


def webhook_certificate(cluster: localcluster.ClusterConfig, directory: Path) -> tuple[Path, Path]:
    """A serving certificate for 127.0.0.1 signed by the cluster's CA: (certificate, key)."""
    ca_cert = x509.load_pem_x509_certificate((cluster.pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((cluster.pki / "ca.key").read_bytes(), None)
    key = localcluster._key()
    cert = localcluster._issue(
        localcluster._subject("storage-operator-webhook"),
        key,
        (ca_cert, ca_key),  # type: ignore[arg-type]
        server_names=["127.0.0.1", "localhost"],
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "webhook.crt", directory / "webhook.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    localcluster._write_key(key_path, key)
    return cert_path, key_path
