"""Generates the CustomResourceDefinitions from the pydantic models.

    python -m storage_driver_api.crdgen          # write crds/ and the chart's templates/crds/
    python -m storage_driver_api.crdgen --check  # exit 1 when the files differ from the models

The models are the single source of truth; this turns their JSON Schema into the structural
OpenAPI v3 schema that Kubernetes (1.20 and later) requires: references inlined, optionals
unwrapped, no nulls, no titles, int-or-string and preserve-unknown-fields marked.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from storage_driver_api.constants import CATEGORY, GROUP, VERSION
from storage_driver_api.nodedevice import NodeDevice
from storage_driver_api.nodedriverconfig import NodeDriverConfig
from storage_driver_api.storagedriver import StorageDriver

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds"
# The chart ships the CRDs as templates, not in Helm's crds/ folder (which Helm installs once and
# never upgrades): `helm upgrade` then upgrades them with the chart, `crds.install=false` leaves
# them to the user, and `helm.sh/resource-policy: keep` (crds.keep) stops `helm uninstall` from
# deleting every StorageDriver, NodeDevice and NodeDriverConfig with them.
CHART_CRD_DIR = REPO_ROOT / "charts" / "storage-driver-operator" / "templates" / "crds"
OUTPUT_DIRS = (CRD_DIR, CHART_CRD_DIR)
HEADER = "# Generated from the pydantic models by `make crds` (storage_driver_api.crdgen). Do not edit.\n"

Schema = dict[str, Any]


@dataclass(frozen=True)
class CrdSpec:
    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: list[str]
    description: str
    printer_columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _age() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _condition(type_: str, column: str) -> dict[str, Any]:
    return {
        "name": column,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{type_}")].status',
        "description": f"Status of the {type_} condition.",
    }


CRDS = (
    CrdSpec(
        StorageDriver,
        "StorageDriver",
        "storagedrivers",
        "storagedriver",
        ["sd"],
        "A storage driver, the devices and nodes it is for, and where it is loaded.",
        [
            {
                "name": "Version",
                "type": "string",
                "jsonPath": ".spec.version",
                "description": "Driver version.",
            },
            {
                "name": "Matching",
                "type": "integer",
                "jsonPath": ".status.matchingNodes",
                "description": "Nodes with matching devices and platform.",
            },
            {
                "name": "Loaded",
                "type": "integer",
                "jsonPath": ".status.loadedNodes",
                "description": "Nodes that run the driver.",
            },
            {
                "name": "Failed",
                "type": "integer",
                "jsonPath": ".status.failedNodes",
                "description": "Nodes where the driver failed.",
            },
            _condition("Ready", "Ready"),
            _age(),
        ],
    ),
    CrdSpec(
        NodeDevice,
        "NodeDevice",
        "nodedevices",
        "nodedevice",
        ["nd"],
        "A storage device of a node, published by the node's agent.",
        [
            {"name": "Node", "type": "string", "jsonPath": ".spec.nodeName", "description": "Node."},
            {"name": "Type", "type": "string", "jsonPath": ".spec.type", "description": "Device type."},
            {
                "name": "Device",
                "type": "string",
                "jsonPath": ".spec.kernelName",
                "description": "Kernel name.",
                "priority": 1,
            },
            {
                "name": "Size",
                "type": "integer",
                "jsonPath": ".spec.sizeBytes",
                "description": "Size in bytes.",
            },
            {"name": "Model", "type": "string", "jsonPath": ".spec.model", "description": "Device model."},
            _condition("Present", "Present"),
            _age(),
        ],
    ),
    CrdSpec(
        NodeDriverConfig,
        "NodeDriverConfig",
        "nodedriverconfigs",
        "nodedriverconfig",
        ["ndc"],
        "The drivers one node must run (spec, from the operator) and runs (status, from its agent).",
        [
            {
                "name": "Drivers",
                "type": "integer",
                "jsonPath": ".status.desiredCount",
                "description": "Drivers the node must run.",
            },
            {
                "name": "Loaded",
                "type": "integer",
                "jsonPath": ".status.loadedCount",
                "description": "Drivers loaded.",
            },
            {
                "name": "Failed",
                "type": "integer",
                "jsonPath": ".status.failedCount",
                "description": "Drivers failed.",
                "priority": 1,
            },
            _age(),
        ],
    ),
)

_DROP = {"title", "propertyNames", "discriminator"}


def _is_empty_default(value: Any) -> bool:
    return value is None or value in ([], {}, "")


def structural(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """One JSON Schema node turned structural (recursively)."""
    node = copy.deepcopy(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**copy.deepcopy(target), **node}  # the field's own description wins
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        branches = [b for b in any_of if b.get("type") != "null"]
        types = {b.get("type") for b in branches}
        if types == {"integer", "string"}:
            node.setdefault("x-kubernetes-int-or-string", True)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        elif len(branches) == 1:
            inner = structural(branches[0], defs)
            node = {**inner, **{k: v for k, v in node.items() if k != "default" or not _is_empty_default(v)}}
        else:
            raise ValueError(f"cannot make a structural schema of anyOf {any_of}")
    for key in _DROP:
        node.pop(key, None)
    if _is_empty_default(node.get("default", "unset")) or "$defs" in node:
        node.pop("default", None)
    node.pop("$defs", None)
    if node.get("x-kubernetes-int-or-string"):
        node.pop("type", None)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node["type"] = "object"
        node.pop("additionalProperties", None)
    if "properties" in node:
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
        node.setdefault("type", "object")
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs)
    elif node.get("additionalProperties") is False:
        node.pop("additionalProperties")  # structural schemas prune unknown fields anyway
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if node.get("format") == "date-time":
        node["type"] = "string"
    return node


def _check_described(schema: Schema, path: str, missing: list[str]) -> None:
    for name, prop in (schema.get("properties") or {}).items():
        if not prop.get("description"):
            missing.append(f"{path}.{name}")
        _check_described(prop, f"{path}.{name}", missing)
    if isinstance(schema.get("items"), dict):
        _check_described(schema["items"], f"{path}[]", missing)


def openapi_schema(spec: CrdSpec) -> Schema:
    raw = spec.model.model_json_schema(by_alias=True, mode="serialization")
    defs = raw.get("$defs", {})
    body = structural(raw, defs)
    missing: list[str] = []
    _check_described(body, spec.kind, missing)
    if missing:
        raise ValueError(f"fields without a description: {', '.join(missing)}")
    return {
        "type": "object",
        "description": spec.description,
        "properties": {
            "apiVersion": {"type": "string", "description": "Versioned schema of this object."},
            "kind": {"type": "string", "description": "REST resource this object represents."},
            "metadata": {"type": "object"},
            **body["properties"],
        },
        "required": ["spec"] if "spec" in body.get("required", []) else [],
    }


def crd_manifest(spec: CrdSpec) -> dict[str, Any]:
    schema = openapi_schema(spec)
    if not schema["required"]:
        del schema["required"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": spec.name,
            "labels": {"app.kubernetes.io/part-of": "storage-driver-operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": spec.kind,
                "listKind": f"{spec.kind}List",
                "plural": spec.plural,
                "singular": spec.singular,
                "shortNames": spec.short_names,
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": spec.printer_columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"' if "\n" in data else None)


_Dumper.add_representer(str, _str_presenter)


def render() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    return {
        f"{spec.plural}.yaml": HEADER
        + yaml.dump(crd_manifest(spec), Dumper=_Dumper, sort_keys=False, width=120)
        for spec in CRDS
    }


def as_chart_template(text: str) -> str:
    """The chart's copy of one CRD: behind `crds.install`, kept on uninstall when `crds.keep`."""
    body = text.removeprefix(HEADER)
    annotations = (
        "metadata:\n"
        "{{- if .Values.crds.keep }}\n"
        "  annotations:\n"
        "    helm.sh/resource-policy: keep\n"
        "{{- end }}\n"
    )
    assert "{{" not in body, "a CRD description contains '{{', which Helm would read as a template"
    return (
        HEADER
        + "{{- if .Values.crds.install }}\n"
        + body.replace("metadata:\n", annotations, 1)
        + "{{- end }}\n"
    )


def render_all() -> dict[Path, dict[str, str]]:
    """Output directory -> file name -> text."""
    rendered = render()
    return {
        CRD_DIR: rendered,
        CHART_CRD_DIR: {name: as_chart_template(text) for name, text in rendered.items()},
    }


def stale_files(rendered_all: dict[Path, dict[str, str]] | None = None) -> list[Path]:
    rendered_all = rendered_all or render_all()
    stale = []
    for directory, rendered in rendered_all.items():
        for name, text in rendered.items():
            path = directory / name
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        if directory.exists():
            stale.extend(p for p in directory.glob("*.yaml") if p.name not in rendered)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report files that differ from the models")
    args = parser.parse_args(argv)
    rendered_all = render_all()
    stale = stale_files(rendered_all)
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(REPO_ROOT)} (run 'make crds')")
        return 1 if stale else 0
    for directory, rendered in rendered_all.items():
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (directory / name).write_text(text)
        for extra in directory.glob("*.yaml"):
            if extra.name not in rendered:
                extra.unlink()
    print(f"wrote {len(CRDS)} CRDs into " + ", ".join(str(d.relative_to(REPO_ROOT)) for d in OUTPUT_DIRS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
