"""The ValidatingWebhookConfiguration the operator keeps (pure): which requests the API server
sends to the webhook, and what it does when the webhook cannot answer.

kopf's managed configuration builds one entry per handler with an objectSelector only; two
needs here are beyond it:
- the agents' Leases live in a namespace, and a webhook on every Lease of the cluster (the
  kubelets' node Leases, every controller's leader election) would make them all depend on this
  operator, so the Lease entry carries a namespaceSelector;
- only the requests an agent makes fail closed: the entry for agents' writes names exactly the
  (resource, subresource, operation) pairs the agents' RBAC allows and the operator never makes
  (the operator writes NodeDriverConfig specs, which is an UPDATE of the main resource, and
  StorageDriver metadata), while StorageDrivers fail open (the status path still marks an
  invalid one InvalidSpec).
The handlers themselves are kopf's (`kopf.on.validate`), reached at `<url>/<handler id>` as kopf
routes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage_driver_api.constants import GROUP, VERSION

AGENT_NODE_DEVICES = "agent-nodedevices"
AGENT_NODE_DRIVER_CONFIGS = "agent-nodedriverconfigs"
AGENT_LEASES = "agent-leases"
OPERATOR_LEASES = "operator-leases"
STORAGE_DRIVERS = "storagedrivers"
HANDLER_IDS = (AGENT_NODE_DEVICES, AGENT_NODE_DRIVER_CONFIGS, AGENT_LEASES, OPERATOR_LEASES, STORAGE_DRIVERS)

# The operator's leader Lease carries it; agents' Leases do not.
COMPONENT_LABEL = "app.kubernetes.io/component"
OPERATOR_COMPONENT = "operator"

# On the namespace of the agents' Leases (the chart sets it on the release namespace): 1.20
# does not label namespaces with their name yet (kubernetes.io/metadata.name came in 1.21).
LEASE_NAMESPACE_LABEL = f"{GROUP}/agent-leases"


@dataclass(frozen=True)
class ServiceRef:
    """clientConfig.service: how the API server reaches the webhook inside the cluster."""

    namespace: str
    name: str
    port: int = 443

    @classmethod
    def parse(cls, text: str) -> ServiceRef:
        """`namespace/name[:port]`."""
        namespace, sep, rest = text.partition("/")
        name, _, port = rest.partition(":")
        if not sep or not namespace or not name:
            raise ValueError(f"--webhook-service {text!r}: expected namespace/name[:port]")
        try:
            return cls(namespace, name, int(port) if port else 443)
        except ValueError:
            raise ValueError(f"--webhook-service {text!r}: the port must be a number") from None


def client_config(
    served: Mapping[str, Any], handler_id: str, service: ServiceRef | None = None
) -> dict[str, Any]:
    """The clientConfig for one handler: kopf's server's (url and caBundle), or the Service."""
    config: dict[str, Any] = {}
    if ca := served.get("caBundle"):
        config["caBundle"] = ca
    if service is not None:
        config["service"] = {
            "namespace": service.namespace,
            "name": service.name,
            "port": service.port,
            "path": f"/{handler_id}",
        }
    else:
        config["url"] = f"{str(served['url']).rstrip('/')}/{handler_id}"
    return config


def _rule(group: str, resources: list[str], operations: list[str], scope: str) -> dict[str, Any]:
    version = VERSION if group == GROUP else "v1"
    return {
        "apiGroups": [group],
        "apiVersions": [version],
        "resources": resources,
        "operations": operations,
        "scope": scope,
    }


def _component(operator: bool) -> dict[str, Any]:
    operator_ = "In" if operator else "NotIn"
    return {
        "matchExpressions": [{"key": COMPONENT_LABEL, "operator": operator_, "values": [OPERATOR_COMPONENT]}]
    }


def webhooks(
    served: Mapping[str, Any],
    *,
    service: ServiceRef | None = None,
    lease_namespace_label: str = LEASE_NAMESPACE_LABEL,
    timeout_seconds: int = 5,
) -> list[dict[str, Any]]:
    """The `webhooks` of the configuration."""

    def entry(handler_id: str, failure: str, rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "name": f"{handler_id}.{GROUP}",
            "admissionReviewVersions": ["v1", "v1beta1"],
            "clientConfig": client_config(served, handler_id, service),
            "failurePolicy": failure,
            "matchPolicy": "Equivalent",
            "sideEffects": "None",
            "timeoutSeconds": timeout_seconds,
            "rules": rules,
            **extra,
        }

    return [
        # What agents write, and nobody else but people cleaning up and the garbage collector:
        # these fail closed, so an agent cannot slip a write through while the webhook is down.
        entry(
            AGENT_NODE_DEVICES,
            "Fail",
            [
                _rule(GROUP, ["nodedevices"], ["CREATE", "UPDATE", "DELETE"], "Cluster"),
                _rule(GROUP, ["nodedevices/status"], ["UPDATE"], "Cluster"),
            ],
        ),
        entry(
            AGENT_NODE_DRIVER_CONFIGS,
            "Fail",
            [
                _rule(GROUP, ["nodedriverconfigs"], ["CREATE"], "Cluster"),
                _rule(GROUP, ["nodedriverconfigs/status"], ["UPDATE"], "Cluster"),
            ],
        ),
        entry(
            AGENT_LEASES,
            "Fail",
            [_rule("coordination.k8s.io", ["leases"], ["CREATE", "UPDATE", "DELETE"], "Namespaced")],
            namespaceSelector={"matchLabels": {lease_namespace_label: "true"}},
            objectSelector=_component(False),
        ),
        # The leader Lease must be renewable while the webhook is down (or the operator would stop
        # with it), so it fails open: while the webhook is up, agents are refused on it as on any
        # Lease but their own; while it is down, an agent could disturb the election (a delay of
        # reconciling), never make a node load anything. An agent that strips the label is still
        # judged by the entry above (the selector matches the old or the new object).
        entry(
            OPERATOR_LEASES,
            "Ignore",
            [_rule("coordination.k8s.io", ["leases"], ["CREATE", "UPDATE", "DELETE"], "Namespaced")],
            namespaceSelector={"matchLabels": {lease_namespace_label: "true"}},
            objectSelector=_component(True),
        ),
        # Users' writes never wait for the operator: a StorageDriver stored while the webhook is
        # down is marked InvalidSpec by the operator instead.
        entry(STORAGE_DRIVERS, "Ignore", [_rule(GROUP, ["storagedrivers"], ["CREATE", "UPDATE"], "Cluster")]),
    ]


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """An ownerReference to a ClusterRole (as read from the API server)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }


def configuration(name: str, served: Mapping[str, Any], **options: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "storage-operator"}},
        "webhooks": webhooks(served, **options),
    }
