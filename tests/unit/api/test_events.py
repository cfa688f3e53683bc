"""Event bodies: the shape kubectl describe shows, bounded, unique per event."""

from __future__ import annotations

import datetime as dt

from storage_driver_api.events import MAX_MESSAGE, event_body

AT = dt.datetime(2026, 11, 25, 10, 0, 0, tzinfo=dt.UTC)


def body(**overrides: object) -> dict[str, object]:
    args: dict[str, object] = {
        "reason": "Loaded",
        "message": "loop-info: loaded",
        "warning": False,
        "component": "storage-agent",
        "host": "worker-1",
        "instance": "worker-1",
        "at": AT,
    } | overrides
    return event_body({"apiVersion": "v1", "kind": "Node", "name": "worker-1"}, **args)  # type: ignore[arg-type]


def test_event_names_the_object_and_goes_to_default() -> None:
    event = body()
    assert event["metadata"]["namespace"] == "default"  # type: ignore[index]
    assert str(event["metadata"]["name"]).startswith("worker-1.")  # type: ignore[index]
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "worker-1"}
    assert (event["type"], event["reason"], event["firstTimestamp"]) == (
        "Normal",
        "Loaded",
        "2026-11-25T10:00:00Z",
    )


def test_each_event_is_a_new_object_and_messages_are_bounded() -> None:
    first, second = body(), body()
    assert first["metadata"] != second["metadata"]
    assert body(warning=True)["type"] == "Warning"
    assert len(str(body(message="x" * 5000)["message"])) == MAX_MESSAGE
