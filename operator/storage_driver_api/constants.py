"""Names shared by every component: API group, labels, annotations, finalizers."""

from __future__ import annotations

import hashlib
from typing import Final

from storage_driver_api.resource import Resource

GROUP: Final = "storage.datawarehouse.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "storage-drivers"

STORAGE_DRIVERS: Final = Resource(GROUP, VERSION, "storagedrivers", "StorageDriver")
NODE_DEVICES: Final = Resource(GROUP, VERSION, "nodedevices", "NodeDevice")
NODE_DRIVER_CONFIGS: Final = Resource(GROUP, VERSION, "nodedriverconfigs", "NodeDriverConfig")

# Labels on NodeDevices, so that agents and users select server-side.
NODE_LABEL: Final = f"{GROUP}/node"
DEVICE_TYPE_LABEL: Final = f"{GROUP}/device-type"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"

# A node opts in to a StorageDriver with autoLoad=false by carrying this label prefix + the
# StorageDriver's name, with the value "true".
OPT_IN_LABEL_PREFIX: Final = f"load.{GROUP}/"

# kopf keeps its progress annotations and finalizer under the project's own domain.
FINALIZER: Final = f"{GROUP}/unload"
ANNOTATION_PREFIX: Final = GROUP

# On a NodeDriverConfig, written by the operator: when each driver that no longer has a
# matching device may be unloaded (JSON: driver name -> RFC 3339 time). It keeps
# unloadDelaySeconds across operator restarts, after the agent deleted the absent NodeDevices.
UNLOAD_AFTER_ANNOTATION: Final = f"{GROUP}/unload-after"

LEASE_NAMESPACE_DEFAULT: Final = "storage-driver-operator"
LEASE_PREFIX: Final = "storage-agent-"

MAX_LABEL_VALUE: Final = 63
MAX_OBJECT_NAME: Final = 253  # a DNS subdomain, as Node names are


def short_hash(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def node_label_value(node_name: str) -> str:
    """A label value for a node name; names longer than a label allows keep a unique suffix."""
    if len(node_name) <= MAX_LABEL_VALUE:
        return node_name
    return f"{node_name[: MAX_LABEL_VALUE - 11].rstrip('-.')}-{short_hash(node_name)}"


def lease_name(node_name: str) -> str:
    """The name of a node's agent Lease. A node name too long for the prefix (Node names may
    have 253 characters, as may a Lease's) is cut and keeps a unique suffix; the Lease's
    `spec.holderIdentity` names the node in full."""
    name = LEASE_PREFIX + node_name
    if len(name) <= MAX_OBJECT_NAME:
        return name
    cut = node_name[: MAX_OBJECT_NAME - len(LEASE_PREFIX) - 11].rstrip("-.")
    return f"{LEASE_PREFIX}{cut}-{short_hash(node_name)}"


def opt_in_label(storage_driver_name: str) -> str:
    return OPT_IN_LABEL_PREFIX + storage_driver_name
