"""The chart's `agent.settings` and `operator.settings`: rendered by the real helm into options
that the components' own argument parsers read back (so the chart's defaults are the components'
defaults, and a value set is the value the component runs with), refused by values.schema.json
with the field's name when wrong, and described in docs/installing.md."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml
from storage_driver_agent.main import build_parser as agent_parser
from storage_driver_operator.main import build_parser as operator_parser

from tests.conftest import REPO_ROOT, require
from tests.harness import helm
from tests.harness.helm import RenderError, find

pytestmark = pytest.mark.helm

NAMESPACE = "storage-driver-operator"
VALUES = yaml.safe_load((helm.CHART / "values.yaml").read_text())


@pytest.fixture(scope="module")
def tmp_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(helm.missing())
    return tmp_path_factory.mktemp("values")


def args_of(objects: list[dict[str, Any]], kind: str, suffix: str) -> list[str]:
    return list(find(objects, kind, suffix)["spec"]["template"]["spec"]["containers"][0]["args"])


def parsed(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    namespace, unknown = parser.parse_known_args(argv)
    assert unknown == []
    return namespace


def dest(parser: argparse.ArgumentParser, option: str) -> str:
    return next(a.dest for a in parser._actions if f"--{option}" in a.option_strings)


def option_names(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0].removeprefix("--") for a in args if a.startswith("--")}


def test_the_charts_defaults_are_the_components_defaults(tmp_values: Path) -> None:
    objects = helm.template(tmp_values, {}, namespace=NAMESPACE)
    for kind, suffix, parser in (
        ("DaemonSet", "-agent", agent_parser()),
        ("Deployment", "-operator", operator_parser()),
    ):
        args = args_of(objects, kind, suffix)
        from_chart = parsed(parser, args)
        own = parsed(parser, [])
        settings = option_names(args) - {
            "driver-dir",
            "state-dir",
            "launcher",
            "uevent-source",
            "liveness",
            "metrics",
            "health",
            "mountinfo",  # the node's mount table, not the container's (test_render.py)
        }
        assert settings, f"no settings rendered for the {suffix[1:]}"
        for option in settings:
            name = dest(parser, option)
            assert getattr(from_chart, name) == getattr(own, name), option


def test_settings_become_the_options_the_components_run_with(tmp_values: Path) -> None:
    values = {
        "agent": {
            "settings": {
                "maxLoadedDrivers": 7,
                "healthInterval": 5,
                "driverMemoryLimit": "1Gi",
                "includeTypes": ["nvme-namespace", "scsi-disk"],
                "retention": "30m",
                "leaseRenew": 2.5,
            }
        },
        "operator": {"settings": {"writeConcurrency": 4, "statusInterval": 0.5}},
    }
    objects = helm.template(tmp_values, values, namespace=NAMESPACE)
    agent = args_of(objects, "DaemonSet", "-agent")
    assert "--max-loaded-drivers=7" in agent and "--include-types=nvme-namespace,scsi-disk" in agent
    options = parsed(agent_parser(), agent)
    assert options.max_loaded_drivers == 7
    assert options.health_interval == 5
    assert options.lease_renew == 2.5
    operator = parsed(operator_parser(), args_of(objects, "Deployment", "-operator"))
    assert operator.write_concurrency == 4 and operator.status_interval == 0.5
    # null leaves the option out: the component's default applies.
    objects = helm.template(
        tmp_values, {"agent": {"settings": {"maxLoadedDrivers": None}}}, namespace=NAMESPACE
    )
    assert not [a for a in args_of(objects, "DaemonSet", "-agent") if a.startswith("--max-loaded-drivers")]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"agent": {"settings": {"maxLoadedDrivers": 1000}}}, "maxLoadedDrivers"),
        ({"agent": {"settings": {"maxLoadedDrivers": "many"}}}, "maxLoadedDrivers"),
        ({"agent": {"settings": {"includeTypes": ["floppy"]}}}, "includeTypes"),
        ({"agent": {"settings": {"driverMemoryLimit": "lots"}}}, "driverMemoryLimit"),
        ({"agent": {"settings": {"maxLoadedDriver": 5}}}, "maxLoadedDriver"),
        ({"operator": {"settings": {"writeConcurrency": 0}}}, "writeConcurrency"),
        ({"operator": {"directoryAutoload": "yes"}}, "directoryAutoload"),
    ],
)
def test_a_wrong_setting_is_refused_by_name(tmp_values: Path, values: dict[str, Any], field: str) -> None:
    with pytest.raises(RenderError) as error:
        helm.template(tmp_values, values, namespace=NAMESPACE)
    assert field in str(error.value)


def operator_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    container = find(objects, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


@pytest.mark.parametrize("on", [False, True])
def test_directory_autoload_is_off_unless_the_value_turns_it_on(
    tmp_values: Path, on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {"operator": {"directoryAutoload": True}} if on else {}
    env = operator_env(helm.template(tmp_values, values, namespace=NAMESPACE))
    assert env["DIRECTORY_AUTOLOAD"] == ("true" if on else "false")
    # The operator's own parser, with the environment the chart gives it.
    monkeypatch.setenv("DIRECTORY_AUTOLOAD", env["DIRECTORY_AUTOLOAD"])
    assert parsed(operator_parser(), []).directory_autoload is on


def test_every_setting_is_documented() -> None:
    doc = (REPO_ROOT / "docs" / "installing.md").read_text()
    for component in ("agent", "operator"):
        for key in VALUES[component]["settings"]:
            assert f"`{component}.settings.{key}`" in doc or f"`{key}`" in doc, (component, key)
    assert "`operator.directoryAutoload`" in doc
