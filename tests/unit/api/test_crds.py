"""The CRD YAML is generated from the models and stays structural and documented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from storage_driver_api import crdgen


def test_checked_in_crds_match_the_models() -> None:
    stale = crdgen.stale_files()
    assert not stale, f"CRD files differ from the models; run 'make crds': {[str(p) for p in stale]}"


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, prop in (schema.get("properties") or {}).items():
        yield from walk(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


CRDS = {spec.kind: crdgen.crd_manifest(spec) for spec in crdgen.CRDS}


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural(kind: str) -> None:
    schema = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert "$ref" not in node and "title" not in node and "$defs" not in node, path
        assert node.get("type") != "null", path
        for branch in node.get("anyOf", []) + node.get("oneOf", []):
            assert "type" not in branch or node.get("x-kubernetes-int-or-string"), path
        special = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert "type" in node or special, f"{kind}{path} has no type"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_is_described_for_kubectl_explain(kind: str) -> None:
    schema = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        if path and path != ".metadata" and not path.endswith("[]") and not path.endswith("{}"):
            assert node.get("description"), f"{kind}{path} has no description"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_string_and_list_is_bounded(kind: str) -> None:
    schema = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        if path.startswith((".apiVersion", ".kind", ".metadata")):
            continue
        if node.get("type") == "string" and "enum" not in node and node.get("format") != "date-time":
            assert "maxLength" in node or "pattern" in node, f"{kind}{path} is an unbounded string"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{kind}{path} is an unbounded list"
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{kind}{path} is an unbounded map"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_map_lists_have_required_keys(kind: str) -> None:
    schema = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), path


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_printer_columns_point_at_fields(kind: str) -> None:
    version = CRDS[kind]["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    paths = {path for path, _ in walk(schema)}
    for column in version["additionalPrinterColumns"]:
        json_path = column["jsonPath"].split("[", 1)[0]
        assert json_path in paths or json_path == ".metadata.creationTimestamp", column


def test_status_has_observed_generation_and_conditions_for_kstatus() -> None:
    for kind in ("StorageDriver", "NodeDriverConfig"):
        status = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert "observedGeneration" in status["properties"]
        condition = status["properties"]["conditions"]["items"]
        assert {"type", "status", "reason", "lastTransitionTime"} <= set(condition["required"])
        assert "observedGeneration" in condition["properties"]


def test_required_names_and_scope() -> None:
    for kind, short in (("StorageDriver", "sd"), ("NodeDevice", "nd"), ("NodeDriverConfig", "ndc")):
        spec = CRDS[kind]["spec"]
        assert spec["scope"] == "Cluster"
        assert spec["names"]["shortNames"] == [short]
        assert spec["names"]["categories"] == ["storage-drivers"]
        assert spec["versions"][0]["subresources"] == {"status": {}}


def test_rendered_yaml_loads_back() -> None:
    for name, text in crdgen.render().items():
        assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition", name
