"""The chart's RBAC as rows of (component, API group, resource, verbs, scope): computed from the
rendered ClusterRoles and their bindings, and read from the table in docs/security.md, so that a
test keeps the documented list equal to the one place the rights are defined."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

COMPONENTS = ("operator", "agent", "supervisor")


class Grant(NamedTuple):
    component: str
    api_group: str
    resource: str
    verbs: tuple[str, ...]
    scope: str


def _component(service_account: str) -> str:
    for component in COMPONENTS:
        if service_account.endswith(f"-{component}"):
            return component
    raise AssertionError(f"service account {service_account} belongs to no known component")


def rendered_grants(objects: Iterable[dict[str, Any]], release_namespace: str) -> set[Grant]:
    objects = list(objects)
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}
    assert not [o for o in objects if o["kind"] == "Role"], "rights are defined in ClusterRoles only"
    grants: set[Grant] = set()
    for binding in objects:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        assert binding["roleRef"]["kind"] == "ClusterRole", binding["metadata"]["name"]
        role = roles[binding["roleRef"]["name"]]
        if binding["kind"] == "ClusterRoleBinding":
            scope = "cluster"
        elif binding["metadata"]["namespace"] == release_namespace:
            scope = "release namespace"
        else:
            scope = f"{binding['metadata']['namespace']} namespace"
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount", subject
            component = _component(subject["name"])
            for rule in role["rules"]:
                # A rule limited to named objects (the operator's own webhook configuration).
                where = f"{scope}, named" if rule.get("resourceNames") else scope
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        grants.add(Grant(component, group, resource, tuple(sorted(rule["verbs"])), where))
    return grants


ROW = re.compile(r"^\|\s*(operator|agent|supervisor)\s*\|(.*)\|\s*$")


def documented_grants(markdown: Path) -> set[Grant]:
    """Rows of the RBAC table: | component | API group | resource | verbs | scope |"""
    grants: set[Grant] = set()
    for line in markdown.read_text().splitlines():
        match = ROW.match(line)
        if not match:
            continue
        cells = [c.strip().strip("`") for c in match.group(2).split("|")]
        group, resource, verbs, scope = cells
        group = "" if group in ("core", '""') else group
        grants.add(
            Grant(match.group(1), group, resource, tuple(sorted(v.strip() for v in verbs.split(","))), scope)
        )
    return grants
