"""The node's local guard, pure part: extra throttling when a node exceeds its own guard budget.

The guard runs on every node in a fast loop (≤ 0.5 s) independently of the operator, so a dead
operator or stale telemetry cannot let a node run away. It climbs a ladder of
:class:`GuardStep` levels, throttling tiers in order (first-throttled tier first), one level per
call while node power exceeds the guard budget, and climbs down one level once power has stayed
below ``release_pct`` of the budget for ``hold_s`` (:mod:`polca.control.hysteresis`, shared
with the stage controller). Levels whose tiers have no GPU on this node are skipped, so every
level change changes something.

Its per-GPU actions combine with the stage's actions knob by knob, the tighter one winning
(:meth:`polca.control.plan.ResolvedAction.stronger`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from polca.control.hysteresis import Hysteresis, Move, Timers, unsure
from polca.control.plan import TierAction

__all__ = [
    "GuardConfig",
    "GuardDecision",
    "GuardState",
    "GuardStep",
    "decide_guard",
    "default_guard_steps",
]


@dataclass(frozen=True, slots=True)
class GuardStep:
    """From this level up, GPUs of ``tiers`` carry ``action`` (later levels override earlier)."""

    tiers: frozenset[str]
    action: TierAction


@dataclass(frozen=True, slots=True)
class GuardConfig:
    budget_w: float
    steps: tuple[GuardStep, ...]
    release_pct: float = 90.0  # of budget_w
    hold_s: float = 5.0
    settle_s: float = 0.0  # minimum time between two escalations

    def __post_init__(self) -> None:
        if self.budget_w <= 0:
            raise ValueError(f"guard budget_w must be positive, got {self.budget_w}")
        if not 0 < self.release_pct <= 100:
            raise ValueError(f"release_pct must be within (0, 100], got {self.release_pct}")
        if not self.steps:
            raise ValueError("a guard needs at least one step")
        if self.hold_s < 0 or self.settle_s < 0:
            raise ValueError("hold_s and settle_s must not be negative")


def default_guard_steps(
    tiers: Sequence[str], *, throttle_pct: float = 70.0, last_pct: float = 30.0
) -> tuple[GuardStep, ...]:
    """One step per tier in order at ``throttle_pct`` of max clock, then every tier at
    ``last_pct`` (the local brake)."""
    steps = [
        GuardStep(frozenset({tier}), TierAction(clock_ceiling_pct=throttle_pct)) for tier in tiers
    ]
    steps.append(GuardStep(frozenset(tiers), TierAction(clock_ceiling_pct=last_pct)))
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class GuardState:
    level: int = 0
    below_release_since_s: float | None = None
    last_escalation_s: float | None = None


@dataclass(frozen=True, slots=True)
class GuardDecision:
    level: int
    changed: bool
    reason: str
    state: GuardState
    actions: tuple[TierAction, ...]  # one per GPU, in the order of ``gpu_tiers``


def decide_guard(
    config: GuardConfig,
    state: GuardState,
    *,
    now_s: float,
    node_power_w: float | None,
    gpu_tiers: Sequence[str],
) -> GuardDecision:
    """The guard level for this tick and each GPU's extra action."""
    present = set(gpu_tiers)
    levels = [0] + [i + 1 for i, s in enumerate(config.steps) if s.tiers & present]
    current = min(max(state.level, 0), len(config.steps))

    def result(level: int, new_state: GuardState, reason: str) -> GuardDecision:
        return GuardDecision(
            level=level,
            changed=level != state.level,
            reason=reason,
            state=new_state,
            actions=_actions(config, level, gpu_tiers),
        )

    timers = Timers(state.last_escalation_s, state.below_release_since_s)
    if node_power_w is None:
        # No reading: keep what is enforced, never release blind.
        return result(current, _state(current, unsure(timers)), "no power reading: holding")

    higher = [lv for lv in levels if lv > current]
    release_w = config.budget_w * config.release_pct / 100.0
    step = _hysteresis(config).step(
        timers,
        now_s=now_s,
        value=node_power_w,
        trigger=config.budget_w,
        release=release_w if current > 0 else None,
        can_rise=bool(higher),
    )
    if step.move is Move.UP:
        return result(
            higher[0],
            _state(higher[0], step.timers),
            f"node {node_power_w:.0f} W > guard {config.budget_w:.0f} W",
        )
    if step.move is Move.DOWN:
        lower = max(lv for lv in levels if lv < current)
        return result(
            lower,
            _state(lower, step.timers),
            f"node below {release_w:.0f} W for {config.hold_s:g}s",
        )
    return result(current, _state(current, step.timers), _WAITING.get(step.move, "steady"))


_WAITING = {
    Move.AT_TOP: "at the last guard level",
    Move.SETTLING: "settling before escalating",
    Move.HOLDING: "holding before release",
}


def _hysteresis(config: GuardConfig) -> Hysteresis:
    return _hysteresis_of(config.settle_s, config.hold_s)


@cache
def _hysteresis_of(settle_s: float, hold_s: float) -> Hysteresis:
    # Only over the budget counts: a node exactly at its guard budget is within it.
    return Hysteresis(settle_s=settle_s, hold_s=hold_s, trigger_inclusive=False)


def _state(level: int, timers: Timers) -> GuardState:
    return GuardState(
        level=level,
        below_release_since_s=timers.below_release_since_s,
        last_escalation_s=timers.last_escalation_s,
    )


def _actions(config: GuardConfig, level: int, gpu_tiers: Sequence[str]) -> tuple[TierAction, ...]:
    per_tier: dict[str, TierAction] = {}
    for step in config.steps[:level]:
        for tier in step.tiers:
            per_tier[tier] = step.action
    return tuple(per_tier.get(tier, TierAction()) for tier in gpu_tiers)
