"""The chart rendered by the real helm binary (`helm lint --strict`, `helm template`) with several
values files, and the properties of the result that users and cluster admins rely on."""

from __future__ import annotations

import argparse
import importlib
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT, require
from tests.harness import helm
from tests.harness.helm import CHART, RenderError, find
from tests.integration.chart.rbac_table import Grant, documented_grants, rendered_grants

pytestmark = pytest.mark.helm

NAMESPACE = "storage-driver-operator"
PROJECT_VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]

# Values files a user might write; each must lint and render.
VALUES_FILES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "pod-monitor": {"podMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "custom": {
        "operator": {
            "image": {
                "repository": "registry.example.com/sdo/operator",
                "tag": "1.2.3",
                "pullPolicy": "Always",
            },
            "resources": {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"memory": "1Gi"}},
            "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
            "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
            "extraArgs": ["--verbose"],
        },
        "agent": {
            "image": {"repository": "registry.example.com/sdo/agent", "tag": "1.2.3", "pullPolicy": "Always"},
            "nodeSelector": {"storage.example.com/has-disks": "true"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "storage", "effect": "NoSchedule"}
            ],
            "resources": {"limits": {"memory": "300Mi"}},
        },
        "hostPaths": {"driverDir": "/opt/storage/drivers", "stateDir": "/opt/storage/agent-state"},
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "logging": {"level": "DEBUG", "format": "text"},
    },
    "crds-off": {"crds": {"install": False}},
    "crds-not-kept": {"crds": {"keep": False}},
    "helm3-namespace": {"namespace": {"manage": False}},
    "udev-events": {"agent": {"hostNetwork": True}},
    "replicated": {"operator": {"replicas": 3}},
}
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
POD_MONITOR_API = "monitoring.coreos.com/v1/PodMonitor"


@pytest.fixture(scope="module")
def tmp_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(helm.missing())
    return tmp_path_factory.mktemp("values")


def render(tmp_values: Path, name: str) -> list[dict[str, Any]]:
    return helm.template(
        tmp_values,
        VALUES_FILES[name],
        namespace=NAMESPACE,
        api_versions=[SERVICE_MONITOR_API, POD_MONITOR_API],
    )


@pytest.fixture(scope="module")
def defaults(tmp_values: Path) -> list[dict[str, Any]]:
    return render(tmp_values, "defaults")


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    first: dict[str, Any] = containers[0]
    return first


def mounts(workload: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """mount path -> (host path, read-only) for every hostPath volume of a workload."""
    pod = workload["spec"]["template"]["spec"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    return {
        m["mountPath"]: (host_paths[m["name"]], bool(m.get("readOnly")))
        for m in container(workload)["volumeMounts"]
        if m["name"] in host_paths
    }


def env_from_field(workload: dict[str, Any]) -> dict[str, str]:
    return {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container(workload)["env"]
        if "valueFrom" in e
    }


# --- lint ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUES_FILES))
def test_lint_strict(tmp_values: Path, name: str) -> None:
    args = [
        "lint",
        "--strict",
        str(CHART),
        "--namespace",
        NAMESPACE,
        *helm.values_args(VALUES_FILES[name], tmp_values),
    ]
    result = helm.run(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_chart_version_is_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == PROJECT_VERSION
    assert chart["appVersion"] == PROJECT_VERSION


# --- operator ----------------------------------------------------------------------------------


def test_several_operator_replicas_elect_a_leader_and_roll_one_at_a_time(tmp_values: Path) -> None:
    objects = render(tmp_values, "replicated")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (budget,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_operator_is_one_replica_recreated_never_two_at_once(defaults: list[dict[str, Any]]) -> None:
    deployment = find(defaults, "Deployment", "-operator")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_operator_liveness_probe_hits_healthz_on_its_port(defaults: list[dict[str, Any]]) -> None:
    operator = container(find(defaults, "Deployment", "-operator"))
    probe = operator["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in operator["ports"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in operator["args"]


def test_operator_runs_locked_down(defaults: list[dict[str, Any]]) -> None:
    deployment = find(defaults, "Deployment", "-operator")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(deployment)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert not [v for v in pod["volumes"] if "hostPath" in v], "the operator touches no host path"
    assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True


def test_images_default_to_the_app_version(defaults: list[dict[str, Any]]) -> None:
    assert container(find(defaults, "Deployment", "-operator"))["image"].endswith(
        f"/storage-operator:{PROJECT_VERSION}"
    )
    for suffix in ("-agent", "-supervisor"):
        assert container(find(defaults, "DaemonSet", suffix))["image"].endswith(
            f"/storage-agent:{PROJECT_VERSION}"
        )


# --- agent and supervisor --------------------------------------------------------------------------

HOST_MOUNTS_AGENT = {
    "/sys": ("/sys", True),
    "/dev": ("/dev", True),
    "/run/udev": ("/run/udev", True),
    "/host/proc/1/mountinfo": ("/proc/1/mountinfo", True),
    "/var/lib/storage-drivers": ("/var/lib/storage-drivers", False),
    "/var/lib/storage-agent": ("/var/lib/storage-agent", False),
}


def test_agent_runs_on_every_node_whatever_the_taints(defaults: list[dict[str, Any]]) -> None:
    agent = find(defaults, "DaemonSet", "-agent")
    pod = agent["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert "nodeSelector" not in pod and "affinity" not in pod
    assert agent["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def test_agent_host_mounts_and_downward_api(defaults: list[dict[str, Any]]) -> None:
    agent = find(defaults, "DaemonSet", "-agent")
    assert mounts(agent) == HOST_MOUNTS_AGENT
    assert env_from_field(agent) == {
        "NODE_NAME": "spec.nodeName",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_NAME": "metadata.name",
    }
    args = container(agent)["args"]
    assert "--driver-dir=/var/lib/storage-drivers" in args and "--state-dir=/var/lib/storage-agent" in args
    # The kubelet's probes ask the agent itself: ready once devices are published and the spec read.
    assert "--health=0.0.0.0:8090" in args
    assert "--mountinfo=/host/proc/1/mountinfo" in args, "the node's mounts, not the container's"
    probes = {kind: container(agent)[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes == {
        "readinessProbe": {"path": "/readyz", "port": "health"},
        "livenessProbe": {"path": "/healthz", "port": "health"},
    }
    assert container(agent)["ports"] == [
        {"name": "health", "containerPort": 8090, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8091, "protocol": "TCP"},
    ]


def test_supervisor_is_ready_while_it_accepts_the_agents_connections(defaults: list[dict[str, Any]]) -> None:
    supervisor = container(find(defaults, "DaemonSet", "-supervisor"))
    command = supervisor["readinessProbe"]["exec"]["command"]
    assert command[-1] == "/var/lib/storage-agent/supervisor.sock"
    # No liveness probe: restarting the supervisor stops every driver on the node.
    assert "livenessProbe" not in supervisor


def test_agent_is_root_without_capabilities_and_without_host_network(defaults: list[dict[str, Any]]) -> None:
    agent = find(defaults, "DaemonSet", "-agent")
    pod = agent["spec"]["template"]["spec"]
    # Kernel uevents reach the pod's own network namespace (test_uevents_reach_network_namespaces).
    assert pod["hostNetwork"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(agent)["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True


def test_supervisor_keeps_drivers_through_agent_restarts(defaults: list[dict[str, Any]]) -> None:
    agent = find(defaults, "DaemonSet", "-agent")
    supervisor = find(defaults, "DaemonSet", "-supervisor")
    assert supervisor["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert container(supervisor)["command"] == [
        "storage-agent",
        "supervise",
        "--state-dir",
        "/var/lib/storage-agent",
    ]
    # Same nodes, same state and driver directories as the agent.
    for key in ("tolerations", "nodeSelector", "affinity"):
        assert supervisor["spec"]["template"]["spec"].get(key) == agent["spec"]["template"]["spec"].get(key)
    supervisor_mounts = mounts(supervisor)
    for path in ("/var/lib/storage-drivers", "/var/lib/storage-agent"):
        assert supervisor_mounts[path][0] == mounts(agent)[path][0]
    assert supervisor_mounts["/var/lib/storage-agent"] == ("/var/lib/storage-agent", False)
    assert supervisor_mounts["/var/lib/storage-drivers"] == ("/var/lib/storage-drivers", True)
    assert supervisor_mounts["/sys"] == ("/sys", False), "driver hosts write sysfs attributes"


def test_supervisor_has_no_api_access(defaults: list[dict[str, Any]]) -> None:
    supervisor = find(defaults, "DaemonSet", "-supervisor")
    pod = supervisor["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    account = find(defaults, "ServiceAccount", "-supervisor")
    assert account["automountServiceAccountToken"] is False
    bound = [
        s["name"]
        for o in defaults
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for s in o["subjects"]
    ]
    assert pod["serviceAccountName"] not in bound


def test_every_pod_uses_its_own_service_account(defaults: list[dict[str, Any]]) -> None:
    names = {
        suffix: w["spec"]["template"]["spec"]["serviceAccountName"]
        for suffix, w in (
            ("operator", find(defaults, "Deployment", "-operator")),
            ("agent", find(defaults, "DaemonSet", "-agent")),
            ("supervisor", find(defaults, "DaemonSet", "-supervisor")),
        )
    }
    assert len(set(names.values())) == 3
    for suffix, name in names.items():
        assert name.endswith(f"-{suffix}")
        find(defaults, "ServiceAccount", f"-{suffix}")


# --- namespace and CRDs ----------------------------------------------------------------------------


def test_namespace_is_labelled_privileged_and_kept(defaults: list[dict[str, Any]]) -> None:
    namespace = find(defaults, "Namespace", NAMESPACE)
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "privileged"
    assert namespace["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_helm3_values_leave_the_namespace_alone(tmp_values: Path) -> None:
    assert not [o for o in render(tmp_values, "helm3-namespace") if o["kind"] == "Namespace"]


def test_refuses_to_label_the_default_namespace_privileged(tmp_values: Path) -> None:
    with pytest.raises(RenderError, match=r"would label namespace \"default\" privileged"):
        helm.template(tmp_values, {}, namespace="default")
    assert helm.template(tmp_values, {"namespace": {"manage": False}}, namespace="default")


def test_crds_installed_upgraded_and_kept_by_default(defaults: list[dict[str, Any]]) -> None:
    crds = {o["metadata"]["name"]: o for o in defaults if o["kind"] == "CustomResourceDefinition"}
    assert set(crds) == {
        f"{p}.storage.datawarehouse.io" for p in ("storagedrivers", "nodedevices", "nodedriverconfigs")
    }
    for name, crd in crds.items():
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}, name
        # The chart's copy is the generated CRD itself.
        plain = yaml.safe_load((REPO_ROOT / "crds" / f"{name.split('.')[0]}.yaml").read_text())
        assert crd["spec"] == plain["spec"], name


def test_crds_can_be_left_out_or_not_kept(tmp_values: Path) -> None:
    assert not [o for o in render(tmp_values, "crds-off") if o["kind"] == "CustomResourceDefinition"]
    for crd in (o for o in render(tmp_values, "crds-not-kept") if o["kind"] == "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


# --- values that change the workloads ----------------------------------------------------------------


def test_custom_values_reach_the_workloads(tmp_values: Path) -> None:
    objects = render(tmp_values, "custom")
    values = VALUES_FILES["custom"]
    operator = find(objects, "Deployment", "-operator")
    agent = find(objects, "DaemonSet", "-agent")
    supervisor = find(objects, "DaemonSet", "-supervisor")
    assert container(operator)["image"] == "registry.example.com/sdo/operator:1.2.3"
    assert container(operator)["imagePullPolicy"] == "Always"
    assert container(operator)["resources"] == values["operator"]["resources"]
    assert operator["spec"]["template"]["spec"]["nodeSelector"] == values["operator"]["nodeSelector"]
    assert operator["spec"]["template"]["spec"]["tolerations"] == values["operator"]["tolerations"]
    assert container(operator)["args"][-1] == "--verbose"
    for workload in (agent, supervisor):
        assert container(workload)["image"] == "registry.example.com/sdo/agent:1.2.3"
        assert workload["spec"]["template"]["spec"]["nodeSelector"] == values["agent"]["nodeSelector"]
        assert workload["spec"]["template"]["spec"]["tolerations"] == values["agent"]["tolerations"]
    for workload in (operator, agent, supervisor):
        pod = workload["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
        env = {e["name"]: e.get("value") for e in container(workload)["env"]}
        assert env["LOG_LEVEL"] == "DEBUG" and env["LOG_FORMAT"] == "text"
    # Helm merges maps: the default requests stay, the limit is the user's.
    assert container(agent)["resources"] == {
        "limits": {"memory": "300Mi"},
        "requests": {"cpu": "20m", "memory": "64Mi"},
    }
    assert mounts(agent)["/opt/storage/drivers"] == ("/opt/storage/drivers", False)
    assert mounts(agent)["/opt/storage/agent-state"] == ("/opt/storage/agent-state", False)
    assert mounts(supervisor)["/opt/storage/agent-state"] == ("/opt/storage/agent-state", False)
    assert container(supervisor)["command"][-1] == "/opt/storage/agent-state"
    assert "--driver-dir=/opt/storage/drivers" in container(agent)["args"]


def test_host_network_only_on_request(tmp_values: Path) -> None:
    pod = find(render(tmp_values, "udev-events"), "DaemonSet", "-agent")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_service_monitor_off_by_default(defaults: list[dict[str, Any]]) -> None:
    metrics = [
        o for o in defaults if o["kind"] == "Service" and not o["metadata"]["name"].endswith("-webhook")
    ]
    assert not [o for o in defaults if o["kind"] == "ServiceMonitor"] + metrics


def test_service_monitor_scrapes_the_operator(tmp_values: Path) -> None:
    objects = render(tmp_values, "service-monitor")
    monitor = find(objects, "ServiceMonitor", "-operator")
    service = find(objects, "Service", "-operator")
    deployment = find(objects, "Deployment", "-operator")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container(deployment)["ports"]
    assert "--metrics=http://0.0.0.0:8081/metrics" in container(deployment)["args"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_service_monitor_without_its_crd_is_a_clear_error(tmp_values: Path) -> None:
    with pytest.raises(RenderError, match=r"needs the Prometheus Operator's ServiceMonitor CRD"):
        helm.template(tmp_values, VALUES_FILES["service-monitor"], namespace=NAMESPACE)


def test_pod_monitor_off_by_default(defaults: list[dict[str, Any]]) -> None:
    assert not [o for o in defaults if o["kind"] == "PodMonitor"]


def test_pod_monitor_scrapes_every_agent_and_supervisor_pod_with_its_node(tmp_values: Path) -> None:
    objects = render(tmp_values, "pod-monitor")
    monitor = find(objects, "PodMonitor", "-node")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selector = monitor["spec"]["selector"]
    (components,) = selector["matchExpressions"]
    selected = []
    for workload in [o for o in objects if o["kind"] in ("DaemonSet", "Deployment")]:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if selector["matchLabels"].items() <= labels.items() and (
            labels.get(components["key"]) in components["values"]
        ):
            selected.append(workload["metadata"]["name"].rsplit("-", 1)[1])
            ports = {p["name"]: p["containerPort"] for p in container(workload)["ports"]}
            assert f"--metrics=0.0.0.0:{ports['metrics']}" in container(workload)["args"]
    assert sorted(selected) == ["agent", "supervisor"]  # not the operator: its ServiceMonitor does
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    # The dashboard's $node variable and per-node panels rely on this label.
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in endpoint[
        "relabelings"
    ]


def test_pod_monitor_without_its_crd_is_a_clear_error(tmp_values: Path) -> None:
    with pytest.raises(RenderError, match=r"needs the Prometheus Operator's PodMonitor CRD"):
        helm.template(tmp_values, VALUES_FILES["pod-monitor"], namespace=NAMESPACE)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"operator": {"replicas": 6}}, "replicas"),
        ({"hostPaths": {"driverDir": "drivers"}}, "driverDir"),
        ({"agnet": {}}, "agnet"),
        ({"agent": {"image": {"pullPolicy": "Sometimes"}}}, "pullPolicy"),
        ({"logging": {"level": "LOUD"}}, "level"),
        ({"namespace": {"podSecurity": {"enforce": "open"}}}, "enforce"),
        ({"operator": {"livenessPort": 80}}, "livenessPort"),
        ({"podMonitor": {"enabled": True, "interval": "often"}}, "interval"),
        ({"supervisor": {"metricsPort": 0}}, "metricsPort"),
    ],
)
def test_schema_names_the_bad_value(tmp_values: Path, values: dict[str, Any], field: str) -> None:
    with pytest.raises(RenderError) as error:
        helm.template(tmp_values, values, namespace=NAMESPACE)
    assert field in str(error.value)
    assert "values don't meet the specifications of the schema" in str(error.value)


# --- RBAC -------------------------------------------------------------------------------------------


def rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for o in objects if o["kind"] in ("ClusterRole", "Role") for rule in o["rules"]]


@pytest.mark.parametrize("name", sorted(VALUES_FILES))
def test_rbac_has_no_wildcard_and_no_secrets(tmp_values: Path, name: str) -> None:
    for rule in rules(render(tmp_values, name)):
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
        assert "secrets" not in rule["resources"], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        assert "nonResourceURLs" not in rule, rule
        # Names only narrow a right: the operator's own webhook configuration, the ClusterRole
        # that owns it, and its leader Lease.
        named = (["validatingwebhookconfigurations"], ["clusterroles"], ["leases"])
        assert "resourceNames" not in rule or rule["resources"] in named, rule


def test_rbac_is_exactly_the_documented_list(defaults: list[dict[str, Any]]) -> None:
    documented = documented_grants(REPO_ROOT / "docs" / "security.md")
    rendered = rendered_grants(defaults, NAMESPACE)
    assert documented, "docs/security.md has no RBAC table"
    assert rendered - documented == set(), "granted but not documented"
    assert documented - rendered == set(), "documented but not granted"


def test_agent_never_writes_storage_drivers_and_operator_never_writes_node_status(
    defaults: list[dict[str, Any]],
) -> None:
    grants = rendered_grants(defaults, NAMESPACE)
    writes = {"create", "update", "patch", "delete", "deletecollection"}
    by: dict[str, set[Grant]] = {c: {g for g in grants if g.component == c} for c in ("agent", "operator")}
    assert not [g for g in by["agent"] if g.resource.startswith("storagedrivers")]
    assert not [
        g for g in by["agent"] if g.resource == "nodedriverconfigs" and writes & {*g.verbs} - {"create"}
    ]
    assert not [g for g in by["operator"] if g.resource in ("nodedriverconfigs/status", "nodedevices/status")]
    # delete only: the sweep removes NodeDevices whose Node is gone, as the garbage collector does.
    assert not [g for g in by["operator"] if g.resource == "nodedevices" and writes & {*g.verbs} - {"delete"}]
    assert not [g for g in grants if g.component == "supervisor"]
    assert {g.scope.removesuffix(", named") for g in grants if g.resource == "leases"} == {
        "release namespace"
    }
    assert {g.scope for g in grants if g.resource == "events"} == {"default namespace"}


# --- the chart's command lines against the components' real argument parsers ------------------------


def _unknown(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    try:
        _, extra = parser.parse_known_args(argv)
    except SystemExit:
        return {argv[0] if argv else "?"}
    return {e.split("=", 1)[0] for e in extra}


def _parser(module: str) -> argparse.ArgumentParser | None:
    try:
        return importlib.import_module(module).build_parser()  # type: ignore[no-any-return]
    except (ImportError, AttributeError):
        return None


def test_command_lines_parse_with_the_components(defaults: list[dict[str, Any]]) -> None:
    unknown: set[str] = set()
    agent_parser = _parser("storage_driver_agent.main")
    assert agent_parser is not None
    unknown |= _unknown(agent_parser, container(find(defaults, "DaemonSet", "-agent"))["args"])
    supervisor_cmd = container(find(defaults, "DaemonSet", "-supervisor"))["command"]
    assert supervisor_cmd[:2] == ["storage-agent", "supervise"]
    supervisor_parser = _parser("storage_driver_agent.drivers.supervisor")
    assert supervisor_parser is not None
    supervisor_args = container(find(defaults, "DaemonSet", "-supervisor")).get("args") or []
    unknown |= _unknown(supervisor_parser, supervisor_cmd[2:] + supervisor_args)
    operator_parser = _parser("storage_driver_operator.main")
    assert operator_parser is not None
    unknown |= _unknown(operator_parser, container(find(defaults, "Deployment", "-operator"))["args"])
    assert not unknown, f"the chart passes options the components do not know: {sorted(unknown)}"


def test_agent_leaves_driver_hosts_to_the_supervisor(defaults: list[dict[str, Any]]) -> None:
    """In a container the agent must not start hosts itself: its restart would kill them."""
    args = container(find(defaults, "DaemonSet", "-agent"))["args"]
    assert "--launcher=supervisor" in args


def test_agent_without_host_network_follows_kernel_uevents(
    defaults: list[dict[str, Any]], tmp_values: Path
) -> None:
    """udevd's events never reach a pod's own network namespace; the kernel's do."""
    assert "--uevent-source=kernel" in container(find(defaults, "DaemonSet", "-agent"))["args"]
    host_network = render(tmp_values, "udev-events")
    assert "--uevent-source=auto" in container(find(host_network, "DaemonSet", "-agent"))["args"]
    agent_state = {m["mountPath"] for m in container(find(defaults, "DaemonSet", "-agent"))["volumeMounts"]}
    supervisor_state = {
        m["mountPath"] for m in container(find(defaults, "DaemonSet", "-supervisor"))["volumeMounts"]
    }
    assert "/var/lib/storage-agent" in agent_state & supervisor_state
