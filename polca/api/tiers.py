"""Tiers: which pods' GPUs are throttled first. Rules are resolved by `polca.control.tiers`."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from polca.api.base import ApiModel, CelRule, cel_rules
from polca.api.meta import DnsLabel, LabelSelector
from polca.control.tiers import IDLE_TIER, TIER_LABEL

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
MAX_TIERS = 16
MAX_RULES = 16
MAX_NAMESPACES = 64

PRIORITY_BOUNDS_ORDERED = CelRule(
    rule="!has(self.min) || !has(self.max) || self.min <= self.max",
    message="min must not exceed max",
    field_path=".min",
)
PRIORITY_RANGE_NOT_EMPTY = CelRule(
    rule="has(self.min) || has(self.max)",
    message="set min, max or both",
)
RULE_NOT_EMPTY = CelRule(
    rule="has(self.podSelector) || has(self.priority) || has(self.namespaces)",
    message="a tier rule needs podSelector, priority or namespaces (an empty rule would "
    "match every pod)",
)
TIER_NAME_NOT_IDLE = CelRule(
    rule=f"self.name != '{IDLE_TIER}'",
    message=f"name '{IDLE_TIER}' is reserved for the implicit tier of GPUs without a pod",
    field_path=".name",
)


class PriorityRange(ApiModel):
    """An inclusive range of pod priority values (`spec.priority`, set from the PriorityClass)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(PRIORITY_BOUNDS_ORDERED, PRIORITY_RANGE_NOT_EMPTY)
    )

    min: int | None = Field(
        default=None,
        ge=INT32_MIN,
        le=INT32_MAX,
        description="Lowest matching priority, inclusive. Omit for no lower bound.",
    )
    max: int | None = Field(
        default=None,
        ge=INT32_MIN,
        le=INT32_MAX,
        description="Highest matching priority, inclusive. Omit for no upper bound.",
    )

    @model_validator(mode="after")
    def _check(self) -> PriorityRange:
        if self.min is None and self.max is None:
            raise ValueError(PRIORITY_RANGE_NOT_EMPTY.message)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(PRIORITY_BOUNDS_ORDERED.message)
        return self


class TierRule(ApiModel):
    """One way for a pod to belong to a tier. Every part that is set must match."""

    model_config = ConfigDict(json_schema_extra=cel_rules(RULE_NOT_EMPTY))

    pod_selector: LabelSelector | None = Field(
        default=None, description="Pod labels that must match (a Kubernetes label selector)."
    )
    priority: PriorityRange | None = Field(
        default=None,
        description="Pod priority range (the value of the pod's PriorityClass). Pods without "
        "a priority value never match a range.",
    )
    namespaces: Annotated[list[DnsLabel], Field(max_length=MAX_NAMESPACES)] | None = Field(
        default=None, description="Namespaces the pod must be in (any of them)."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> TierRule:
        if self.pod_selector is None and self.priority is None and self.namespaces is None:
            raise ValueError(RULE_NOT_EMPTY.message)
        return self


class Tier(ApiModel):
    """A named group of pods whose GPUs are throttled together."""

    model_config = ConfigDict(json_schema_extra=cel_rules(TIER_NAME_NOT_IDLE))

    name: DnsLabel = Field(
        description=f"Tier name, referenced by stage actions and by the pod label "
        f"`{TIER_LABEL}`. `{IDLE_TIER}` is reserved for GPUs without a pod."
    )
    description: str | None = Field(
        default=None, max_length=256, description="What the tier is for (free text)."
    )
    rules: Annotated[list[TierRule], Field(max_length=MAX_RULES)] | None = Field(
        default=None,
        description=f"A pod belongs to this tier when its label `{TIER_LABEL}` names the "
        "tier, or else when any of these rules matches; tiers are tried in list order and "
        "pods that match none get spec.defaultTier.",
    )

    @model_validator(mode="after")
    def _not_idle(self) -> Tier:
        if self.name == IDLE_TIER:
            raise ValueError(TIER_NAME_NOT_IDLE.message)
        return self
