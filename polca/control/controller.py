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

**Prediction** (``plan.predict_s`` > 0): rule 3 compares the triggers with the power predicted
``predict_s`` ahead, the latest sample plus its rise since the previous sample (never less
than the sample: a falling power predicts nothing lower). Set to the time from a sample to the
GPUs carrying the reaction, it escalates while there is still time to act before power reaches
a trigger, so triggers can sit close to the budget and the row runs unthrottled for longer.
Release (rule 4) stays on the measured power: a one-sample rise is noisy (the difference of
two 1 s averages) and a stage held on it would be held on noise; the hold time guards the
release. The brake (rule 2) stays on the measured power too: a forecast never brakes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

from polca.control.hysteresis import Hysteresis, Move, Timers, entered, left, unsure
from polca.control.plan import ControlPlan

__all__ = ["MIN_TREND_WINDOW_S", "ControllerState", "Decision", "decide"]

# The shortest span a rise is measured over (the daemons' default sample period): see _track.
MIN_TREND_WINDOW_S = 0.5


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
    # The trend for prediction: the latest sample (watts, its time) and its rise per second.
    sample_w: float | None = None
    sample_s: float | None = None
    rise_w_per_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    stage: int
    reason: str
    changed: bool
    state: ControllerState
    utilization_pct: float | None = None
    predicted_pct: float | None = None  # the utilisation the triggers were compared with


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
    if state.stage != current:  # `replace` is slow, and the simulator calls this every step
        state = replace(state, stage=current)

    stale = (
        domain_power_w is None
        or sample_age_s is None
        or sample_age_s > plan.staleness_s
        or domain_power_w < 0
    )
    if stale:
        age = "missing" if sample_age_s is None or domain_power_w is None else f"{sample_age_s:g}s"
        # A trend across a gap in telemetry means nothing: start afresh.
        state = replace(
            _with_timers(state, unsure(_timers(state))),
            sample_w=None,
            sample_s=None,
            rise_w_per_s=0.0,
        )
        if current < plan.failsafe_stage:
            return _move(state, plan.failsafe_stage, now_s, f"telemetry stale ({age}): failsafe")
        return Decision(current, f"telemetry stale ({age}): holding stage", False, state)

    assert domain_power_w is not None  # narrowed by `stale`
    assert sample_age_s is not None
    util = 100.0 * domain_power_w / budget_w
    if plan.predict_s > 0:
        state = _track(state, domain_power_w, now_s - sample_age_s)
    if util >= plan.stages[-1].trigger_pct and current < plan.last_stage:
        return _move(state, plan.last_stage, now_s, f"power {util:.1f}% ≥ brake trigger", util)
    return _hysteresis(plan, state, now_s, util, budget_w)


def _hysteresis(
    plan: ControlPlan, state: ControllerState, now_s: float, util: float, budget_w: float
) -> Decision:
    """Rules 3 and 4: one stage up at the next trigger, one down after the hold below release."""
    current = state.stage
    # Triggers never decrease, so "some higher stage's trigger is reached" is "the next one's is".
    can_rise = current < plan.last_stage
    target = current + 1 if can_rise else current
    # A forecast escalates through the stages but never brakes: the brake judges measured power.
    predicts = plan.predict_s > 0 and target < plan.last_stage
    ahead = _ahead_pct(plan, state, util, budget_w) if predicts else util
    step = _hysteresis_of(plan.settle_s, plan.hold_s).step(
        _timers(state),
        now_s=now_s,
        value=util,
        forecast=ahead,
        trigger=plan.stages[target].trigger_pct,
        release=plan.stages[current].release_pct if current > 0 else None,
        can_rise=can_rise,
    )
    state = _with_timers(state, step.timers)
    predicted = ahead if plan.predict_s > 0 else None
    if step.move is Move.UP:
        trigger = plan.stages[target].trigger_pct
        if util >= trigger:
            reason = f"power {util:.1f}% ≥ {trigger:g}% trigger"
        else:
            reason = (
                f"power {util:.1f}% rising to {ahead:.1f}% in {plan.predict_s:g}s "
                f"≥ {trigger:g}% trigger"
            )
        return replace(_move(state, target, now_s, reason, util), predicted_pct=predicted)
    if step.move is Move.DOWN:
        release = plan.stages[current].release_pct
        reason = f"power below {release:g}% release for {plan.hold_s:g}s"
        return replace(_move(state, current - 1, now_s, reason, util), predicted_pct=predicted)
    reason = f"power {util:.1f}%: {_WAITING.get(step.move, 'steady')}"
    return Decision(current, reason, False, state, util, predicted)


def _ahead_pct(
    plan: ControlPlan, state: ControllerState, util_pct: float, budget_w: float
) -> float:
    """The utilisation ``plan.predict_s`` ahead of a sample at ``util_pct``, by the trend."""
    return util_pct + 100.0 * state.rise_w_per_s * plan.predict_s / budget_w


def _track(state: ControllerState, power_w: float, sample_s: float) -> ControllerState:
    """Remember the sample and its rise per second since the previous one (never negative).

    The same sample read twice (a controller faster than its telemetry) keeps the last rise, and
    so does a sample less than ``MIN_TREND_WINDOW_S`` after the remembered one: streamed
    telemetry updates the domain node by node, tens of milliseconds apart, and a rise per second
    taken over such a gap would multiply one node's step into a domain-wide forecast."""
    if state.sample_s is None or state.sample_w is None:
        return replace(state, sample_w=power_w, sample_s=sample_s, rise_w_per_s=0.0)
    if sample_s - state.sample_s < MIN_TREND_WINDOW_S:
        return state
    rise = max(0.0, (power_w - state.sample_w) / (sample_s - state.sample_s))
    return replace(state, sample_w=power_w, sample_s=sample_s, rise_w_per_s=rise)


_WAITING = {Move.SETTLING: "settling before escalating", Move.HOLDING: "holding before release"}


def _timers(state: ControllerState) -> Timers:
    return Timers(state.last_escalation_s, state.below_release_since_s)


def _with_timers(
    state: ControllerState,
    timers: Timers,
    *,
    stage: int | None = None,
    last_change_s: float | None = None,
) -> ControllerState:
    """`state` with `timers`, and a new stage and change time after a move; the trend is kept."""
    # Built directly, not with `replace`: the simulator calls this for every control step.
    return ControllerState(
        stage=state.stage if stage is None else stage,
        last_escalation_s=timers.last_escalation_s,
        below_release_since_s=timers.below_release_since_s,
        last_change_s=state.last_change_s if last_change_s is None else last_change_s,
        sample_w=state.sample_w,
        sample_s=state.sample_s,
        rise_w_per_s=state.rise_w_per_s,
    )


@cache
def _hysteresis_of(settle_s: float, hold_s: float) -> Hysteresis:
    return Hysteresis(settle_s=settle_s, hold_s=hold_s, trigger_inclusive=True)


def _move(
    state: ControllerState, target: int, now_s: float, reason: str, util: float | None = None
) -> Decision:
    timers = entered(now_s) if target > state.stage else left(_timers(state), now_s)
    new_state = _with_timers(state, timers, stage=target, last_change_s=now_s)
    return Decision(target, reason, True, new_state, util)
