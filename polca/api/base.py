"""The base of every API model: camelCase on the wire, snake_case in Python, strict input."""

from __future__ import annotations

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
        use_attribute_docstrings=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it is sent to and stored by the apiserver (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
