"""From the API to the control plan and tier set."""

from __future__ import annotations

import dataclasses
from typing import Any

from polca.api.convert import plan_from_spec, tier_set_from_spec
from polca.api.powerpolicy import PowerPolicySpec
from polca.control.plan import POLCA_PLAN, ControlPlan
from polca.control.tiers import KUBEFLOW_JOB_LABEL, PodFacts, resolve_tier


def spec(**extra: Any) -> PowerPolicySpec:
    return PowerPolicySpec.model_validate({"allNodes": True, "budgetWatts": 1000, **extra})


def renamed(plan: ControlPlan, names: list[str]) -> ControlPlan:
    stages = tuple(dataclasses.replace(s, name=n) for s, n in zip(plan.stages, names, strict=True))
    return dataclasses.replace(plan, stages=stages)


def test_the_default_spec_is_polcas_plan() -> None:
    plan = plan_from_spec(spec())
    assert renamed(plan, [s.name for s in POLCA_PLAN.stages]) == POLCA_PLAN
    assert [s.name for s in plan.stages] == ["normal", "stage1", "stage2", "stage3", "brake"]


def test_timing_and_failsafe_come_from_the_spec() -> None:
    plan = plan_from_spec(
        spec(
            settleSeconds=2,
            holdSeconds=12,
            telemetry={"stalenessSeconds": 4},
            failsafeStage="stage3",
        )
    )
    assert (plan.settle_s, plan.hold_s, plan.staleness_s) == (2, 12, 4)
    assert plan.failsafe_stage == 3


def test_prediction_comes_from_the_spec_and_defaults_to_none() -> None:
    assert plan_from_spec(spec()).predict_s == 0.0
    assert plan_from_spec(spec(predictionSeconds=2.5)).predict_s == 2.5
    # Up to the staleness bound, which a longer staleness raises.
    at_bound = spec(predictionSeconds=20, telemetry={"stalenessSeconds": 20})
    assert plan_from_spec(at_bound).predict_s == 20


def test_percent_and_power_actions_convert() -> None:
    plan = plan_from_spec(
        spec(
            failsafeStage="cap",
            stages=[
                {"name": "normal"},
                {
                    "name": "cap",
                    "triggerPercent": 85,
                    "releasePercent": 80,
                    "actions": {
                        "low": {"powerLimitPercent": 60, "clockCeilingPercent": 90},
                        "high": {"powerLimitWatts": 500},
                        "idle": {},
                    },
                },
            ],
        )
    )
    cap = plan.stages[1]
    assert cap.actions["low"].power_limit_pct == 60
    assert cap.actions["low"].clock_ceiling_pct == 90
    assert cap.actions["high"].power_limit_w == 500
    assert cap.action_for("idle").is_noop
    assert plan.stages[0].trigger_pct == 0


def test_tiers_keep_their_order_after_idle() -> None:
    custom = spec(
        tiers=[{"name": "batch"}, {"name": "standard"}, {"name": "premium"}],
        defaultTier="standard",
        failsafeStage="stage1",
        stages=[{"name": "normal"}, {"name": "stage1", "triggerPercent": 80, "releasePercent": 70}],
    )
    assert plan_from_spec(custom).tiers == ("idle", "batch", "standard", "premium")


def test_tier_rules_convert_and_resolve() -> None:
    tiers = tier_set_from_spec(spec())
    training = PodFacts("ml", "worker-0", {KUBEFLOW_JOB_LABEL: "ft"}, priority=1000)
    serving = PodFacts("serve", "vllm-0", {"app": "vllm"}, priority=1000)
    preemptible = PodFacts("serve", "batch-0", {}, priority=-10)
    assert resolve_tier(tiers, training) == "low"
    assert resolve_tier(tiers, serving) == "high"
    assert resolve_tier(tiers, preemptible) == "low"
    assert resolve_tier(tiers, None) == "idle"


def test_namespace_and_priority_rules_convert() -> None:
    custom = spec(
        tiers=[
            {
                "name": "low",
                "rules": [{"namespaces": ["research"], "priority": {"min": 0, "max": 100}}],
            },
            {"name": "high"},
        ]
    )
    tiers = tier_set_from_spec(custom)
    assert resolve_tier(tiers, PodFacts("research", "a", {}, priority=50)) == "low"
    assert resolve_tier(tiers, PodFacts("research", "a", {}, priority=500)) == "high"
    assert resolve_tier(tiers, PodFacts("prod", "a", {}, priority=50)) == "high"
