"""A Markdown field reference generated from the CRD schemas (docs/api-reference.md)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from polca.api.schema import JsonDict

_INTRO = (
    "# API field reference (polca.dev/v1alpha1)\n\n"
    "Generated from the models in `polca/api` by `make crds`; do not edit. The concepts are "
    "in [api.md](api.md). In the cluster, `kubectl explain powerpolicy.spec.stages` shows the "
    "same descriptions.\n"
)


def field_reference(kinds: Sequence[tuple[str, JsonDict]]) -> str:
    """One table per kind: every field with its type, default, bounds and description."""
    parts = [_INTRO]
    for kind, schema in kinds:
        parts.append(f"\n## {kind}\n\n{_cell(schema.get('description', ''))}\n")
        parts.append("\n| Field | Type | Default | Constraints | Description |\n")
        parts.append("|---|---|---|---|---|\n")
        for section in ("spec", "status"):
            sub = schema["properties"][section]
            required = section in schema.get("required", ())
            parts.extend(_rows(section, sub, required))
    return "".join(parts)


def _rows(path: str, schema: JsonDict, required: bool) -> Iterator[str]:
    yield (
        f"| `{path}` | {_type(schema)}{' (required)' if required else ''} | "
        f"{_default(schema)} | {_constraints(schema)} | {_cell(schema.get('description', ''))} |\n"
    )
    children: list[tuple[str, JsonDict, bool]] = []
    if "properties" in schema:
        needed = set(schema.get("required", ()))
        children = [(f"{path}.{k}", v, k in needed) for k, v in schema["properties"].items()]
    elif schema.get("type") == "array" and "properties" in schema.get("items", {}):
        needed = set(schema["items"].get("required", ()))
        children = [
            (f"{path}[].{k}", v, k in needed) for k, v in schema["items"]["properties"].items()
        ]
    elif "properties" in schema.get("additionalProperties", {}):
        value = schema["additionalProperties"]
        needed = set(value.get("required", ()))
        children = [(f"{path}.<key>.{k}", v, k in needed) for k, v in value["properties"].items()]
    for child_path, child, child_required in children:
        yield from _rows(child_path, child, child_required)


def _type(schema: JsonDict) -> str:
    kind = str(schema.get("type", "any"))
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map of {_type(schema['additionalProperties'])}"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return kind


def _default(schema: JsonDict) -> str:
    if "default" not in schema:
        return ""
    value = schema["default"]
    if isinstance(value, list | dict) and value:
        return "see description"
    return f"`{_scalar(value)}`"


def _constraints(schema: JsonDict) -> str:
    found: list[str] = []
    for key, symbol in (("minimum", ">"), ("maximum", "<")):
        if key in schema:
            exclusive = schema.get(f"exclusive{key.capitalize()}", False)
            found.append(f"{symbol}{'' if exclusive else '='} {_scalar(schema[key])}")
    found.extend(
        f"{key} {schema[key]}"
        for key in ("minLength", "maxLength", "minItems", "maxItems", "maxProperties")
        if key in schema
    )
    if schema.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(schema.get("x-kubernetes-list-map-keys", ()))
        found.append(f"unique {keys}")
    found.extend(_cell(rule["message"]) for rule in schema.get("x-kubernetes-validations", ()))
    return "; ".join(found)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value == {}:
        return "{}"
    return str(value)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
