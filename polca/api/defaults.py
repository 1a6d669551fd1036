"""POLCA's policy as the API's defaults: the tiers and the stage table of the paper.

The numbers come from `polca.control.plan.POLCA_PLAN` (one source of truth); this module
names the stages as the paper numbers them and adds descriptions for `kubectl explain`.
"""

from __future__ import annotations

from polca.api.meta import LabelSelector, LabelSelectorRequirement
from polca.api.stages import A100_MAX_CLOCK_MHZ, Stage, TierAction
from polca.api.tiers import PriorityRange, Tier, TierRule
from polca.control import plan
from polca.control.selectors import Selector
from polca.control.tiers import TRAINING_SELECTORS

LOW_TIER = "low"
HIGH_TIER = "high"
DEFAULT_TIER = HIGH_TIER
# Negative priorities are the usual mark of preemptible, best-effort work.
LOW_PRIORITY_MAX = -1

# The API and the simulator name POLCA's stages alike, so a stage reads the same everywhere.
STAGE_NAMES = tuple(stage.name for stage in plan.POLCA_PLAN.stages)
DEFAULT_FAILSAFE_STAGE = STAGE_NAMES[plan.POLCA_PLAN.failsafe_stage]
DEFAULT_SETTLE_S = plan.POLCA_PLAN.settle_s
DEFAULT_HOLD_S = plan.POLCA_PLAN.hold_s
DEFAULT_STALENESS_S = plan.POLCA_PLAN.staleness_s


def clock_percent_of_a100(clock_mhz: int) -> float:
    """An A100 clock as a percentage of its 1410 MHz maximum, to one decimal."""
    return round(100.0 * clock_mhz / A100_MAX_CLOCK_MHZ, 1)


_STAGE_PURPOSE = {
    "normal": "Normal operation: no limits.",
    "stage1": "POLCA stage 1",
    "stage2": "POLCA stage 2",
    "stage3": "POLCA stage 3, entered when power stays at its trigger for settleSeconds after "
    "stage 2",
    "brake": "Power brake, every GPU near halt (clamped to each GPU's minimum clock)",
}


def _clock_limits(stage: plan.Stage, *, long: bool) -> str:
    """`idle, low at 1275 MHz (90.4%...)`: tiers grouped by clock, with A100 percentages."""
    by_clock: dict[int, list[str]] = {}
    for tier, action in stage.actions.items():
        if action.clock_ceiling_mhz is not None:
            by_clock.setdefault(action.clock_ceiling_mhz, []).append(tier)
    of_a100 = f" of an A100's {A100_MAX_CLOCK_MHZ} MHz" if long else ""
    return " and ".join(
        f"{', '.join(tiers)} at {mhz} MHz ({clock_percent_of_a100(mhz)}%{of_a100})"
        for mhz, tiers in by_clock.items()
    )


def _describe(name: str, stage: plan.Stage) -> str:
    """The stage's purpose and its clocks, also as percentages of the A100's maximum."""
    limits = _clock_limits(stage, long=True)
    return f"{_STAGE_PURPOSE[name]}: {limits}." if limits else _STAGE_PURPOSE[name]


def selector_model(selector: Selector) -> LabelSelector:
    """The API form of a pure selector."""
    return LabelSelector(
        match_labels=dict(selector.match_labels) or None,
        match_expressions=[
            LabelSelectorRequirement(
                key=r.key, operator=r.operator, values=sorted(r.values) or None
            )
            for r in selector.match_expressions
        ]
        or None,
    )


DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier(
        name=LOW_TIER,
        description="Training jobs (Kubeflow, Volcano, JobSet, RayJob pods) and pods with a "
        "negative priority: throttled first.",
        rules=[
            *(TierRule(pod_selector=selector_model(s)) for s in TRAINING_SELECTORS),
            TierRule(priority=PriorityRange(max=LOW_PRIORITY_MAX)),
        ],
    ),
    Tier(name=HIGH_TIER, description="Everything else, e.g. latency-sensitive inference."),
)


def _api_action(action: plan.TierAction) -> TierAction:
    return TierAction(
        clock_ceiling_mhz=action.clock_ceiling_mhz,
        clock_ceiling_percent=action.clock_ceiling_pct,
        power_limit_watts=action.power_limit_w,
        power_limit_percent=action.power_limit_pct,
    )


def _api_stage(index: int, name: str, stage: plan.Stage) -> Stage:
    resting = index == 0
    return Stage(
        name=name,
        description=_describe(name, stage),
        trigger_percent=None if resting else stage.trigger_pct,
        release_percent=None if resting else stage.release_pct,
        actions={tier: _api_action(a) for tier, a in stage.actions.items()},
    )


DEFAULT_STAGES: tuple[Stage, ...] = tuple(
    _api_stage(i, name, stage)
    for i, (name, stage) in enumerate(zip(STAGE_NAMES, plan.POLCA_PLAN.stages, strict=True))
)


def _table_summary() -> str:
    """The default stages in one line, for the description of spec.stages."""
    rows = [
        f"{name} at {stage.trigger_pct:g}% (release {stage.release_pct:g}%): "
        f"{_clock_limits(stage, long=False)}"
        for name, stage in zip(STAGE_NAMES[1:], plan.POLCA_PLAN.stages[1:], strict=True)
    ]
    return (
        f"POLCA's table with A100 clocks (percentages of the A100's {A100_MAX_CLOCK_MHZ} "
        f"MHz in brackets): {STAGE_NAMES[0]}, then " + "; ".join(rows)
    )


DEFAULT_STAGES_SUMMARY = _table_summary()
