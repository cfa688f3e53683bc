"""A release of the chart on the local control plane, and the tokens of its ServiceAccounts."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage_driver_api.kube import Credentials

from tests.conftest import kubectl
from tests.harness import helm
from tests.harness.helm import CHART
from tests.harness.localcluster import ClusterConfig, local_node_name

PROJECT_CRDS = [
    f"{p}.storage.datawarehouse.io" for p in ("storagedrivers", "nodedevices", "nodedriverconfigs")
]


# Outside the pods suite (tests/pods) the chart's pods must not run: an agent pod would serve this
# machine's Node beside the agent processes that other tests start for it. An image tag that the
# node does not have keeps each pod in ErrImagePull, while the API server and the controllers do
# all they do with the chart's objects.
IMAGES_NOT_ON_NODE = (
    "--set-string",
    "operator.image.tag=not-on-this-node",
    "--set-string",
    "agent.image.tag=not-on-this-node",
)


@dataclass(frozen=True)
class Release:
    cluster: ClusterConfig
    name: str
    namespace: str
    run_pods: bool = False  # True: the images `make images` built, which the pods suite imported

    @property
    def fullname(self) -> str:
        return self.name if "storage-driver-operator" in self.name else f"{self.name}-storage-driver-operator"

    def service_account(self, component: str) -> str:
        return f"{self.fullname}-{component}"

    def username(self, component: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account(component)}"

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return helm.run(*args, cluster=self.cluster, check=check)

    def install(self, *extra: str) -> subprocess.CompletedProcess[str]:
        images = () if self.run_pods else IMAGES_NOT_ON_NODE
        return self.helm(
            "install",
            self.name,
            str(helm.CHART),
            "--namespace",
            self.namespace,
            "--create-namespace",
            *images,
            *extra,
        )

    def upgrade(self, *extra: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
        return self.helm("upgrade", self.name, str(chart), "--namespace", self.namespace, *extra)

    def uninstall(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        """helm uninstall, then wait until the release's Pods on this machine's Node are gone too
        (the garbage collector deletes them after their workloads, and the kubelet ends them
        within their grace period): no agent pod of one test may serve the node while the next
        test runs. Pods bound to simulated Nodes never ran and are left to the pod collector."""
        result = self.helm("uninstall", self.name, "--namespace", self.namespace, "--wait", check=check)
        on_node = f"spec.nodeName={local_node_name()}"
        selector = f"app.kubernetes.io/instance={self.name}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pods = self.list_objects("pods", self.namespace, selector, field_selector=on_node)
            if not pods:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(
                f"pods of release {self.name} still on the node: {[p['metadata']['name'] for p in pods]}"
            )
        return result

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json", "--ignore-not-found"]
        if namespace:
            args += ["-n", namespace]
        out = subprocess.run(
            [str(self.cluster.kubectl), f"--kubeconfig={self.cluster.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    def list_objects(
        self, kind: str, namespace: str, selector: str = "", field_selector: str = ""
    ) -> list[dict[str, Any]]:
        out = subprocess.run(
            [
                str(self.cluster.kubectl),
                f"--kubeconfig={self.cluster.kubeconfig}",
                "get",
                kind,
                "-n",
                namespace,
                *(["-l", selector] if selector else []),
                *([f"--field-selector={field_selector}"] if field_selector else []),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return list(json.loads(out.stdout)["items"])

    def pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}"
        return self.list_objects("pods", self.namespace, selector)

    def token(self, component: str, timeout: float = 60) -> str:
        """The service-account token the token controller (1.20) put into a Secret."""
        account = self.service_account(component)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = kubectl(
                self.cluster,
                "get",
                "secrets",
                "-n",
                self.namespace,
                "--field-selector=type=kubernetes.io/service-account-token",
                "-o",
                "jsonpath={range .items[*]}{.metadata.annotations.kubernetes\\.io/service-account\\.name}"
                ' {.data.token}{"\\n"}{end}',
            )
            for line in out.splitlines():
                name, _, data = line.partition(" ")
                if name == account and data:
                    return base64.b64decode(data).decode()
            time.sleep(0.2)
        raise AssertionError(f"no token Secret for {account} within {timeout}s")

    def credentials(self, component: str) -> Credentials:
        return Credentials(
            server=self.cluster.server,
            ca_data=(self.cluster.pki / "ca.crt").read_bytes(),
            token=self.token(component),
            source=f"token of {self.service_account(component)}",
        )


def delete_namespace(cluster: ClusterConfig, namespace: str, wait: bool = True) -> None:
    kubectl(
        cluster,
        "delete",
        "namespace",
        namespace,
        "--ignore-not-found",
        f"--wait={str(wait).lower()}",
        "--timeout=120s",
    )


def delete_project_crds(cluster: ClusterConfig) -> None:
    """A cluster as a new user has it: none of the project's CRDs (and so none of its objects)."""
    kubectl(cluster, "delete", "crd", *PROJECT_CRDS, "--ignore-not-found", "--wait=true", "--timeout=120s")


@contextmanager
def installed(cluster: ClusterConfig, name: str, namespace: str, *extra: str) -> Iterator[Release]:
    release = Release(cluster, name, namespace)
    release.uninstall(check=False)
    delete_namespace(cluster, namespace)
    release.install(*extra)
    try:
        yield release
    finally:
        release.uninstall(check=False)
        delete_namespace(cluster, namespace, wait=False)
