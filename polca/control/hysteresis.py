"""Hysteresis between levels, shared by the stage controller and the node guard. Pure.

Both safety state machines (:mod:`polca.control.controller`, the operator's stages, and
:mod:`polca.control.guard`, the node's local ladder) move between numbered levels the same way,
and this module is that way, so the two cannot drift apart:

- **enter at the trigger**: a reading at or over (see :attr:`Hysteresis.trigger_inclusive`) the
  trigger of the next level up moves up, at most once per ``settle_s`` so each step's effect is
  seen before the next;
- **leave below the release**: a reading below the current level's release, held for ``hold_s``,
  moves down; the hold then restarts for the level below (``left`` stamps it);
- anything else, a missing reading included, forgets a started hold: power must stay below the
  release without a break before anything is let go.

Which level is "up" or "down" (the next stage, the next guard level with GPUs on the node), what
a missing reading does beyond that, and jumps such as the brake stay with the callers; this
module only says whether to move and keeps the two timestamps that decide it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

__all__ = ["Hysteresis", "Move", "Step", "Timers", "entered", "left", "unsure"]


class Move(Enum):
    UP = "up"  # over the trigger and settled: enter the next level up
    SETTLING = "settling"  # over the trigger, but too soon after the last escalation
    AT_TOP = "at top"  # over the trigger with no level above
    DOWN = "down"  # below the release for hold_s: leave for the next level down
    HOLDING = "holding"  # below the release, hold not yet earned
    STEADY = "steady"  # between the release and the trigger


# Named tuples, not frozen dataclasses: as immutable, and cheap to build on every reading of the
# guard's fast loop and every simulated control step.
class Timers(NamedTuple):
    """What hysteresis remembers between readings (seconds on the caller's monotonic clock)."""

    last_escalation_s: float | None = None
    below_release_since_s: float | None = None


class Step(NamedTuple):
    move: Move
    timers: Timers  # to keep after this reading, given the caller does what `move` says


def entered(now_s: float) -> Timers:
    """The timers after moving up (by a step, a jump or a failsafe): settle from now."""
    return Timers(last_escalation_s=now_s, below_release_since_s=None)


def left(timers: Timers, now_s: float) -> Timers:
    """The timers after moving down: the hold for the next level down starts now."""
    return Timers(last_escalation_s=timers.last_escalation_s, below_release_since_s=now_s)


def unsure(timers: Timers) -> Timers:
    """The timers when there is nothing to judge (no or stale reading): a started hold is lost."""
    return Timers(last_escalation_s=timers.last_escalation_s, below_release_since_s=None)


@dataclass(frozen=True, slots=True)
class Hysteresis:
    """How long to settle after moving up and to hold before moving down.

    ``trigger_inclusive`` is the one deliberate difference between the two users, kept as it
    was: the controller enters a stage *at* its trigger (POLCA's table reads "row power ≥ 80%"),
    the guard acts only when a node *exceeds* its guard budget (a node exactly at its budget is
    within it). Both leave strictly below the release.
    """

    settle_s: float
    hold_s: float
    trigger_inclusive: bool

    def __post_init__(self) -> None:
        if self.settle_s < 0 or self.hold_s < 0:
            raise ValueError("settle_s and hold_s must not be negative")

    def step(
        self,
        timers: Timers,
        *,
        now_s: float,
        value: float,
        trigger: float,
        forecast: float | None = None,
        release: float | None,
        can_rise: bool = True,
    ) -> Step:
        """One reading against the next level's ``trigger`` and this level's ``release``.

        ``release`` is None at the bottom level (nothing to leave); ``can_rise`` is False at
        the top one (then a reading over ``trigger`` is :attr:`Move.AT_TOP`). ``forecast``, where
        given, is what the trigger judges instead of ``value`` (the controller's prediction); the
        release always judges ``value``, the measured reading, so nothing is let go on a forecast.
        """
        up = value if forecast is None else forecast
        over = up >= trigger if self.trigger_inclusive else up > trigger
        if over:
            if not can_rise:
                return Step(Move.AT_TOP, unsure(timers))
            last = timers.last_escalation_s
            if last is None or now_s - last >= self.settle_s:
                return Step(Move.UP, entered(now_s))
            return Step(Move.SETTLING, unsure(timers))
        if release is not None and value < release:
            since = timers.below_release_since_s
            if since is None:
                since = now_s
            if now_s - since >= self.hold_s:
                return Step(Move.DOWN, left(timers, now_s))
            return Step(Move.HOLDING, Timers(timers.last_escalation_s, since))
        return Step(Move.STEADY, unsure(timers))
