"""The driver host protocol: JSON lines over the host's unix socket.

The agent sends one request per line and the host answers each with one response line carrying
the same id:

    -> {"id": 1, "op": "load", "args": {"config": {...}, "devices": [{"name": ..., "spec": {...}}]}}
    <- {"id": 1, "ok": true, "result": {"attached": {"node-a-1f2e": {"sizeBytes": 8388608}}, "failed": {}}}
    <- {"id": 2, "ok": false, "error": {"type": "RuntimeError", "message": "...", "traceback": "..."}}

Operations (Op): hello (who are you, what runs), load (import the driver, start(config), attach
devices), attach, detach, health, unload (detach all, stop, then the host exits). The socket
outlives the agent's connection: a restarted agent connects again and sends hello.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

PROTOCOL_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024


class Op(StrEnum):
    HELLO = "hello"
    LOAD = "load"
    ATTACH = "attach"
    DETACH = "detach"
    HEALTH = "health"
    UNLOAD = "unload"


class ProtocolError(Exception):
    """A line that is not a valid protocol message."""


@dataclass(frozen=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str = ""

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclass(frozen=True)
class Request:
    id: int
    op: Op
    args: Mapping[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return _line({"id": self.id, "op": self.op.value, "args": dict(self.args)})


@dataclass(frozen=True)
class Response:
    id: int
    ok: bool
    result: Mapping[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None

    def encode(self) -> bytes:
        body: dict[str, Any] = {"id": self.id, "ok": self.ok}
        if self.ok:
            body["result"] = dict(self.result)
        else:
            body["error"] = (self.error or ErrorInfo("Error", "unknown error")).to_json()
        return _line(body)


def _line(body: Mapping[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":"), default=str).encode() + b"\n"
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    return data


def _object(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(line)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    try:
        body = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("id"), int):
        raise ProtocolError("a message must be a JSON object with an integer id")
    return body


def decode_request(line: bytes) -> Request:
    body = _object(line)
    try:
        op = Op(str(body.get("op")))
    except ValueError:
        raise ProtocolError(f"unknown op {body.get('op')!r}; expected one of {', '.join(Op)}") from None
    args = body.get("args") or {}
    if not isinstance(args, dict):
        raise ProtocolError("args must be a JSON object")
    return Request(body["id"], op, args)


def decode_response(line: bytes) -> Response:
    body = _object(line)
    if body.get("ok"):
        result = body.get("result") or {}
        if not isinstance(result, dict):
            raise ProtocolError("result must be a JSON object")
        return Response(body["id"], True, result)
    error = body.get("error") or {}
    if not isinstance(error, dict):
        raise ProtocolError("error must be a JSON object")
    return Response(
        body["id"],
        False,
        error=ErrorInfo(
            str(error.get("type", "Error")), str(error.get("message", "")), str(error.get("traceback", ""))
        ),
    )
