"""Tier resolution: label override, rules in tier order, default tier, idle GPUs."""

from __future__ import annotations

import pytest

from polca.control.selectors import Operator, Requirement, Selector
from polca.control.tiers import (
    IDLE_TIER,
    JOBSET_NAME_LABEL,
    KUBEFLOW_JOB_LABEL,
    RAY_JOB_KIND,
    RAY_ORIGIN_CRD_LABEL,
    TIER_LABEL,
    TRAINING_SELECTORS,
    VOLCANO_JOB_LABEL,
    PodFacts,
    PriorityRange,
    Tier,
    TierRule,
    TierSet,
    resolve_tier,
)

LOW_PRIORITY = TierRule(priority=PriorityRange(max=-1))
POLCA_TIERS = TierSet(
    tiers=(
        Tier("low", (*(TierRule(pod_selector=s) for s in TRAINING_SELECTORS), LOW_PRIORITY)),
        Tier("high"),
    ),
    default_tier="high",
)


def pod(labels: dict[str, str] | None = None, priority: int | None = 0, ns: str = "ml") -> PodFacts:
    return PodFacts(namespace=ns, name="p", labels=labels or {}, priority=priority)


def test_a_gpu_without_a_pod_is_idle() -> None:
    assert resolve_tier(POLCA_TIERS, None) == IDLE_TIER


def test_idle_is_throttled_first() -> None:
    assert POLCA_TIERS.names == (IDLE_TIER, "low", "high")


@pytest.mark.parametrize(
    "labels",
    [
        {KUBEFLOW_JOB_LABEL: "llama-finetune"},
        {VOLCANO_JOB_LABEL: "pretrain"},
        {JOBSET_NAME_LABEL: "trainer-v2-job"},
        {RAY_ORIGIN_CRD_LABEL: RAY_JOB_KIND},
    ],
    ids=["kubeflow", "volcano", "jobset", "rayjob"],
)
def test_training_pods_are_low(labels: dict[str, str]) -> None:
    assert resolve_tier(POLCA_TIERS, pod(labels)) == "low"


def test_ray_serve_pods_are_not_training() -> None:
    assert resolve_tier(POLCA_TIERS, pod({RAY_ORIGIN_CRD_LABEL: "RayService"})) == "high"


@pytest.mark.parametrize(
    ("priority", "tier"),
    [(-1000, "low"), (-1, "low"), (0, "high"), (1_000_000, "high"), (None, "high")],
)
def test_priority_ranges_are_inclusive_and_need_a_priority(priority: int | None, tier: str) -> None:
    assert resolve_tier(POLCA_TIERS, pod(priority=priority)) == tier


def test_unmatched_pods_get_the_default_tier() -> None:
    assert resolve_tier(POLCA_TIERS, pod({"app": "vllm"})) == "high"


def test_the_tier_label_overrides_rules() -> None:
    training_marked_high = pod({KUBEFLOW_JOB_LABEL: "j", TIER_LABEL: "high"})
    assert resolve_tier(POLCA_TIERS, training_marked_high) == "high"
    assert resolve_tier(POLCA_TIERS, pod({TIER_LABEL: "low"})) == "low"


@pytest.mark.parametrize("value", ["medium", IDLE_TIER, ""])
def test_a_tier_label_naming_no_pod_tier_is_ignored(value: str) -> None:
    assert resolve_tier(POLCA_TIERS, pod({TIER_LABEL: value}, priority=-5)) == "low"
    assert resolve_tier(POLCA_TIERS, pod({TIER_LABEL: value})) == "high"


def test_the_first_matching_tier_in_order_wins() -> None:
    batch = TierRule(namespaces=frozenset({"batch"}))
    tiers = TierSet(
        tiers=(Tier("bulk", (batch,)), Tier("standard", (batch,)), Tier("premium")),
        default_tier="premium",
    )
    assert resolve_tier(tiers, pod(ns="batch")) == "bulk"
    assert resolve_tier(tiers, pod(ns="serving")) == "premium"


def test_every_part_of_a_rule_must_match() -> None:
    rule = TierRule(
        pod_selector=Selector(match_labels={"team": "research"}),
        priority=PriorityRange(min=0, max=100),
        namespaces=frozenset({"lab"}),
    )
    tiers = TierSet((Tier("low", (rule,)), Tier("high")), default_tier="high")
    assert resolve_tier(tiers, pod({"team": "research"}, priority=50, ns="lab")) == "low"
    assert resolve_tier(tiers, pod({"team": "research"}, priority=500, ns="lab")) == "high"
    assert resolve_tier(tiers, pod({"team": "research"}, priority=50, ns="prod")) == "high"
    assert resolve_tier(tiers, pod({"team": "ops"}, priority=50, ns="lab")) == "high"


def test_selector_operators_follow_kubernetes() -> None:
    def matches(op: Operator, values: frozenset[str], labels: dict[str, str]) -> bool:
        return Selector(match_expressions=(Requirement("k", op, values),)).matches(labels)

    ab = frozenset({"a", "b"})
    assert matches(Operator.IN, ab, {"k": "a"})
    assert not matches(Operator.IN, ab, {"k": "c"})
    assert not matches(Operator.IN, ab, {})
    assert matches(Operator.NOT_IN, ab, {"k": "c"})
    assert matches(Operator.NOT_IN, ab, {})  # NotIn matches objects without the key
    assert not matches(Operator.NOT_IN, ab, {"k": "b"})
    assert matches(Operator.EXISTS, frozenset(), {"k": ""})
    assert not matches(Operator.EXISTS, frozenset(), {})
    assert matches(Operator.DOES_NOT_EXIST, frozenset(), {})
    assert not matches(Operator.DOES_NOT_EXIST, frozenset(), {"k": "x"})
    assert Selector().matches({"any": "thing"})


def test_tier_sets_reject_an_undeclared_default_or_a_declared_idle() -> None:
    with pytest.raises(ValueError, match="default tier"):
        TierSet((Tier("low"),), default_tier="high")
    with pytest.raises(ValueError, match="implicit"):
        TierSet((Tier(IDLE_TIER), Tier("high")), default_tier="high")
