"""Reading a Kubernetes list response item by item while it arrives, so that a list of 16,000
objects served in one response never exists in memory as one text or one dict.

    parser = ListParser()
    for chunk in chunks:
        for item in parser.feed(chunk):
            ...
    parser.close()          # raises ValueError if the response was cut short
    parser.fields           # the list's other top-level fields (kind, metadata, ...)

Works for any key order (custom resources put `items` before `metadata`, built-in kinds after).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import Any

_WHITESPACE = " \t\n\r"


class ListParser:
    def __init__(self) -> None:
        self._decoder = json.JSONDecoder()
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._pos = 0
        self._state = "start"
        self._key = ""
        self._eof = False
        self.fields: dict[str, Any] = {}
        self.count = 0

    # --- scanning ------------------------------------------------------------------------------

    def _skip(self) -> bool:
        """Skip whitespace; False when the buffer ran out."""
        while self._pos < len(self._buf) and self._buf[self._pos] in _WHITESPACE:
            self._pos += 1
        return self._pos < len(self._buf)

    def _value(self) -> tuple[bool, Any]:
        """(True, value) for a complete JSON value at the position, (False, None) when more input is
        needed. A value must be followed by a character (a number could otherwise be cut short)."""
        try:
            value, end = self._decoder.raw_decode(self._buf, self._pos)
        except json.JSONDecodeError:
            if self._eof:
                raise ValueError(
                    f"malformed list response near {self._buf[self._pos : self._pos + 60]!r}"
                ) from None
            return False, None
        if end >= len(self._buf) and not self._eof:
            return False, None
        self._pos = end
        return True, value

    def _expect(self, chars: str) -> str | None:
        if not self._skip():
            return None
        found = self._buf[self._pos]
        if found not in chars:
            raise ValueError(f"malformed list response: expected one of {chars!r}, found {found!r}")
        self._pos += 1
        return found

    # --- the state machine ---------------------------------------------------------------------

    def _run(self) -> Iterator[dict[str, Any]]:
        while True:
            state = self._state
            if state == "start":
                if self._expect("{") is None:
                    return
                self._state = "key"
            elif state == "key":
                if not self._skip():
                    return
                if self._buf[self._pos] == "}":
                    self._pos += 1
                    self._state = "done"
                    continue
                complete, key = self._value()
                if not complete:
                    return
                self._key = str(key)
                self._state = "colon"
            elif state == "colon":
                if self._expect(":") is None:
                    return
                self._state = "items" if self._key == "items" else "value"
            elif state == "value":
                if not self._skip():
                    return
                complete, value = self._value()
                if not complete:
                    return
                self.fields[self._key] = value
                self._state = "next"
            elif state == "items":
                if not self._skip():
                    return
                if self._buf[self._pos] == "n":  # "items": null
                    complete, _ = self._value()
                    if not complete:
                        return
                    self._state = "next"
                    continue
                if self._expect("[") is None:
                    return
                self._state = "item"
            elif state == "item":
                if not self._skip():
                    return
                if self._buf[self._pos] == "]":
                    self._pos += 1
                    self._state = "next"
                    continue
                complete, item = self._value()
                if not complete:
                    return
                self.count += 1
                yield item
                self._state = "after-item"
            elif state == "after-item":
                found = self._expect(",]")
                if found is None:
                    return
                self._state = "item" if found == "," else "next"
            elif state == "next":
                found = self._expect(",}")
                if found is None:
                    return
                self._state = "key" if found == "," else "done"
            else:  # done: only whitespace may follow
                if self._skip():
                    raise ValueError("malformed list response: data after the end")
                return

    def feed(self, chunk: bytes) -> Iterator[dict[str, Any]]:
        """The items completed by this chunk of the response body."""
        self._buf = self._buf[self._pos :] + self._text.decode(chunk)
        self._pos = 0
        yield from self._run()

    def close(self) -> Iterator[dict[str, Any]]:
        """The last items, once the body has ended; ValueError if it ended too early."""
        self._eof = True
        self._buf = self._buf[self._pos :] + self._text.decode(b"", final=True)
        self._pos = 0
        yield from self._run()
        if self._state != "done":
            raise ValueError("the list response ended early")
