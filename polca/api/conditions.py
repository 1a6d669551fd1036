"""Status conditions (metav1.Condition) and the helpers the operator and daemon use to set them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import Field

from polca.api.base import ApiModel

MAX_CONDITIONS = 16
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class PolicyConditionType(StrEnum):
    """Conditions of a PowerPolicy."""

    READY = "Ready"  # the policy is valid, selects nodes and is being enforced
    TELEMETRY_STALE = "TelemetryStale"  # domain power is unknown; the failsafe stage applies
    THROTTLING = "Throttling"  # the domain is above its first stage
    INVALID = "Invalid"  # the spec breaks a rule the schema cannot express


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """One aspect of the object's state, as in Kubernetes' metav1.Condition."""

    type: str = Field(
        min_length=1,
        max_length=316,
        description="Condition type: Ready, TelemetryStale, Throttling or Invalid on a "
        "PowerPolicy; Ready or GpuWriteFailed on a NodePowerState.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="Why the condition has its status, in CamelCase (e.g. NoNodesSelected).",
    )
    message: str = Field(
        default="", max_length=32768, description="Details for humans; may be empty."
    )
    last_transition_time: datetime = Field(
        description="When the status last changed (not when the condition was last written)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the condition was set for."
    )


def find_condition(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    """The condition of `type_`, if present."""
    return next((c for c in conditions or () if c.type == type_), None)


def is_condition_true(conditions: Sequence[Condition] | None, type_: str) -> bool:
    found = find_condition(conditions, type_)
    return found is not None and found.status == "True"


def set_condition(
    conditions: Sequence[Condition] | None,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: datetime,
    observed_generation: int | None = None,
) -> list[Condition]:
    """The conditions with `type_` set; its transition time moves only when the status changes.

    Order is kept (a new type is appended) so that writing the same state twice produces an
    identical list and no status write.
    """
    existing = find_condition(conditions, type_)
    transition = (
        existing.last_transition_time if existing is not None and existing.status == status else now
    )
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=observed_generation,
    )
    result = [updated if c.type == type_ else c for c in conditions or ()]
    if existing is None:
        result.append(updated)
    return result


class ConditionedStatus(ApiModel):
    """A status with conditions, and the helpers to read and set them."""

    conditions: Annotated[list[Condition], Field(max_length=MAX_CONDITIONS)] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="The object's conditions, one per type (see conditions[].type).",
    )

    def condition(self, type_: str) -> Condition | None:
        return find_condition(self.conditions, type_)

    def is_true(self, type_: str) -> bool:
        return is_condition_true(self.conditions, type_)

    def with_condition(
        self,
        type_: str,
        status: ConditionStatus,
        reason: str,
        message: str = "",
        *,
        now: datetime,
        observed_generation: int | None = None,
    ) -> Self:
        """A copy with the condition set (transition time kept while the status holds)."""
        conditions = set_condition(
            self.conditions,
            type_,
            status,
            reason,
            message,
            now=now,
            observed_generation=observed_generation,
        )
        return self.model_copy(update={"conditions": conditions})
