"""The PowerPolicy kind: a power domain, its budget, tiers and stages, and its status."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field, model_validator

from polca.api import defaults
from polca.api.base import ApiModel, CelRule, cel_rules
from polca.api.conditions import ConditionedStatus
from polca.api.meta import DnsLabel, LabelSelector, ObjectMeta
from polca.api.stages import MAX_PERCENT_OF_BUDGET, MAX_STAGES, Stage
from polca.api.tiers import MAX_TIERS, Tier
from polca.control.selectors import Selector
from polca.control.tiers import IDLE_TIER

GROUP = "polca.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "polca.dev/v1alpha1"
KOPF_STATUS_DESCRIPTION = (
    "Reserved for Kopf, the operator framework: it may keep handler progress here "
    "(status.kopf.progress) and touch status.kopf.dummy. Its content is Kopf's, so unknown "
    "fields are preserved here and only here."
)

# --- how domain power is counted ----------------------------------------------------------

QUERY_FITS_SOURCE = CelRule(
    rule="self.source == 'promql' ? has(self.query) : !has(self.query)",
    message="query is required when source is promql, and only then",
    field_path=".query",
)


class NodePower(ApiModel):
    """How the power of one node is counted; domain power is the sum over its nodes."""

    model_config = ConfigDict(json_schema_extra=cel_rules(QUERY_FITS_SOURCE))

    source: Literal["gpu", "promql"] = Field(
        default="gpu",
        description="gpu: the GPUs' board power reported by NVML (through the node daemons) "
        "plus overheadWatts per node. promql: whole-node power from spec.nodePower.query, "
        "e.g. a PDU or BMC exporter (needs telemetry.source prometheus).",
    )
    overhead_watts: float = Field(
        default=0.0,
        ge=0,
        le=100_000,
        description="Non-GPU power per node in watts (CPUs, memory, fans, NICs), added to "
        "the GPU power when source is gpu. With 0, budgetWatts is a GPU-only budget.",
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="PromQL instant query returning one series per node with its power in "
        "watts, the node named by the label nodeLabel. Only with source promql.",
    )
    node_label: str = Field(
        default="node",
        min_length=1,
        max_length=128,
        description="The label of the query's series that holds the node name.",
    )

    @model_validator(mode="after")
    def _query_fits_source(self) -> NodePower:
        if (self.source == "promql") != (self.query is not None):
            raise ValueError(QUERY_FITS_SOURCE.message)
        return self


PROMETHEUS_NEEDS_URL = CelRule(
    rule="self.source != 'prometheus' || has(self.prometheusURL)",
    message="prometheusURL is required when source is prometheus",
    field_path=".prometheusURL",
)


class Telemetry(ApiModel):
    """Where the operator reads domain power, and when it stops trusting it."""

    model_config = ConfigDict(json_schema_extra=cel_rules(PROMETHEUS_NEEDS_URL))

    source: Literal["prometheus", "direct"] = Field(
        default="direct",
        description="direct (default): the node daemons' power streams, a line per GPU sample "
        "as it is taken (the fastest reaction), with Prometheus as the fallback where a URL is "
        "configured (prometheusURL or the operator's --prometheus-url). prometheus: the "
        "Prometheus HTTP API at prometheusURL, needed by nodePower.source promql.",
    )
    prometheus_url: str | None = Field(
        default=None,
        alias="prometheusURL",
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of the Prometheus HTTP API, e.g. "
        "http://prometheus-operated.monitoring:9090.",
    )
    staleness_seconds: float = Field(
        default=defaults.DEFAULT_STALENESS_S,
        gt=0,
        le=3600,
        description="Power older than this is stale: the domain moves to failsafeStage "
        "(never to the first stage) until fresh power arrives.",
    )
    direct_fallback: bool = Field(
        default=True,
        description="With source prometheus: read the node daemons' power streams while "
        "Prometheus fails, before declaring telemetry stale.",
    )

    @model_validator(mode="after")
    def _url_with_prometheus(self) -> Telemetry:
        if self.source == "prometheus" and self.prometheus_url is None:
            raise ValueError(PROMETHEUS_NEEDS_URL.message)
        return self


GUARD_RELEASE_BELOW_TRIGGER = CelRule(
    rule="self.releasePercent < self.triggerPercent",
    message="guard.releasePercent must be below guard.triggerPercent",
    field_path=".releasePercent",
)


class Guard(ApiModel):
    """The node daemon's local guard: throttles a node on its own if the node overdraws.

    It runs even when the operator is gone or telemetry is stale, so no node runs away.
    """

    model_config = ConfigDict(json_schema_extra=cel_rules(GUARD_RELEASE_BELOW_TRIGGER))

    enabled: bool = Field(default=True, description="Run the local guard on every node.")
    node_budget_watts: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="Each node's local budget in watts, counted as in spec.nodePower. "
        "Default: budgetWatts divided by the number of nodes in the domain.",
    )
    trigger_percent: float = Field(
        default=150.0,
        gt=0,
        le=MAX_PERCENT_OF_BUDGET,
        description="Node power, in percent of the node budget, at which the guard acts. Above "
        "100 by default: in an oversubscribed domain a busy node's peak exceeds its even share "
        "while the domain is in budget (the simulator's guard uses 150/135).",
    )
    release_percent: float = Field(
        default=135.0,
        ge=0,
        le=MAX_PERCENT_OF_BUDGET,
        description="Node power, in percent of the node budget, below which the guard lets go.",
    )
    reaction_stage: DnsLabel | None = Field(
        default=None,
        description="The first stage whose actions the node applies while the guard acts, one "
        "tier at a time in throttling order; if the node stays over, the guard continues with "
        "the later stages' actions up to the last (brake) stage. Combined with the domain's "
        "stage, the more restrictive limit wins. Default: failsafeStage.",
    )
    interval_seconds: float = Field(
        default=0.5,
        ge=0.05,
        le=10,
        description="How often the guard samples node power.",
    )

    @model_validator(mode="after")
    def _release_below_trigger(self) -> Guard:
        if self.release_percent >= self.trigger_percent:
            raise ValueError(GUARD_RELEASE_BELOW_TRIGGER.message)
        return self


# --- the spec ------------------------------------------------------------------------------

FIRST_STAGE_RESTS = CelRule(
    rule="!has(self[0].triggerPercent) && (!has(self[0].actions) || size(self[0].actions) == 0)",
    message="stages[0] is the resting stage: it has no triggerPercent, releasePercent or actions",
)
LATER_STAGES_TRIGGER = CelRule(
    rule="self.all(s, s.name == self[0].name || has(s.triggerPercent))",
    message="every stage after stages[0] needs triggerPercent and releasePercent",
)
TRIGGERS_ASCENDING = CelRule(
    rule="self.filter(s, has(s.triggerPercent)).map(s, s.triggerPercent).isSorted()",
    message="triggerPercent must not decrease from one stage to the next (a repeated "
    "trigger escalates after settleSeconds)",
)
DEFAULT_TIER_DECLARED = CelRule(
    rule="self.tiers.exists(t, t.name == self.defaultTier)",
    message="defaultTier must name a tier in spec.tiers",
    field_path=".defaultTier",
)
_UNKNOWN_TIER = f"k != '{IDLE_TIER}' && !self.tiers.exists(t, t.name == k)"
ACTIONS_NAME_TIERS = CelRule(
    rule=f"self.stages.all(s, !has(s.actions) || !s.actions.exists(k, {_UNKNOWN_TIER}))",
    message=f"every key of stages[].actions must name a tier in spec.tiers or '{IDLE_TIER}'",
    field_path=".stages",
)
FAILSAFE_EXISTS = CelRule(
    rule="self.stages.exists(s, s.name == self.failsafeStage)",
    message=f"failsafeStage must name a stage in spec.stages (its default, "
    f"{defaults.DEFAULT_FAILSAFE_STAGE}, is a stage of the default table: set failsafeStage "
    "when you define your own stages)",
    field_path=".failsafeStage",
)
FAILSAFE_NOT_FIRST = CelRule(
    rule="self.stages[0].name != self.failsafeStage",
    message="failsafeStage must not be the first (resting) stage: stale telemetry must never "
    "lift limits",
    field_path=".failsafeStage",
)
GUARD_STAGE_EXISTS = CelRule(
    rule="!has(self.guard.reactionStage) || "
    "self.stages.exists(s, s.name == self.guard.reactionStage)",
    message="guard.reactionStage must name a stage in spec.stages",
    field_path=".guard.reactionStage",
)
# Safety rule 7: a domain selects every node only when it says so. An empty selector is
# refused, however it came to be empty (a null label value is refused on its own: see
# polca.api.meta.LABEL_VALUES_ARE_STRINGS).
_SELECTS_BY_LABEL = (
    "has(self.nodeSelector) && ("
    "(has(self.nodeSelector.matchLabels) && size(self.nodeSelector.matchLabels) > 0) || "
    "(has(self.nodeSelector.matchExpressions) && size(self.nodeSelector.matchExpressions) > 0))"
)
_ALL_NODES = "has(self.allNodes) && self.allNodes"
SELECTOR_NOT_EMPTY = CelRule(
    rule=f"{_ALL_NODES} || ({_SELECTS_BY_LABEL})",
    message="nodeSelector must name nodes by at least one label (matchLabels or "
    "matchExpressions): an empty selector would select every node. To select every node, "
    "set allNodes: true instead",
    field_path=".nodeSelector",
)
ALL_NODES_WITHOUT_SELECTOR = CelRule(
    rule=f"!({_ALL_NODES}) || !({_SELECTS_BY_LABEL})",
    message="allNodes: true selects every node: leave nodeSelector out, or drop allNodes",
    field_path=".allNodes",
)
PROMQL_NEEDS_PROMETHEUS = CelRule(
    rule="self.nodePower.source != 'promql' || self.telemetry.source == 'prometheus'",
    message="nodePower.source promql needs telemetry.source prometheus",
    field_path=".nodePower.source",
)
PREDICTION_WITHIN_STALENESS = CelRule(
    rule="!has(self.predictionSeconds) || "
    "self.predictionSeconds <= self.telemetry.stalenessSeconds",
    message="predictionSeconds must not exceed telemetry.stalenessSeconds: a trend is not "
    "projected further ahead than a sample is trusted",
    field_path=".predictionSeconds",
)

MAP_LIST: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}


def _duplicates(names: Iterable[str]) -> list[str]:
    return sorted(name for name, count in Counter(names).items() if count > 1)


class PowerPolicySpec(ApiModel):
    """A power domain (the nodes that share a budget) and how POLCA keeps it in budget."""

    SPEC_RULES: ClassVar[tuple[CelRule, ...]] = (
        SELECTOR_NOT_EMPTY,
        ALL_NODES_WITHOUT_SELECTOR,
        DEFAULT_TIER_DECLARED,
        ACTIONS_NAME_TIERS,
        FAILSAFE_EXISTS,
        FAILSAFE_NOT_FIRST,
        GUARD_STAGE_EXISTS,
        PROMQL_NEEDS_PROMETHEUS,
        PREDICTION_WITHIN_STALENESS,
    )
    model_config = ConfigDict(json_schema_extra=cel_rules(*SPEC_RULES))

    node_selector: LabelSelector | None = Field(
        default=None,
        description="The nodes of the power domain: a label selector with at least one "
        "label (an empty one is refused; see allNodes). A node may be in several domains (a "
        "row inside a hall): each GPU then gets, knob by knob, the most restrictive action of "
        "the policies that select its node.",
    )
    all_nodes: bool = Field(
        default=False,
        description="true: the domain is every node of the cluster, and nodeSelector is left "
        "out. Selecting every node is never implied by an empty or missing nodeSelector.",
    )
    budget_watts: float = Field(
        gt=0,
        le=1e9,
        description="Provisioned power of the domain in watts (its PDU or breaker limit). "
        "Stage triggers are percentages of it.",
    )
    node_power: NodePower = Field(
        default=NodePower(), description="How each node's power is counted."
    )
    telemetry: Telemetry = Field(default=Telemetry(), description="Where power comes from.")
    control_interval_seconds: float = Field(
        default=1.0,
        ge=0.1,
        le=60,
        description="How often the operator reads domain power and decides the stage. With "
        "direct telemetry a sample that takes the domain to the next stage's trigger runs a "
        "decision at once (at most one per 50 ms); release waits for the interval.",
    )
    settle_seconds: float = Field(
        default=defaults.DEFAULT_SETTLE_S,
        ge=0,
        le=600,
        description="Escalation goes one stage per settle period: after entering a stage the "
        "domain waits this long before the next stage, so the last action can take effect.",
    )
    hold_seconds: float = Field(
        default=defaults.DEFAULT_HOLD_S,
        ge=0,
        le=3600,
        description="Power must stay below a stage's releasePercent this long before the "
        "domain steps down, one stage at a time.",
    )
    prediction_seconds: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="Escalate on the domain power predicted this far ahead: the latest sample "
        "plus its rise per second since the previous sample times this (never below the "
        "sample). Set it to the time from a sample to the GPUs carrying a stage (telemetry "
        "period + control interval + actuation) to act before power reaches a trigger, so "
        "triggers can sit close to the budget. Release, and the brake-equivalent last stage, "
        "go by measured power only. 0: escalate on measured power.",
    )
    tiers: Annotated[list[Tier], Field(min_length=1, max_length=MAX_TIERS)] = Field(
        default=list(defaults.DEFAULT_TIERS),
        json_schema_extra=MAP_LIST,
        description="Pod tiers, from first-throttled to last. GPUs without a pod form the "
        f"implicit tier {IDLE_TIER}, throttled before all of these. Default: low (training "
        "and negative-priority pods) and high (everything else).",
    )
    default_tier: DnsLabel = Field(
        default=defaults.DEFAULT_TIER,
        description="The tier of pods that match no tier rule.",
    )
    stages: Annotated[list[Stage], Field(min_length=2, max_length=MAX_STAGES)] = Field(
        default=list(defaults.DEFAULT_STAGES),
        json_schema_extra={
            **MAP_LIST,
            **cel_rules(FIRST_STAGE_RESTS, LATER_STAGES_TRIGGER, TRIGGERS_ASCENDING),
        },
        description="Stages in escalation order. The first is the resting state (no trigger, "
        "no actions); each later one is entered at its triggerPercent and left below its "
        f"releasePercent. Default: {defaults.DEFAULT_STAGES_SUMMARY}.",
    )
    failsafe_stage: DnsLabel = Field(
        default=defaults.DEFAULT_FAILSAFE_STAGE,
        description="The stage the domain takes while telemetry is stale or missing. Never "
        f"the first stage. Default: {defaults.DEFAULT_FAILSAFE_STAGE} of the default table.",
    )
    guard: Guard = Field(default=Guard(), description="The node daemons' local guard.")
    dry_run: bool = Field(
        default=False,
        description="Decide and report (status, events, metrics) but never change a GPU.",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> PowerPolicySpec:
        problems = self.rule_violations()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def rule_violations(self) -> list[str]:
        """The cross-field rules the CRD checks with CEL, checked here with the same messages."""
        out = self._selection_violations()
        stage_names = [s.name for s in self.stages]
        tier_names = {t.name for t in self.tiers}
        for field, names in (("stages", stage_names), ("tiers", [t.name for t in self.tiers])):
            out.extend(f"spec.{field}: duplicate name {name!r}" for name in _duplicates(names))
        first = self.stages[0]
        if first.trigger_percent is not None or first.actions:
            out.append(f"spec.stages: {FIRST_STAGE_RESTS.message}")
        if any(s.trigger_percent is None for s in self.stages[1:]):
            out.append(f"spec.stages: {LATER_STAGES_TRIGGER.message}")
        triggers = [s.trigger_percent for s in self.stages if s.trigger_percent is not None]
        if triggers != sorted(triggers):
            got = ", ".join(
                f"{s.name}={s.trigger_percent:g}"
                for s in self.stages
                if s.trigger_percent is not None
            )
            out.append(f"spec.stages: {TRIGGERS_ASCENDING.message}; got {got}")
        if self.default_tier not in tier_names:
            out.append(f"spec.defaultTier: {DEFAULT_TIER_DECLARED.message}")
        allowed = tier_names | {IDLE_TIER}
        for i, stage in enumerate(self.stages):
            unknown = sorted(set(stage.actions) - allowed)
            if unknown:
                out.append(f"spec.stages[{i}].actions {unknown}: {ACTIONS_NAME_TIERS.message}")
        if self.failsafe_stage not in stage_names:
            out.append(f"spec.failsafeStage: {FAILSAFE_EXISTS.message}")
        elif self.failsafe_stage == first.name:
            out.append(f"spec.failsafeStage: {FAILSAFE_NOT_FIRST.message}")
        if self.guard.reaction_stage is not None and self.guard.reaction_stage not in stage_names:
            out.append(f"spec.guard.reactionStage: {GUARD_STAGE_EXISTS.message}")
        if self.node_power.source == "promql" and self.telemetry.source != "prometheus":
            out.append(f"spec.nodePower.source: {PROMQL_NEEDS_PROMETHEUS.message}")
        if self.prediction_seconds > self.telemetry.staleness_seconds:
            out.append(f"spec.predictionSeconds: {PREDICTION_WITHIN_STALENESS.message}")
        return out

    def _selection_violations(self) -> list[str]:
        selects = self.node_selector is not None and not self.node_selector.to_selector().empty
        if not self.all_nodes and not selects:
            return [f"spec.nodeSelector: {SELECTOR_NOT_EMPTY.message}"]
        if self.all_nodes and selects:
            return [f"spec.allNodes: {ALL_NODES_WITHOUT_SELECTOR.message}"]
        return []

    def selector(self) -> Selector:
        """The domain's nodes as a selector: every node only with allNodes (then empty)."""
        if self.all_nodes or self.node_selector is None:
            return Selector()
        return self.node_selector.to_selector()

    def selects(self, node_labels: Mapping[str, str]) -> bool:
        return self.selector().matches(node_labels)

    def stage_index(self, name: str) -> int:
        """The position of the stage called `name`."""
        for i, stage in enumerate(self.stages):
            if stage.name == name:
                return i
        raise KeyError(name)


# --- status --------------------------------------------------------------------------------


class PowerPolicyStatus(ConditionedStatus):
    """What the operator decided and observed. Written by the operator only."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this status reflects."
    )
    stage: str | None = Field(default=None, max_length=63, description="The current stage.")
    stage_index: int | None = Field(
        default=None, ge=0, description="Position of the current stage in spec.stages."
    )
    stage_since: datetime | None = Field(
        default=None, description="When the domain entered the current stage."
    )
    last_decision_time: datetime | None = Field(
        default=None, description="When the operator last decided the stage."
    )
    power_watts: float | None = Field(
        default=None, ge=0, description="Observed domain power in watts."
    )
    power_time: datetime | None = Field(
        default=None, description="When the observed domain power was sampled."
    )
    utilization_percent: float | None = Field(
        default=None, ge=0, description="Observed domain power in percent of budgetWatts."
    )
    node_count: int | None = Field(
        default=None, ge=0, description="Nodes the nodeSelector selects."
    )
    gpu_count: int | None = Field(default=None, ge=0, description="GPUs on the selected nodes.")
    throttled_gpu_count: int | None = Field(
        default=None, ge=0, description="GPUs with a clock ceiling or power limit applied."
    )
    kopf: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        description=KOPF_STATUS_DESCRIPTION,
    )


# What client-side `kubectl apply` last sent, kept by kubectl on the object.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def labels_dropped_by_kubectl(
    annotations: Mapping[str, str] | None, stored_labels: Mapping[str, str] | None
) -> list[str]:
    """Keys of spec.nodeSelector.matchLabels the manifest gave no value (`key: `, a null) and
    the stored selector lacks.

    Client-side `kubectl apply` drops such a null before it sends the object (a null means
    "delete" to it), so the API server never sees it and cannot refuse it; the selector it
    stores selects more nodes than the manifest says. Its last-applied annotation keeps the
    null, which is how the operator and the daemons still notice (safety rule 7).
    """
    raw = (annotations or {}).get(LAST_APPLIED)
    if not raw:
        return []
    try:
        written = json.loads(raw)
    except ValueError:
        return []
    labels: Any = written
    for key in ("spec", "nodeSelector", "matchLabels"):
        labels = labels.get(key) if isinstance(labels, dict) else None
    if not isinstance(labels, dict):
        return []
    return sorted(k for k, v in labels.items() if v is None and k not in (stored_labels or {}))


def dropped_labels_message(dropped: Iterable[str]) -> str:
    keys = ", ".join(dropped)
    return (
        f"spec.nodeSelector.matchLabels: kubectl apply dropped {keys}, written with no value (a "
        'null), so the stored selector selects more nodes than the manifest; write key: "" '
        "for the empty value, or remove the key, and apply again"
    )


class PowerPolicy(ApiModel):
    """A power domain: nodes sharing a power budget, kept under it by throttling GPUs."""

    api_version: Literal["polca.dev/v1alpha1"] = API_VERSION
    kind: Literal["PowerPolicy"] = "PowerPolicy"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PowerPolicySpec
    status: PowerPolicyStatus | None = None

    @model_validator(mode="after")
    def _no_label_dropped_by_kubectl(self) -> PowerPolicy:
        selector = self.spec.node_selector
        stored = selector.match_labels if selector is not None else None
        dropped = labels_dropped_by_kubectl(self.metadata.annotations, stored)
        if dropped:
            raise ValueError(dropped_labels_message(dropped))
        return self
