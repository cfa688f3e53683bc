"""Reading list responses item by item, however the bytes are split."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_driver_operator.liststream import ListParser


def parse(body: bytes, sizes: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    parser = ListParser()
    items: list[dict[str, Any]] = []
    pos = 0
    for size in sizes:
        items.extend(parser.feed(body[pos : pos + size]))
        pos += size
    items.extend(parser.feed(body[pos:]))
    items.extend(parser.close())
    return items, parser.fields


ITEMS = [
    {
        "metadata": {"name": f"n{i}-dev", "resourceVersion": str(100 + i)},
        "spec": {"sizeBytes": 10**i, "model": "Ä SSD ✓", "ok": i % 2 == 0},
    }
    for i in range(5)
]


@pytest.mark.parametrize(
    "body",
    [
        # Custom resources: keys sorted, items first.
        {
            "apiVersion": "x/v1",
            "items": ITEMS,
            "kind": "NodeDeviceList",
            "metadata": {"continue": "", "resourceVersion": "42"},
        },
        # Built-in kinds: metadata first.
        {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "42"}, "items": ITEMS},
    ],
)
def test_items_and_fields_in_either_order(body: dict[str, Any]) -> None:
    raw = json.dumps(body, ensure_ascii=False, indent=1).encode()
    items, fields = parse(raw, [])
    assert items == ITEMS
    assert fields["metadata"]["resourceVersion"] == "42"
    assert "items" not in fields


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=60), st.booleans())
def test_any_split_of_the_bytes_gives_the_same_items(sizes: list[int], compact: bool) -> None:
    body = {
        "apiVersion": "x/v1",
        "items": ITEMS,
        "kind": "L",
        "metadata": {"resourceVersion": "7"},
        "n": 12345,
    }
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":") if compact else None).encode()
    items, fields = parse(raw, sizes)
    assert items == ITEMS
    assert fields["n"] == 12345  # a number at a chunk edge is not cut short


def test_empty_and_null_items() -> None:
    assert parse(b'{"items":[],"metadata":{"resourceVersion":"1"}}', [3]) == (
        [],
        {"metadata": {"resourceVersion": "1"}},
    )
    assert parse(b'{"items":null,"kind":"L"}', [5])[0] == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"items":[{"a":1},',
        b'{"items":[{"a":1}',
        b"",
        b'{"items":[{"a":1}]',
        b'{"items":[1] x',
        b'["not", "an", "object"]',
    ],
)
def test_a_cut_or_malformed_response_is_an_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse(body, [4])
