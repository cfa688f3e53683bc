"""The operator's log stays quiet while its webhook admits agents' writes, and kopf's lines carry
their object, not kopf's settings. Through kopf's own per-object logger and handler names."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import kopf
import pytest
from kopf._core.actions.loggers import ObjectLogger
from storage_driver_api.logs import JsonFormatter
from storage_driver_operator.webhook import AdmittedAtDebug

BODY: kopf.RawBody = {
    "apiVersion": "coordination.k8s.io/v1",
    "kind": "Lease",
    "metadata": {"name": "storage-agent-a", "uid": "u1"},
}


def object_logger() -> ObjectLogger:
    """kopf's logger for one object, as kopf makes it for each admission request."""
    return ObjectLogger(body=kopf.Body(BODY), settings=kopf.OperatorSettings())


def webhook_name(handler_id: str) -> str:
    """How kopf names a validating handler in its log lines ("Webhook 'id'")."""
    registry = kopf.OperatorRegistry()
    kopf.on.validate("coordination.k8s.io", "v1", "leases", id=handler_id, registry=registry)(
        lambda **_: None
    )
    (handler,) = registry._webhooks.get_all_handlers()
    return str(handler)


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("storage-operator"))
    kopf_logger = logging.getLogger("kopf.objects")
    quiet = AdmittedAtDebug()
    kopf_logger.addHandler(handler)
    kopf_logger.addFilter(quiet)
    level = kopf_logger.level
    try:
        yield stream, kopf_logger
    finally:
        kopf_logger.removeHandler(handler)
        kopf_logger.removeFilter(quiet)
        kopf_logger.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_admitted_request_is_logged_at_debug_only(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, kopf_logger = captured
    logger = object_logger()
    kopf_logger.setLevel(logging.INFO)
    logger.info(f"{webhook_name('agent-leases')} succeeded.")
    assert lines(stream) == []
    kopf_logger.setLevel(logging.DEBUG)
    logger.info(f"{webhook_name('agent-leases')} succeeded.")
    (line,) = lines(stream)
    assert line["level"] == "debug" and line["msg"] == "Webhook 'agent-leases' succeeded."


def test_other_outcomes_keep_their_level(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, kopf_logger = captured
    kopf_logger.setLevel(logging.INFO)
    logger = object_logger()
    logger.info("Handler 'unload_everywhere' succeeded.")
    logger.error(f"{webhook_name('agent-leases')} failed with an exception and will stop now: boom")
    assert [(line["level"], line["msg"]) for line in lines(stream)] == [
        ("info", "Handler 'unload_everywhere' succeeded."),
        ("error", "Webhook 'agent-leases' failed with an exception and will stop now: boom"),
    ]


def test_kopf_lines_carry_their_object_and_not_kopfs_settings(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, kopf_logger = captured
    kopf_logger.setLevel(logging.INFO)
    object_logger().info("Handler 'x' succeeded.")
    (line,) = lines(stream)
    assert "settings" not in line and "k8s_skip" not in line and "k8s_ref" not in line
    assert line["object"] == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "name": "storage-agent-a",
        "uid": "u1",
        "namespace": None,
    }
    assert len(stream.getvalue()) < 500
