"""The hysteresis primitive the stage controller and the node guard share, on its own."""

from __future__ import annotations

import pytest

from polca.control.hysteresis import Hysteresis, Move, Timers, entered, left, unsure

INCLUSIVE = Hysteresis(settle_s=10.0, hold_s=5.0, trigger_inclusive=True)
EXCLUSIVE = Hysteresis(settle_s=10.0, hold_s=5.0, trigger_inclusive=False)


def step(
    h: Hysteresis,
    value: float,
    *,
    timers: Timers | None = None,
    now_s: float = 100.0,
    release: float | None = 75.0,
    can_rise: bool = True,
) -> tuple[Move, Timers]:
    result = h.step(
        timers or Timers(),
        now_s=now_s,
        value=value,
        trigger=80.0,
        release=release,
        can_rise=can_rise,
    )
    return result.move, result.timers


def test_at_the_trigger_enters_only_when_inclusive() -> None:
    assert step(INCLUSIVE, 80.0) == (Move.UP, Timers(last_escalation_s=100.0))
    assert step(EXCLUSIVE, 80.0)[0] is Move.STEADY
    assert step(EXCLUSIVE, 80.1) == (Move.UP, Timers(last_escalation_s=100.0))


def test_moving_up_waits_for_the_settle_time_since_the_last_escalation() -> None:
    recent = Timers(last_escalation_s=95.0, below_release_since_s=None)
    assert step(INCLUSIVE, 90.0, timers=recent) == (Move.SETTLING, recent)
    assert step(INCLUSIVE, 90.0, timers=recent, now_s=105.0) == (
        Move.UP,
        Timers(last_escalation_s=105.0),
    )


def test_over_the_trigger_at_the_top_stays_and_forgets_a_hold() -> None:
    holding = Timers(last_escalation_s=1.0, below_release_since_s=50.0)
    move, timers = step(INCLUSIVE, 95.0, timers=holding, can_rise=False)
    assert move is Move.AT_TOP
    assert timers == Timers(last_escalation_s=1.0, below_release_since_s=None)


def test_below_the_release_moves_down_only_after_the_hold() -> None:
    move, timers = step(INCLUSIVE, 70.0, now_s=100.0)
    assert (move, timers) == (Move.HOLDING, Timers(below_release_since_s=100.0))
    move, timers = step(INCLUSIVE, 70.0, timers=timers, now_s=104.9)
    assert (move, timers) == (Move.HOLDING, Timers(below_release_since_s=100.0))
    move, timers = step(INCLUSIVE, 70.0, timers=timers, now_s=105.0)
    # Moving down restarts the hold for the next level down.
    assert (move, timers) == (Move.DOWN, Timers(below_release_since_s=105.0))


def test_the_release_itself_is_not_below_it() -> None:
    assert step(INCLUSIVE, 75.0)[0] is Move.STEADY
    assert step(EXCLUSIVE, 75.0)[0] is Move.STEADY


def test_a_reading_between_release_and_trigger_restarts_the_hold() -> None:
    holding = Timers(last_escalation_s=3.0, below_release_since_s=90.0)
    assert step(INCLUSIVE, 77.0, timers=holding) == (Move.STEADY, Timers(last_escalation_s=3.0))


def test_at_the_bottom_there_is_nothing_to_release() -> None:
    assert step(INCLUSIVE, 0.0, release=None) == (Move.STEADY, Timers())


@pytest.mark.parametrize("h", [INCLUSIVE, EXCLUSIVE])
def test_moving_up_restarts_a_hold_and_settling_forgets_it(h: Hysteresis) -> None:
    holding = Timers(last_escalation_s=95.0, below_release_since_s=96.0)
    assert step(h, 90.0, timers=holding)[1] == Timers(last_escalation_s=95.0)


def test_transitions_made_outside_step_keep_the_same_timers() -> None:
    timers = Timers(last_escalation_s=3.0, below_release_since_s=90.0)
    assert entered(7.0) == Timers(last_escalation_s=7.0, below_release_since_s=None)
    assert left(timers, 7.0) == Timers(last_escalation_s=3.0, below_release_since_s=7.0)
    assert unsure(timers) == Timers(last_escalation_s=3.0, below_release_since_s=None)


def test_negative_times_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        Hysteresis(settle_s=-1.0, hold_s=0.0, trigger_inclusive=True)
