"""POLCA's policy as the API's defaults: the tiers and the stage table of the paper.

The numbers come from `polca.control.plan.POLCA_PLAN` (one source of truth); this module
names the stages as the paper numbers them and adds descriptions for `kubectl explain`.
"""

from __future__ import annotations

from polca.api.meta import LabelSelector, LabelSelectorRequirement
from polca.api.stages import Stage, TierAction
from polca.api.tiers import PriorityRange, Tier, TierRule
from polca.control import plan
from polca.control.selectors import Selector
from polca.control.tiers import TRAINING_SELECTORS
from polca.power.profiles import PROFILES

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


def _gpu_clocks(clock_pct: float) -> str:
    """What a clock percentage is on each GPU model we profile: `A100 1275 MHz, H100/H200 1790
    MHz` (models with the same maximum clock grouped)."""
    limits_by_max: dict[int, tuple[list[str], int]] = {}
    for profile in PROFILES.values():
        mhz = plan.TierAction(clock_ceiling_pct=clock_pct).resolve(profile.limits).clock_ceiling_mhz
        assert mhz is not None  # a clock percentage always resolves to a clock
        names, _ = limits_by_max.setdefault(profile.max_sm_clock_mhz, ([], mhz))
        names.append(profile.name.split("-")[0])
    return ", ".join(f"{'/'.join(names)} {mhz} MHz" for names, mhz in limits_by_max.values())


_STAGE_PURPOSE = {
    "normal": "Normal operation: no limits.",
    "stage1": "POLCA stage 1",
    "stage2": "POLCA stage 2",
    "stage3": "POLCA stage 3, entered when power stays at its trigger for settleSeconds after "
    "stage 2",
    "brake": "Power brake, every GPU near halt (never below each GPU's minimum clock)",
}


def _clock_limits(stage: plan.Stage, *, long: bool) -> str:
    """`idle, low at 90.43% (A100 1275 MHz, ...)`: tiers grouped by clock percentage."""
    by_clock: dict[float, list[str]] = {}
    for tier, action in stage.actions.items():
        if action.clock_ceiling_pct is not None:
            by_clock.setdefault(action.clock_ceiling_pct, []).append(tier)
    of_max = " of max SM clock" if long else ""
    return " and ".join(
        f"{', '.join(tiers)} at {pct:g}%{of_max} ({_gpu_clocks(pct)})"
        for pct, tiers in by_clock.items()
    )


def _describe(name: str, stage: plan.Stage) -> str:
    """The stage's purpose and its clocks, with what they are on each GPU model."""
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
        "POLCA's table, GPU-relative: clock ceilings are percentages of each GPU's maximum SM "
        f"clock, the paper's A100 clocks over the A100's {plan.A100_MAX_SM_CLOCK_MHZ} MHz (what "
        f"they are on each GPU model in brackets): {STAGE_NAMES[0]}, then " + "; ".join(rows)
    )


DEFAULT_STAGES_SUMMARY = _table_summary()
