"""Pydantic JSON Schema → structural schema, on small models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from polca.api.schema import SchemaError, structural_schema, without_nulls

Word = Annotated[str, StringConstraints(pattern=r"^[a-z]+$", max_length=8)]


class Inner(BaseModel):
    """Inner docs."""

    model_config = ConfigDict(extra="forbid")

    level: float = Field(default=2.0, gt=0, le=10, description="A level.")
    note: str | None = Field(default=None, description="Optional note.")


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inner: Inner = Field(default=Inner(), description="The inner part.")
    maybe: Inner | None = Field(default=None, description="Maybe an inner part.")
    mode: Literal["a", "b"] = Field(default="a", description="A mode.")
    fixed: Literal["only"] = Field(default="only", description="A constant.")
    by_word: dict[Word, int] = Field(default_factory=dict, description="Counts by word.")
    items: list[Inner] = Field(default_factory=list, description="Several.")


SCHEMA = structural_schema(Outer)
PROPS: dict[str, Any] = SCHEMA["properties"]


def test_references_are_inlined_with_the_fields_description() -> None:
    inner = PROPS["inner"]
    assert inner["type"] == "object"
    assert inner["description"] == "The inner part."
    assert set(inner["properties"]) == {"level", "note"}
    assert PROPS["items"]["items"]["description"] == "Inner docs."


def test_optional_fields_lose_the_null_branch_and_are_not_required() -> None:
    assert "anyOf" not in PROPS["maybe"]
    assert PROPS["maybe"]["type"] == "object"
    assert "nullable" not in PROPS["maybe"]
    assert "required" not in SCHEMA


def test_exclusive_bounds_become_openapi_flags() -> None:
    level = PROPS["inner"]["properties"]["level"]
    assert (level["minimum"], level["exclusiveMinimum"]) == (0, True)
    assert level["maximum"] == 10
    assert "exclusiveMaximum" not in level


def test_defaults_drop_nulls_and_print_integral_floats_as_ints() -> None:
    assert PROPS["inner"]["default"] == {"level": 2}
    assert "default" not in PROPS["maybe"]
    assert without_nulls({"a": None, "b": [{"c": None, "d": 1}]}) == {"b": [{"d": 1}]}


def test_literals_become_enums() -> None:
    assert PROPS["mode"]["enum"] == ["a", "b"]
    assert PROPS["fixed"]["enum"] == ["only"]


def test_constrained_map_keys_become_a_cel_rule() -> None:
    by_word = PROPS["by_word"]
    assert by_word["additionalProperties"] == {"type": "integer"}
    assert "patternProperties" not in by_word
    (rule,) = by_word["x-kubernetes-validations"]
    assert rule["rule"] == "self.all(k, size(k) <= 8 && k.matches(r'^[a-z]+$'))"
    assert "size(k) <= 8" in rule["message"]


def test_no_title_and_no_additional_properties_false() -> None:
    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        if isinstance(node, list):
            return {k for v in node for k in keys(v)}
        return set()

    found = keys(SCHEMA)
    assert not {"title", "$ref", "$defs", "anyOf", "propertyNames"} & found
    assert PROPS["inner"].get("additionalProperties") is None


def test_unions_of_types_are_refused() -> None:
    class Union(BaseModel):
        value: int | str

    with pytest.raises(SchemaError, match="unions"):
        structural_schema(Union)


def test_untyped_fields_are_refused() -> None:
    class Loose(BaseModel):
        anything: Any

    with pytest.raises(SchemaError, match="no type"):
        structural_schema(Loose)
