"""The stage controller: domain power in, stage out. Pure, deterministic, no clock of its own.

The operator and the simulator both call :func:`decide` once per control interval with the
current time (seconds on any monotonic scale), the latest domain power sample and its age.

Rules, in priority order:

1. **Stale or missing telemetry** (no sample, or older than ``plan.staleness_s``): go to the
   plan's failsafe stage if below it, immediately; never de-escalate on stale data.
2. **Brake**: power at or above the last stage's trigger jumps straight to the last stage.
3. **Escalation**: when power reaches the trigger of a stage above the current one, move up
   *one* stage, at most once per ``plan.settle_s`` (so each step's effect is seen before the
   next; POLCA's stage 3 is "still ≥ 89% after stage 2").
4. **De-escalation**: when power stays below the current stage's ``release_pct`` for
   ``plan.hold_s``, move down one stage; the hold restarts for the next one.

Rules 3 and 4 are :mod:`polca.control.hysteresis`, which the node guard uses too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

from polca.control.hysteresis import Hysteresis, Move, Timers, entered, left, unsure
from polca.control.plan import ControlPlan

__all__ = ["ControllerState", "Decision", "decide"]


@dataclass(frozen=True, slots=True)
class ControllerState:
    """What the controller remembers between decisions (persisted in the policy's status).

    A restarted controller continues from ``ControllerState(stage=<status stage>)``: it keeps the
    stage and only has to re-earn the hold time before releasing.
    """

    stage: int = 0
    last_escalation_s: float | None = None
    below_release_since_s: float | None = None
    last_change_s: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    stage: int
    reason: str
    changed: bool
    state: ControllerState
    utilization_pct: float | None = None


def decide(
    plan: ControlPlan,
    state: ControllerState,
    *,
    now_s: float,
    domain_power_w: float | None,
    budget_w: float,
    sample_age_s: float | None,
) -> Decision:
    """The stage for this control cycle, and the state to pass to the next call."""
    if budget_w <= 0:
        raise ValueError(f"budget_w must be positive, got {budget_w}")
    current = min(max(state.stage, 0), plan.last_stage)
    state = replace(state, stage=current)

    stale = (
        domain_power_w is None
        or sample_age_s is None
        or sample_age_s > plan.staleness_s
        or domain_power_w < 0
    )
    if stale:
        age = "missing" if sample_age_s is None or domain_power_w is None else f"{sample_age_s:g}s"
        state = _with_timers(state, unsure(_timers(state)))
        if current < plan.failsafe_stage:
            return _move(state, plan.failsafe_stage, now_s, f"telemetry stale ({age}): failsafe")
        return Decision(current, f"telemetry stale ({age}): holding stage", False, state)

    assert domain_power_w is not None  # narrowed by `stale`
    util = 100.0 * domain_power_w / budget_w
    if util >= plan.stages[-1].trigger_pct and current < plan.last_stage:
        return _move(state, plan.last_stage, now_s, f"power {util:.1f}% ≥ brake trigger", util)
    return _hysteresis(plan, state, now_s, util)


def _hysteresis(plan: ControlPlan, state: ControllerState, now_s: float, util: float) -> Decision:
    """Rules 3 and 4: one stage up at the next trigger, one down after the hold below release."""
    current = state.stage
    # Triggers never decrease, so "some higher stage's trigger is reached" is "the next one's is".
    can_rise = current < plan.last_stage
    step = _hysteresis_of(plan.settle_s, plan.hold_s).step(
        _timers(state),
        now_s=now_s,
        value=util,
        trigger=plan.stages[current + 1 if can_rise else current].trigger_pct,
        release=plan.stages[current].release_pct if current > 0 else None,
        can_rise=can_rise,
    )
    state = _with_timers(state, step.timers)
    if step.move is Move.UP:
        reason = f"power {util:.1f}% ≥ {plan.stages[current + 1].trigger_pct:g}% trigger"
        return _move(state, current + 1, now_s, reason, util)
    if step.move is Move.DOWN:
        release = plan.stages[current].release_pct
        reason = f"power below {release:g}% release for {plan.hold_s:g}s"
        return _move(state, current - 1, now_s, reason, util)
    return Decision(
        current, f"power {util:.1f}%: {_WAITING.get(step.move, 'steady')}", False, state, util
    )


_WAITING = {Move.SETTLING: "settling before escalating", Move.HOLDING: "holding before release"}


def _timers(state: ControllerState) -> Timers:
    return Timers(state.last_escalation_s, state.below_release_since_s)


def _with_timers(state: ControllerState, timers: Timers) -> ControllerState:
    # Built directly, not with `replace`: the simulator calls this for every control step.
    return ControllerState(
        stage=state.stage,
        last_escalation_s=timers.last_escalation_s,
        below_release_since_s=timers.below_release_since_s,
        last_change_s=state.last_change_s,
    )


@cache
def _hysteresis_of(settle_s: float, hold_s: float) -> Hysteresis:
    return Hysteresis(settle_s=settle_s, hold_s=hold_s, trigger_inclusive=True)


def _move(
    state: ControllerState, target: int, now_s: float, reason: str, util: float | None = None
) -> Decision:
    timers = entered(now_s) if target > state.stage else left(_timers(state), now_s)
    new_state = ControllerState(
        stage=target,
        last_escalation_s=timers.last_escalation_s,
        below_release_since_s=timers.below_release_since_s,
        last_change_s=now_s,
    )
    return Decision(target, reason, True, new_state, util)
