"""Structured logging for every component: one JSON object (or one logfmt line) per event.

    log = logging.getLogger(__name__)
    log.info("driver loaded", extra=fields(driver="loop-info", pid=4242))

Steady state is quiet: INFO is for changes (a device arrived, a driver loaded); periodic
no-change work logs at DEBUG.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

_FIELDS = "sdo_fields"
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# Record attributes not rendered as extras: our own fields (merged above) and kopf's internals.
_NOT_EXTRAS = {_FIELDS, "k8s_ref", "k8s_skip", "settings"}


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: key/value fields rendered next to the message."""
    return {_FIELDS: values}


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str):
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, _FIELDS, {}))
        # kopf and others attach their own extras: kopf's object reference is kept (as "object",
        # the key kopf's own JSON formatter uses), its settings (a repr of every setting, 2.5 KB
        # on each of its lines) and its posting flag are not.
        for key, value in record.__dict__.items():
            if key == "k8s_ref" and isinstance(value, dict):
                entry.setdefault("object", value)
            elif key not in _STANDARD and key not in _NOT_EXTRAS and not key.startswith("_"):
                entry.setdefault(key, value if isinstance(value, str | int | float | bool) else str(value))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        extra = " ".join(f"{k}={v}" for k, v in getattr(record, _FIELDS, {}).items())
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}" + (
            f"  {extra}" if extra else ""
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(component: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "asyncio", "watchdog", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
