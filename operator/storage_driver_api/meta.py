"""Building blocks shared by the three resources: the model base, conditions, label selectors.

Every field carries a description (it becomes `kubectl explain` text) and every string and
list a bound (no object can grow without limit).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

# Shapes Kubernetes itself validates; RE2- and Python-compatible.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
SEMVER = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?"
    r"(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)
SHA256 = r"^[a-f0-9]{64}$"


class ApiModel(BaseModel):
    """Base for API types: camelCase on the wire, unknown fields refused, None never rendered."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
    )

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def schema_extra(**extra: Any) -> dict[str, Any]:
    """Kubernetes schema extensions (x-kubernetes-*) and schema-only keywords for a field."""
    return extra


def atomic_list() -> dict[str, Any]:
    """Marks a list as replaced whole. For the objects with one writer per list (a
    NodeDriverConfig: the operator writes its spec, the agent its status; a NodeDevice: its
    agent): with map or set lists the API server tracks every item's fields in managedFields,
    which made each write of a NodeDriverConfig of 50 drivers several times slower (see
    docs/benchmarks.md). Merge patches replace lists whole either way; only server-side apply
    merges by key, and nothing applies these objects."""
    return {"x-kubernetes-list-type": "atomic"}


def map_list(*keys: str) -> dict[str, Any]:
    """Marks a list as a map keyed by the given fields (server-side apply merges by key)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One aspect of an object's state, in the Kubernetes convention (as metav1.Condition)."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of condition in CamelCase, for example Ready.",
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON,
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field(
        default="", max_length=32768, description="Human-readable details of the last transition."
    )
    last_transition_time: dt.datetime = Field(
        description="When the condition last changed from one status to another."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The .metadata.generation the condition was set for; older than the object's "
        "generation means the condition is out of date.",
    )


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus | str,
    reason: str,
    message: str,
    *,
    observed_generation: int | None = None,
    at: dt.datetime | None = None,
) -> list[Condition]:
    """The conditions with one set; lastTransitionTime moves only when the status changes."""
    status = ConditionStatus(status)
    result: list[Condition] = []
    found = False
    for condition in conditions:
        if condition.type != type_:
            result.append(condition)
            continue
        found = True
        changed = condition.status != status
        result.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=(at or now()) if changed else condition.last_transition_time,
                observed_generation=observed_generation,
            )
        )
    if not found:
        result.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=at or now(),
                observed_generation=observed_generation,
            )
        )
    return result


def find_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(ApiModel):
    """A label key, an operator and values, as in a Kubernetes label selector."""

    key: str = Field(
        max_length=317, pattern=LABEL_KEY, description="The label key the requirement applies to."
    )
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]] = Field(
        default_factory=list,
        max_length=64,
        description="Values for In and NotIn (at least one); must be empty for Exists and DoesNotExist.",
    )

    @model_validator(mode="after")
    def _values_fit_operator(self) -> Self:
        if self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN) and not self.values:
            raise ValueError(f"values: operator {self.operator} needs at least one value")
        if self.operator in (SelectorOperator.EXISTS, SelectorOperator.DOES_NOT_EXIST) and self.values:
            raise ValueError(f"values: operator {self.operator} takes no values; remove them")
        return self


class LabelSelector(ApiModel):
    """Selects nodes by their labels; an empty selector selects every node."""

    match_labels: dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Labels a node must carry with exactly these values.",
        json_schema_extra={"maxProperties": 64},
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=32, description="Requirements a node's labels must all satisfy."
    )


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """'spec.source: exactly one of ...; spec.version: ...' with the field paths in API (camelCase) form."""
    parts = []
    for item in error.errors():
        path = ".".join(to_camel(str(p)) if isinstance(p, str) else f"[{p}]" for p in item["loc"])
        path = path.replace(".[", "[")
        message = item["msg"].removeprefix("Value error, ")
        # Model-level checks name their field at the start of the message ("values: ...").
        if named := re.match(r"^([a-z][A-Za-z0-9]*): (.*)$", message, re.DOTALL):
            path = f"{path}.{named.group(1)}" if path else named.group(1)
            message = named.group(2)
        field = f"{prefix}.{path}" if prefix and path else prefix or path
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)
