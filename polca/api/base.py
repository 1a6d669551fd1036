"""The base of every API model: camelCase on the wire, snake_case in Python, strict input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


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
