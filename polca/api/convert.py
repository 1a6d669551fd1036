"""From API models to the pure control types the controller, daemon and simulator run on."""

from __future__ import annotations

from polca.api import stages as api_stages
from polca.api import tiers as api_tiers
from polca.api.powerpolicy import PowerPolicySpec
from polca.control import plan, tiers


def action_from_api(action: api_stages.TierAction) -> plan.TierAction:
    return plan.TierAction(
        clock_ceiling_mhz=action.clock_ceiling_mhz,
        clock_ceiling_pct=action.clock_ceiling_percent,
        power_limit_w=action.power_limit_watts,
        power_limit_pct=action.power_limit_percent,
    )


def stage_from_api(stage: api_stages.Stage) -> plan.Stage:
    # The resting stage has no trigger or release in the API; the plan counts it as 0%.
    return plan.Stage(
        name=stage.name,
        trigger_pct=stage.trigger_percent or 0.0,
        release_pct=stage.release_percent or 0.0,
        actions={tier: action_from_api(a) for tier, a in stage.actions.items() if a.is_limit},
    )


def plan_from_spec(spec: PowerPolicySpec) -> plan.ControlPlan:
    """The control plan of a (validated) policy spec."""
    return plan.ControlPlan(
        stages=tuple(stage_from_api(s) for s in spec.stages),
        tiers=tier_set_from_spec(spec).names,
        failsafe_stage=spec.stage_index(spec.failsafe_stage),
        settle_s=spec.settle_seconds,
        hold_s=spec.hold_seconds,
        staleness_s=spec.telemetry.staleness_seconds,
        predict_s=spec.prediction_seconds,
    )


def _rule_from_api(rule: api_tiers.TierRule) -> tiers.TierRule:
    priority = rule.priority
    return tiers.TierRule(
        pod_selector=rule.pod_selector.to_selector() if rule.pod_selector else None,
        priority=tiers.PriorityRange(priority.min, priority.max) if priority else None,
        namespaces=frozenset(rule.namespaces) if rule.namespaces is not None else None,
    )


def tier_set_from_spec(spec: PowerPolicySpec) -> tiers.TierSet:
    """The policy's tiers and rules, for `polca.control.tiers.resolve_tier`."""
    return tiers.TierSet(
        tiers=tuple(
            tiers.Tier(t.name, tuple(_rule_from_api(r) for r in t.rules or ())) for t in spec.tiers
        ),
        default_tier=spec.default_tier,
    )
