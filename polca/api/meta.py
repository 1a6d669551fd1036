"""Object metadata and label selectors, as the apiserver serves them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from polca.api.base import ApiModel, CelRule, cel_rules
from polca.control.selectors import Operator, Requirement, Selector

# Label syntax (k8s.io/apimachinery validation): an optional DNS-subdomain prefix and a name.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A DNS-1123 label: the names of tiers and stages are used in metrics labels and events.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# The descriptions also become the messages of the CEL rules that check map keys.
LabelKey = Annotated[
    str,
    StringConstraints(pattern=LABEL_KEY_PATTERN, max_length=317),
    Field(description="a label key: an optional DNS subdomain and '/', then a name of at most "
          "63 letters, digits, '-', '_' or '.'"),
]  # fmt: skip
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=63)]
DnsLabel = Annotated[
    str,
    StringConstraints(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63),
    Field(description="a DNS label: at most 63 lower-case letters, digits or '-'"),
]

MAX_LABELS = 64
MAX_EXPRESSIONS = 32
MAX_VALUES = 64


class ObjectMeta(ApiModel):
    """The metadata fields POLCA reads; other fields are kept as they are."""

    # The apiserver owns metadata and adds fields over time: keep them, never reject them.
    model_config = ConfigDict(extra="allow")

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    finalizers: list[str] | None = None


VALUES_FIT_OPERATOR = CelRule(
    rule="self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0"
    " : !has(self.values) || size(self.values) == 0",
    message="values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
    field_path=".values",
)


class LabelSelectorRequirement(ApiModel):
    """A label requirement, as in Kubernetes' `matchExpressions`."""

    model_config = ConfigDict(json_schema_extra=cel_rules(VALUES_FIT_OPERATOR))

    key: LabelKey = Field(description="The label key the requirement applies to.")
    operator: Operator = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: Annotated[list[LabelValue], Field(max_length=MAX_VALUES)] | None = Field(
        default=None,
        description="Label values; non-empty for In and NotIn, empty for Exists and DoesNotExist.",
    )

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        needs_values = self.operator in (Operator.IN, Operator.NOT_IN)
        if needs_values != bool(self.values):
            raise ValueError(VALUES_FIT_OPERATOR.message)
        return self

    def to_requirement(self) -> Requirement:
        return Requirement(self.key, self.operator, frozenset(self.values or ()))


# `matchLabels: {key: }` in YAML is a null. The API server would prune it before validation
# (leaving a selector that selects more nodes than written, or `{}`: every node), so the schema
# declares the values nullable, which keeps the null for this rule to refuse (safety rule 7).
LABEL_VALUES_ARE_STRINGS = CelRule(
    rule="self.all(k, type(self[k]) == string)",
    message="every label value must be a string: 'key: ' with nothing after it is a null, "
    'which would drop the label and widen the selector; write key: "" for the empty value',
)
# Nullable only in the CRD: the models themselves refuse a null label value.
MatchLabelValue = Annotated[LabelValue, Field(json_schema_extra={"nullable": True})]


class LabelSelector(ApiModel):
    """A Kubernetes label selector; an empty selector matches every object (which is why a
    PowerPolicy refuses one, and says `allNodes: true` instead)."""

    match_labels: (
        Annotated[dict[LabelKey, MatchLabelValue], Field(max_length=MAX_LABELS)] | None
    ) = Field(
        default=None,
        description="Label key/value pairs that must all be present.",
        json_schema_extra=cel_rules(LABEL_VALUES_ARE_STRINGS),
    )
    match_expressions: (
        Annotated[list[LabelSelectorRequirement], Field(max_length=MAX_EXPRESSIONS)] | None
    ) = Field(default=None, description="Label requirements that must all hold.")

    def to_selector(self) -> Selector:
        return Selector(
            match_labels=dict(self.match_labels or {}),
            match_expressions=tuple(r.to_requirement() for r in self.match_expressions or ()),
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.to_selector().matches(labels)
