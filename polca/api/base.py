"""The base of every API model: camelCase on the wire, snake_case in Python, strict input.

Two ways in (DESIGN.md safety rule 6: read stored objects tolerantly, validate strictly where
users write):
- `model_validate`: strict, as for a manifest a user writes (unknown fields, fractional
  integers and nulls are errors), mirroring `kubectl apply` against the CRD;
- `from_stored`: an object as the API server stored it. The server keeps values our strict
  models refuse, and a newer CRD may carry fields this version does not know, so this path
  ignores unknown fields, takes near-integers as the server does (`tolerant_fields`) and treats
  a null field as an absent one. Every other rule (bounds, patterns, cross-field rules, a null
  label value) still holds.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator
from pydantic.alias_generators import to_camel

# The validation-context key that selects the tolerant read of stored objects.
STORED: Final = "polca.dev/stored"
# kube-openapi takes a float as a JSON integer when its relative distance to one is below this
# (go-openapi/swag `IsFloat64AJSONInteger`), so `kubectl patch` can store 1110.000001 in an
# integer field.
SERVER_INTEGER_EPSILON: Final = 1e-9


def server_integer(value: float) -> int | None:
    """The integer the API server accepts `value` as, or None when it is no integer to it.

    The server compares with the truncated value; rounding also takes a value just below an
    integer, which the server refuses anyway, so nothing it stores is read differently.
    """
    if not math.isfinite(value):
        return None
    nearest = round(value)
    if value == nearest:
        return int(nearest)
    scale = abs(value) + abs(nearest)
    return int(nearest) if abs(value - nearest) / scale < SERVER_INTEGER_EPSILON else None


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    annotation = _unwrap(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(_unwrap(a) for a in get_args(annotation))
    return (annotation,)


def _coerce(value: Any, annotation: Any) -> Any:
    """`value` with the near-integers an integer-typed part of `annotation` expects made ints.

    Nested models are left to their own (tolerant) validation, which sees the same context.
    """
    options = _alternatives(annotation)
    if isinstance(value, float) and int in options and float not in options:
        integer = server_integer(value)
        return value if integer is None else integer
    for option in options:
        origin, args = get_origin(option), get_args(option)
        if origin is list and args and isinstance(value, list):
            return [_coerce(v, args[0]) for v in value]
        if origin is dict and len(args) == 2 and isinstance(value, Mapping):
            # A null map value is kept (and refused): dropping a label of a selector would
            # widen it (safety rule 7), and the server prunes or refuses such nulls anyway.
            return {k: _coerce(v, args[1]) for k, v in value.items()}
    return value


def tolerant_fields(model: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` (one object's fields as stored) in the form `model` accepts strictly.

    Unknown keys are dropped (a newer CRD's fields) unless the model keeps extra fields; a null
    field counts as absent where the model takes no None (the server prunes such nulls too, so
    the default applies); floats the server took as integers become ints.
    """
    annotations: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotations[name] = info.annotation
        if info.alias:
            annotations[info.alias] = info.annotation
    keep_unknown = model.model_config.get("extra") == "allow"
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in annotations:
            if keep_unknown:
                out[key] = value
            continue
        annotation = annotations[key]
        if value is None and type(None) not in _alternatives(annotation):
            continue
        out[key] = _coerce(value, annotation)
    return out


class ApiModel(BaseModel):
    """Frozen, alias-generating, unknown-field-rejecting base for spec and status models.

    `extra="forbid"` mirrors the apiserver's strict field validation, so a manifest that
    `kubectl apply` rejects for an unknown field also fails here.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _tolerate_stored(cls, data: Any, info: ValidationInfo) -> Any:
        context = info.context
        if isinstance(context, Mapping) and context.get(STORED) and isinstance(data, Mapping):
            return tolerant_fields(cls, data)
        return data

    @classmethod
    def from_stored(cls, data: Any) -> Self:
        """Read an object as the API server stored it (see the module's docstring)."""
        return cls.model_validate(data, context={STORED: True})

    def to_wire(self) -> dict[str, Any]:
        """The object as it is sent to and stored by the apiserver (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class CelRule:
    """A cross-field rule: enforced by the apiserver (CEL) and by the model (Python).

    The Python check lives in the model's validator and raises `ValueError(rule.message)`,
    so both sides report the same text.
    """

    rule: str
    message: str
    field_path: str | None = None

    def to_schema(self) -> dict[str, str]:
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


def cel_rules(*rules: CelRule) -> dict[str, Any]:
    """`json_schema_extra` carrying `x-kubernetes-validations` for a model or field."""
    return {"x-kubernetes-validations": [r.to_schema() for r in rules]}
