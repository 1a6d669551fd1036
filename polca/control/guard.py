"""The node's local guard, pure part: extra throttling when a node exceeds its own guard budget.

The guard runs on every node in a fast loop (≤ 0.5 s) independently of the operator, so a dead
operator or stale telemetry cannot let a node run away. It climbs a ladder of
:class:`GuardStep` levels, throttling tiers in order (first-throttled tier first), one level per
call while node power exceeds the guard budget, and climbs down one level once power has stayed
below ``release_pct`` of the budget for ``hold_s``. Levels whose tiers have no GPU on this node
are skipped, so every level change changes something.

Its per-GPU actions combine with the stage's actions knob by knob, the tighter one winning
(:meth:`polca.control.plan.ResolvedAction.stronger`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

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

    if node_power_w is None:
        # No reading: keep what is enforced, never release blind.
        return result(
            current,
            replace(state, level=current, below_release_since_s=None),
            "no power reading: holding",
        )

    if node_power_w > config.budget_w:
        higher = [lv for lv in levels if lv > current]
        settled = (
            state.last_escalation_s is None or now_s - state.last_escalation_s >= config.settle_s
        )
        if higher and settled:
            new = GuardState(level=higher[0], below_release_since_s=None, last_escalation_s=now_s)
            return result(
                higher[0], new, f"node {node_power_w:.0f} W > guard {config.budget_w:.0f} W"
            )
        reason = "at the last guard level" if not higher else "settling before escalating"
        return result(current, replace(state, level=current, below_release_since_s=None), reason)

    release_w = config.budget_w * config.release_pct / 100.0
    if current > 0 and node_power_w < release_w:
        since = state.below_release_since_s if state.below_release_since_s is not None else now_s
        if now_s - since >= config.hold_s:
            lower = max(lv for lv in levels if lv < current)
            new = GuardState(
                level=lower, below_release_since_s=now_s, last_escalation_s=state.last_escalation_s
            )
            return result(lower, new, f"node below {release_w:.0f} W for {config.hold_s:g}s")
        return result(
            current,
            replace(state, level=current, below_release_since_s=since),
            "holding before release",
        )

    return result(current, replace(state, level=current, below_release_since_s=None), "steady")


def _actions(config: GuardConfig, level: int, gpu_tiers: Sequence[str]) -> tuple[TierAction, ...]:
    per_tier: dict[str, TierAction] = {}
    for step in config.steps[:level]:
        for tier in step.tiers:
            per_tier[tier] = step.action
    return tuple(per_tier.get(tier, TierAction()) for tier in gpu_tiers)
