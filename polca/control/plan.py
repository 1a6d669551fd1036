"""Control plans: the stages a power domain moves through and what each stage does to each tier.

A plan is pure data. The controller (:mod:`polca.control.controller`) chooses a stage; the node
daemon and the simulator turn the stage's per-tier :class:`TierAction` into GPU settings with
:meth:`TierAction.resolve`, clamped to what each GPU accepts.

Percentages: ``trigger_pct``/``release_pct`` are of the domain budget; ``clock_ceiling_pct`` is
of the GPU's maximum SM clock; ``power_limit_pct`` is of the GPU's default power limit (its TDP).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar

__all__ = [
    "A100_MAX_SM_CLOCK_MHZ",
    "POLCA_PLAN",
    "ControlPlan",
    "GpuLimits",
    "ResolvedAction",
    "Stage",
    "TierAction",
    "a100_clock_percent",
    "plan_from_dict",
    "shift_triggers",
]


@dataclass(frozen=True, slots=True)
class GpuLimits:
    """What a GPU accepts; the daemon reads these from NVML, the simulator from a profile."""

    max_sm_clock_mhz: int
    min_sm_clock_mhz: int
    min_limit_w: float
    max_limit_w: float
    default_limit_w: float


@dataclass(frozen=True, slots=True)
class ResolvedAction:
    """Concrete settings for one GPU; None means "leave uncapped"."""

    clock_ceiling_mhz: int | None = None
    power_limit_w: float | None = None

    def stronger(self, other: ResolvedAction) -> ResolvedAction:
        """The tighter of two settings, knob by knob (guard and stage actions combine so)."""
        return ResolvedAction(
            clock_ceiling_mhz=_min_or_none(self.clock_ceiling_mhz, other.clock_ceiling_mhz),
            power_limit_w=_min_or_none(self.power_limit_w, other.power_limit_w),
        )


_Num = TypeVar("_Num", int, float)


def _min_or_none(a: _Num | None, b: _Num | None) -> _Num | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


@dataclass(frozen=True, slots=True)
class TierAction:
    """What a stage does to the GPUs of one tier: a clock ceiling and/or a power limit.

    Each knob is given either absolutely or as a percentage, not both. An empty action means
    "no caps" for that tier.
    """

    clock_ceiling_mhz: int | None = None
    clock_ceiling_pct: float | None = None
    power_limit_w: float | None = None
    power_limit_pct: float | None = None

    def __post_init__(self) -> None:
        if self.clock_ceiling_mhz is not None and self.clock_ceiling_pct is not None:
            raise ValueError("give clock_ceiling_mhz or clock_ceiling_pct, not both")
        if self.power_limit_w is not None and self.power_limit_pct is not None:
            raise ValueError("give power_limit_w or power_limit_pct, not both")
        for name in ("clock_ceiling_mhz", "power_limit_w"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("clock_ceiling_pct", "power_limit_pct"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 100:
                raise ValueError(f"{name} must be within (0, 100], got {value}")

    @property
    def is_noop(self) -> bool:
        return all(
            v is None
            for v in (
                self.clock_ceiling_mhz,
                self.clock_ceiling_pct,
                self.power_limit_w,
                self.power_limit_pct,
            )
        )

    def resolve(self, gpu: GpuLimits) -> ResolvedAction:
        """Concrete settings for ``gpu``, clamped to the ranges it accepts."""
        clock: int | None = None
        if self.clock_ceiling_mhz is not None:
            clock = self.clock_ceiling_mhz
        elif self.clock_ceiling_pct is not None:
            # The epsilon keeps 1275/1410 of 1410 MHz at 1275, not 1274.999… floored.
            clock = math.floor(gpu.max_sm_clock_mhz * self.clock_ceiling_pct / 100.0 + 1e-6)
        if clock is not None:
            clock = min(max(clock, gpu.min_sm_clock_mhz), gpu.max_sm_clock_mhz)

        limit: float | None = None
        if self.power_limit_w is not None:
            limit = self.power_limit_w
        elif self.power_limit_pct is not None:
            limit = gpu.default_limit_w * self.power_limit_pct / 100.0
        if limit is not None:
            limit = min(max(limit, gpu.min_limit_w), gpu.max_limit_w)
        return ResolvedAction(clock_ceiling_mhz=clock, power_limit_w=limit)


@dataclass(frozen=True, slots=True)
class Stage:
    """A stage entered when domain power reaches ``trigger_pct`` of the budget.

    It is left (one stage down) once power stays below ``release_pct`` for the plan's hold
    time. ``actions`` maps a tier name to its action; tiers not listed are not throttled.
    """

    name: str
    trigger_pct: float
    release_pct: float
    actions: Mapping[str, TierAction] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a stage needs a name")
        if not 0 <= self.release_pct <= self.trigger_pct:
            raise ValueError(
                f"stage {self.name!r}: need 0 <= release_pct <= trigger_pct, "
                f"got {self.release_pct} / {self.trigger_pct}"
            )
        # Freeze the mapping so a plan cannot change under a running controller.
        object.__setattr__(self, "actions", MappingProxyType(dict(self.actions)))

    def action_for(self, tier: str) -> TierAction:
        return self.actions.get(tier, TierAction())


@dataclass(frozen=True, slots=True)
class ControlPlan:
    """Stages (index 0 is normal, without actions), tiers first-throttled→last, and timing.

    ``predict_s``: escalate on the power predicted this far ahead from its latest rise
    (:mod:`polca.control.controller`); 0 escalates on the measured power.
    """

    stages: tuple[Stage, ...]
    tiers: tuple[str, ...]
    failsafe_stage: int
    settle_s: float
    hold_s: float
    staleness_s: float
    predict_s: float = 0.0

    def __post_init__(self) -> None:
        if len(self.stages) < 2:
            raise ValueError("a plan needs stage 0 (normal) and at least one throttling stage")
        if self.stages[0].actions:
            raise ValueError("stage 0 is normal operation and cannot have actions")
        if len(set(self.tiers)) != len(self.tiers) or not self.tiers:
            raise ValueError("tiers must be a non-empty list of unique names")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        triggers = [s.trigger_pct for s in self.stages[1:]]
        if triggers != sorted(triggers):
            raise ValueError(f"stage triggers must not decrease, got {triggers}")
        for stage in self.stages:
            unknown = set(stage.actions) - set(self.tiers)
            if unknown:
                raise ValueError(f"stage {stage.name!r} acts on unknown tiers {sorted(unknown)}")
        if not 0 <= self.failsafe_stage < len(self.stages):
            raise ValueError(f"failsafe_stage must index a stage, got {self.failsafe_stage}")
        for name in ("settle_s", "hold_s", "staleness_s", "predict_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def last_stage(self) -> int:
        """The brake-equivalent stage."""
        return len(self.stages) - 1

    def actions_for(self, stage: int) -> Mapping[str, TierAction]:
        """Per-tier actions of ``stage`` for every tier of the plan (no-ops included)."""
        chosen = self.stages[stage]
        return MappingProxyType({tier: chosen.action_for(tier) for tier in self.tiers})


def shift_triggers(plan: ControlPlan, top_trigger_pct: float) -> ControlPlan:
    """Move every throttling stage but the last so the highest one triggers at ``top_trigger_pct``.

    Spacing between stages and each stage's hysteresis are kept; the last (brake) stage stays
    where it is. Used to derive thresholds from the reaction time: a faster controller can wait
    until power is closer to the budget.
    """
    middle = plan.stages[1:-1]
    if not middle:
        return plan
    delta = top_trigger_pct - max(s.trigger_pct for s in middle)
    brake = plan.stages[-1]
    if max(s.trigger_pct for s in middle) + delta > brake.trigger_pct:
        raise ValueError("shifted triggers would pass the brake stage's trigger")
    shifted = tuple(
        replace(s, trigger_pct=s.trigger_pct + delta, release_pct=max(0.0, s.release_pct + delta))
        for s in middle
    )
    return replace(plan, stages=(plan.stages[0], *shifted, brake))


_ALL_TIERS = ("idle", "low", "high")

# POLCA's clocks are A100 clocks; the plan keeps them as fractions of this maximum.
A100_MAX_SM_CLOCK_MHZ = 1410


def a100_clock_percent(clock_mhz: int) -> float:
    """An A100 clock as a percentage of the A100's max SM clock, rounded *up* to two decimals.

    Two decimals read well in a CRD default; rounding up makes :meth:`TierAction.resolve` (which
    floors) give back exactly ``clock_mhz`` on an A100, so the default is POLCA's table there.
    """
    return math.ceil(10_000 * clock_mhz / A100_MAX_SM_CLOCK_MHZ) / 100


def _a100_clock(clock_mhz: int) -> TierAction:
    return TierAction(clock_ceiling_pct=a100_clock_percent(clock_mhz))


# GPU-relative: each ceiling is a percentage of every GPU's own max SM clock, so stage 1 means
# 90.43% everywhere (1275 MHz on an A100, 1790 MHz on an H100/H200), not 1275 MHz, which
# would be 64% of an H100's 1980 MHz.
POLCA_PLAN = ControlPlan(
    stages=(
        Stage(name="normal", trigger_pct=0.0, release_pct=0.0),
        # POLCA's stage 1: row power ≥ 80% → low-priority GPUs (and idle ones) at 1275 MHz.
        Stage(
            name="stage1",
            trigger_pct=80.0,
            release_pct=75.0,
            actions={"idle": _a100_clock(1275), "low": _a100_clock(1275)},
        ),
        # ≥ 89% → low-priority at 1110 MHz.
        Stage(
            name="stage2",
            trigger_pct=89.0,
            release_pct=84.0,
            actions={"idle": _a100_clock(1110), "low": _a100_clock(1110)},
        ),
        # Still ≥ 89% one settle period after stage 2 → high-priority at 1305 MHz too.
        Stage(
            name="stage3",
            trigger_pct=89.0,
            release_pct=84.0,
            actions={
                "idle": _a100_clock(1110),
                "low": _a100_clock(1110),
                "high": _a100_clock(1305),
            },
        ),
        # The brake: every GPU near halt (A100 brake clock ~288 MHz; clamped to each GPU's min).
        Stage(
            name="brake",
            trigger_pct=100.0,
            release_pct=89.0,
            actions={tier: _a100_clock(288) for tier in _ALL_TIERS},
        ),
    ),
    tiers=_ALL_TIERS,
    failsafe_stage=2,
    settle_s=5.0,
    hold_s=30.0,
    staleness_s=10.0,
)


def plan_from_dict(data: Mapping[str, Any]) -> ControlPlan:
    """A plan from plain data (YAML/JSON), e.g. for ``polca simulate --plan``.

    Keys mirror the dataclasses: ``stages`` (list of {name, trigger_pct, release_pct, actions:
    {tier: {clock_ceiling_mhz | clock_ceiling_pct, power_limit_w | power_limit_pct}}}),
    ``tiers``, ``failsafe_stage``, ``settle_s``, ``hold_s``, ``staleness_s`` and optionally
    ``predict_s``.
    """
    try:
        stages = tuple(
            Stage(
                name=str(s["name"]),
                trigger_pct=float(s["trigger_pct"]),
                release_pct=float(s["release_pct"]),
                actions={
                    str(tier): TierAction(**dict(action))
                    for tier, action in (s.get("actions") or {}).items()
                },
            )
            for s in data["stages"]
        )
        return ControlPlan(
            stages=stages,
            tiers=tuple(str(t) for t in data["tiers"]),
            failsafe_stage=int(data["failsafe_stage"]),
            settle_s=float(data["settle_s"]),
            hold_s=float(data["hold_s"]),
            staleness_s=float(data["staleness_s"]),
            predict_s=float(data.get("predict_s", 0.0)),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"invalid control plan: {exc!r}") from exc
