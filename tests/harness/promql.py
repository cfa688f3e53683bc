"""A small PromQL evaluator over two scrapes, for the test that runs the Grafana dashboard's
queries against the metrics of real components (tests/e2e/test_metrics.py).

No package on PyPI evaluates PromQL in Python; `promql-parser` parses it (Prometheus's own
grammar, in Rust) and this module evaluates the subset the dashboard uses: selectors with all
four matchers, rate/irate/increase/delta over two scrapes (`before`, `after`, `seconds` apart),
sum/avg/min/max/count with by/without, arithmetic, comparisons (with bool) and and/or/unless
between vectors and scalars, on/ignoring/group_left matching, histogram_quantile, abs,
clamp_min, clamp_max. Anything else raises Unsupported, so a dashboard query outside the subset
fails the test instead of passing unchecked.

Difference from Prometheus, on purpose: a series present only in `after` counts from 0 in a
range function (Prometheus needs two samples of it; with two scrapes that would hide every
series born during the test).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import promql_parser as pp
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]  # sorted, hashable; includes __name__ for raw samples
Vector = list[tuple[Labels, float]]
Value = Vector | float


class Unsupported(Exception):
    """The query uses PromQL this evaluator does not implement."""


class Invalid(Exception):
    """The query names a metric, label or label value the scrape does not have."""


def parse_scrape(text: str, target: Mapping[str, str] | None = None) -> Vector:
    """Samples of a /metrics text, each with the target's labels (as Prometheus adds them)."""
    samples: Vector = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {**(target or {}), **sample.labels, "__name__": sample.name}
            samples.append((tuple(sorted(labels.items())), float(sample.value)))
    return samples


def _labels(mapping: Mapping[str, str]) -> Labels:
    return tuple(sorted(mapping.items()))


def _without_name(labels: Labels) -> Labels:
    return tuple(item for item in labels if item[0] != "__name__")


@dataclass(frozen=True)
class Scrapes:
    before: Vector
    after: Vector
    seconds: float

    def names(self) -> set[str]:
        return {dict(labels)["__name__"] for labels, _ in self.after}


def substitute(query: str, variables: Mapping[str, str]) -> str:
    """Grafana's variables: $name and ${name} (longest names first, so $node_x is not $node)."""
    for name in sorted(variables, key=len, reverse=True):
        query = query.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return query


def check_names(query: str, scrapes: Scrapes) -> None:
    """Every metric the query selects exists; every label it matches on exists on that metric;
    every value an `=` matcher asks for exists. Raises Invalid naming what is missing."""
    _check(pp.parse(query), scrapes)


def _check(node: Any, scrapes: Scrapes) -> None:
    if isinstance(node, pp.VectorSelector):
        series = [dict(labels) for labels, _ in scrapes.after if dict(labels)["__name__"] == node.name]
        if not series:
            raise Invalid(f"no metric {node.name} in the scraped output")
        for matcher in node.matchers.matchers:
            values = {s[matcher.name] for s in series if matcher.name in s}
            if not values:
                raise Invalid(f"{node.name} has no label {matcher.name!r}")
            if str(matcher.op) == "MatchOp.Equal" and matcher.value not in values:
                raise Invalid(
                    f"{node.name}{{{matcher.name}={matcher.value!r}}}: no such value, only {values}"
                )
        return
    for child in _children(node):
        _check(child, scrapes)


def _children(node: Any) -> list[Any]:
    if isinstance(node, pp.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, pp.Call):
        return list(node.args)
    if isinstance(node, pp.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, pp.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, pp.ParenExpr | pp.UnaryExpr):
        return [node.expr]
    return []


def evaluate(query: str, scrapes: Scrapes) -> Value:
    return _eval(pp.parse(query), scrapes)


def _select(node: Any, samples: Vector) -> Vector:
    ops: dict[str, Callable[[str, str], bool]] = {
        "MatchOp.Equal": lambda v, want: v == want,
        "MatchOp.NotEqual": lambda v, want: v != want,
        "MatchOp.Re": lambda v, want: re.fullmatch(want, v) is not None,
        "MatchOp.NotRe": lambda v, want: re.fullmatch(want, v) is None,
    }
    if node.matchers.or_matchers:
        raise Unsupported("'or' inside a selector")
    chosen: Vector = []
    for labels, value in samples:
        found = dict(labels)
        if node.name and found["__name__"] != node.name:
            continue
        if all(ops[str(m.op)](found.get(m.name, ""), m.value) for m in node.matchers.matchers):
            chosen.append((labels, value))
    return chosen


def _range(node: Any, scrapes: Scrapes) -> list[tuple[Labels, float, float]]:
    if not isinstance(node, pp.MatrixSelector):
        raise Unsupported(f"a range function needs a range selector, not {node}")
    before = dict(_select(node.vector_selector, scrapes.before))
    return [
        (labels, before.get(labels, 0.0), value)
        for labels, value in _select(node.vector_selector, scrapes.after)
    ]


def _increase(first: float, last: float) -> float:
    return last if last < first else last - first  # a counter reset: it started again from 0


def _eval(node: Any, scrapes: Scrapes) -> Value:
    if isinstance(node, pp.NumberLiteral):
        return float(node.val)
    if isinstance(node, pp.ParenExpr):
        return _eval(node.expr, scrapes)
    if isinstance(node, pp.UnaryExpr):
        inner = _eval(node.expr, scrapes)
        return -inner if isinstance(inner, float) else [(_without_name(k), -v) for k, v in inner]
    if isinstance(node, pp.VectorSelector):
        return _select(node, scrapes.after)
    if isinstance(node, pp.Call):
        return _call(node, scrapes)
    if isinstance(node, pp.AggregateExpr):
        return _aggregate(node, scrapes)
    if isinstance(node, pp.BinaryExpr):
        return _binary(node, scrapes)
    raise Unsupported(f"{type(node).__name__}: {node}")


def _call(node: Any, scrapes: Scrapes) -> Value:
    name = node.func.name
    args = list(node.args)
    if name in ("rate", "irate", "increase", "delta"):
        out: Vector = []
        for labels, first, last in _range(args[0], scrapes):
            change = last - first if name == "delta" else _increase(first, last)
            out.append((_without_name(labels), change / scrapes.seconds if "rate" in name else change))
        return out
    if name == "histogram_quantile":
        phi = _eval(args[0], scrapes)
        buckets = _eval(args[1], scrapes)
        if not isinstance(phi, float) or isinstance(buckets, float):
            raise Unsupported("histogram_quantile(scalar, vector)")
        return _quantile(phi, buckets)
    if name in ("abs", "clamp_min", "clamp_max"):
        vector = _eval(args[0], scrapes)
        if isinstance(vector, float):
            raise Unsupported(f"{name} of a scalar")
        bound = _eval(args[1], scrapes) if len(args) > 1 else 0.0
        assert isinstance(bound, float)
        apply: dict[str, Callable[[float], float]] = {
            "abs": abs,
            "clamp_min": lambda v: max(v, bound),
            "clamp_max": lambda v: min(v, bound),
        }
        return [(_without_name(k), apply[name](v)) for k, v in vector]
    raise Unsupported(f"function {name}")


def _quantile(phi: float, buckets: Vector) -> Vector:
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for labels, value in buckets:
        found = dict(labels)
        if "le" not in found:
            raise Invalid("histogram_quantile over series without an 'le' label")
        le = float(found.pop("le"))
        found.pop("__name__", None)
        groups.setdefault(_labels(found), []).append((le, value))
    out: Vector = []
    for labels, points in groups.items():
        points.sort()
        total = points[-1][1]
        if total == 0 or not math.isinf(points[-1][0]):
            out.append((labels, math.nan))
            continue
        rank = phi * total
        lower, below = 0.0, 0.0
        for le, count in points:
            if count >= rank:
                if math.isinf(le):
                    out.append((labels, lower))
                else:
                    out.append((labels, lower + (le - lower) * (rank - below) / (count - below or 1)))
                break
            lower, below = le, count
    return out


def _aggregate(node: Any, scrapes: Scrapes) -> Vector:
    op = str(node.op)
    if op not in ("sum", "avg", "min", "max", "count"):
        raise Unsupported(f"aggregation {op}")
    vector = _eval(node.expr, scrapes)
    if isinstance(vector, float):
        raise Unsupported(f"{op} of a scalar")
    modifier = node.modifier
    groups: dict[Labels, list[float]] = {}
    for labels, value in vector:
        found = dict(_without_name(labels))
        if modifier is None:
            key: Labels = ()
        elif str(modifier.type) == "AggModifierType.By":
            key = _labels({k: v for k, v in found.items() if k in modifier.labels})
        else:
            key = _labels({k: v for k, v in found.items() if k not in modifier.labels})
        groups.setdefault(key, []).append(value)
    reducers: dict[str, Callable[[list[float]], float]] = {
        "sum": lambda values: float(sum(values)),
        "avg": lambda values: sum(values) / len(values),
        "min": min,
        "max": max,
        "count": lambda values: float(len(values)),
    }
    reduce = reducers[op]
    return [(key, float(reduce(values))) for key, values in groups.items()]


_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else (math.nan if a == 0 else math.copysign(math.inf, a)),
}
_COMPARISON: dict[str, Callable[[float, float], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}


def _binary(node: Any, scrapes: Scrapes) -> Value:
    op = str(node.op)
    lhs, rhs = _eval(node.lhs, scrapes), _eval(node.rhs, scrapes)
    modifier = node.modifier
    keep_bool = bool(modifier and modifier.return_bool)
    if op in ("and", "or", "unless"):
        if isinstance(lhs, float) or isinstance(rhs, float):
            raise Invalid(f"'{op}' needs vectors on both sides")
        return _set_op(op, lhs, rhs, modifier)
    if op not in _ARITHMETIC and op not in _COMPARISON:
        raise Unsupported(f"operator {op}")

    def combine(a: float, b: float) -> float | None:
        if op in _ARITHMETIC:
            return float(_ARITHMETIC[op](a, b))
        hit = _COMPARISON[op](a, b)
        return float(hit) if keep_bool else (a if hit else None)

    if isinstance(lhs, float) and isinstance(rhs, float):
        result = combine(lhs, rhs)
        return math.nan if result is None else result
    if isinstance(lhs, float) or isinstance(rhs, float):
        vector, scalar = (rhs, lhs) if isinstance(lhs, float) else (lhs, rhs)
        assert not isinstance(vector, float) and isinstance(scalar, float)
        out: Vector = []
        for labels, value in vector:
            a, b = (scalar, value) if isinstance(lhs, float) else (value, scalar)
            result = combine(a, b)
            if result is not None:
                comparison_keeps_name = op in _COMPARISON and not keep_bool
                out.append((labels if comparison_keeps_name else _without_name(labels), result))
        return out
    return _vector_op(lhs, rhs, modifier, combine)


def _key(labels: Labels, modifier: Any) -> Labels:
    found = dict(_without_name(labels))
    matching = modifier.matching if modifier is not None else None
    if matching is None:
        return _labels(found)
    if str(matching.type) == "LabelModifierType.Include":  # on(...)
        return _labels({k: v for k, v in found.items() if k in matching.labels})
    return _labels({k: v for k, v in found.items() if k not in matching.labels})  # ignoring(...)


def _vector_op(
    lhs: Vector, rhs: Vector, modifier: Any, combine: Callable[[float, float], float | None]
) -> Vector:
    card = str(modifier.card) if modifier is not None else "VectorMatchCardinality.OneToOne"
    if "OneToMany" in card or "ManyToMany" in card:
        raise Unsupported("group_right")
    right: dict[Labels, float] = {}
    for labels, value in rhs:
        key = _key(labels, modifier)
        if key in right:
            raise Invalid(f"many series on the right side match {dict(key)}")
        right[key] = value
    out: Vector = []
    seen: set[Labels] = set()
    for labels, value in lhs:
        key = _key(labels, modifier)
        if key not in right:
            continue
        if "OneToOne" in card:
            if key in seen:
                raise Invalid(f"many series on the left side match {dict(key)}: use group_left")
            seen.add(key)
        result = combine(value, right[key])
        if result is not None:
            out.append((_without_name(labels), result))
    return out


def _set_op(op: str, lhs: Vector, rhs: Vector, modifier: Any) -> Vector:
    right = {_key(labels, modifier) for labels, _ in rhs}
    if op == "and":
        return [(k, v) for k, v in lhs if _key(k, modifier) in right]
    if op == "unless":
        return [(k, v) for k, v in lhs if _key(k, modifier) not in right]
    left = {_key(labels, modifier) for labels, _ in lhs}
    return lhs + [(k, v) for k, v in rhs if _key(k, modifier) not in left]


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows' panels included."""
    found: list[tuple[str, str]] = []

    def walk(panels: Iterable[Mapping[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    found.append((str(panel.get("title", "?")), str(target["expr"])))
            walk(panel.get("panels") or [])

    walk(dashboard.get("panels") or [])
    return found
