"""Pydantic JSON Schema → Kubernetes structural OpenAPI v3 schema.

Structural means: every node has a type, no `$ref`, no `anyOf` with types inside, no
`additionalProperties: false` (the apiserver prunes unknown fields, and rejects them under
strict field validation). Optional fields lose their null branch: the apiserver prunes nulls
of non-nullable fields, which is what `ApiModel.to_wire` (exclude_none) does too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

JsonDict = dict[str, Any]

# JSON Schema keywords that Kubernetes does not accept or that carry no meaning for it.
_DROPPED = frozenset({"title", "examples", "propertyNames", "patternProperties", "$defs"})


class SchemaError(ValueError):
    """The model uses a construct a structural schema cannot express."""


def structural_schema(model: type[BaseModel]) -> JsonDict:
    """The structural schema of `model`, with aliases as property names."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}), path=model.__name__)


def without_nulls(value: Any) -> Any:
    """`value` with None entries removed from every mapping (as the apiserver stores it)."""
    if isinstance(value, Mapping):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def _integral(value: Any) -> Any:
    """Floats like 80.0 written as 80, so generated YAML reads as a person would write it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _resolve(node: JsonDict, defs: Mapping[str, JsonDict]) -> JsonDict:
    """Inline `$ref`, single-entry `allOf` and `anyOf [X, null]`; siblings override."""
    target: JsonDict | None = None
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
    elif len(node.get("allOf", ())) == 1:
        target = node["allOf"][0]
    elif "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise SchemaError(f"unions are not structural: {node['anyOf']}")
        target = branches[0]
    if target is None:
        return node
    siblings = {k: v for k, v in node.items() if k not in ("$ref", "allOf", "anyOf")}
    return {**_resolve(target, defs), **siblings}


def _convert(node: JsonDict, defs: Mapping[str, JsonDict], path: str) -> JsonDict:
    node = _resolve(node, defs)
    out: JsonDict = {}
    for key, value in node.items():
        if key not in _DROPPED:
            out.update(_keyword(key, value, defs, path))
    _map_key_rules(node, out, defs, path)
    preserved = out.get("x-kubernetes-preserve-unknown-fields", False)
    if "type" not in out and not preserved:
        raise SchemaError(f"{path}: no type (structural schemas need one everywhere)")
    if out.get("type") == "object" and not (
        "properties" in out or "additionalProperties" in out or preserved
    ):
        raise SchemaError(f"{path}: an object needs properties or additionalProperties")
    return _ordered(out)


def _keyword(key: str, value: Any, defs: Mapping[str, JsonDict], path: str) -> JsonDict:
    """One JSON Schema keyword as the structural schema keyword(s) it becomes."""
    result: JsonDict
    match key:
        case "default":
            result = {} if value is None else {"default": _integral(without_nulls(value))}
        case "const":
            result = {"enum": [value]}
        case "exclusiveMinimum" | "exclusiveMaximum":
            # JSON Schema 2020-12 gives a number; OpenAPI v3.0 a flag next to minimum/maximum.
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            result = {bound: _integral(value), key: True}
        case "minimum" | "maximum":
            result = {key: _integral(value)}
        case "properties":
            result = {key: {n: _convert(sub, defs, f"{path}.{n}") for n, sub in value.items()}}
        case "items":
            result = {key: _convert(value, defs, f"{path}[]")}
        case "additionalProperties" if isinstance(value, bool):
            # `false` is pydantic's extra="forbid": the apiserver prunes (strictly: rejects).
            result = {}
        case "additionalProperties":
            result = {key: _convert(value, defs, f"{path}{{}}")}
        case _:
            result = {key: value}
    return result


# Keys first that a reader of `kubectl get crd -o yaml` looks for first.
_KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "nullable",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "maxProperties",
    "required",
    "properties",
    "items",
    "additionalProperties",
)


def _ordered(node: JsonDict) -> JsonDict:
    rank = {key: i for i, key in enumerate(_KEY_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def _map_key_rules(node: JsonDict, out: JsonDict, defs: Mapping[str, JsonDict], path: str) -> None:
    """Constrained map keys (`patternProperties`/`propertyNames`) become one CEL rule."""
    patterns = node.get("patternProperties")
    names = node.get("propertyNames", {})
    if not patterns and not names:
        return
    checks: list[str] = []
    if patterns:
        if len(patterns) != 1:
            raise SchemaError(f"{path}: one key pattern at most")
        ((pattern, value_schema),) = patterns.items()
        out["additionalProperties"] = _convert(value_schema, defs, f"{path}{{}}")
        names = {**names, "pattern": pattern}
    if "minLength" in names:
        checks.append(f"size(k) >= {names['minLength']}")
    if "maxLength" in names:
        checks.append(f"size(k) <= {names['maxLength']}")
    if "pattern" in names:
        checks.append(f"k.matches({_cel_string(names['pattern'])})")
    if not checks:
        return
    rule = {
        "rule": f"self.all(k, {' && '.join(checks)})",
        "message": f"every key must be {names['description']}"
        if "description" in names
        else "every key must satisfy " + " && ".join(checks),
    }
    # A new list: the field's own rules may be a list its model shares (json_schema_extra).
    out["x-kubernetes-validations"] = [*out.get("x-kubernetes-validations", ()), rule]


def _cel_string(text: str) -> str:
    """A CEL raw single-quoted string literal (regexes keep their backslashes)."""
    if "'" in text:
        raise SchemaError(f"pattern with a quote: {text}")
    return f"r'{text}'"
