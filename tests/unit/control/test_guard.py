"""The node guard's pure decision, with fake time."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from polca.control.guard import (
    GuardConfig,
    GuardDecision,
    GuardState,
    GuardStep,
    decide_guard,
    default_guard_steps,
)
from polca.control.plan import TierAction

TIERS = ("idle", "low", "high")
CONFIG = GuardConfig(budget_w=5000, steps=default_guard_steps(TIERS), release_pct=90, hold_s=5)
GPUS = ("low", "low", "high", "idle")


def run(
    powers_w: Sequence[float | None],
    *,
    gpus: Sequence[str] = GPUS,
    config: GuardConfig = CONFIG,
    state: GuardState | None = None,
    tick_s: float = 0.5,
) -> list[GuardDecision]:
    state = state or GuardState()
    out = []
    for i, p in enumerate(powers_w):
        d = decide_guard(config, state, now_s=i * tick_s, node_power_w=p, gpu_tiers=gpus)
        out.append(d)
        state = d.state
    return out


def test_under_budget_does_nothing() -> None:
    decisions = run([4000, 4999, 100])
    assert all(d.level == 0 and not d.changed for d in decisions)
    assert all(a.is_noop for d in decisions for a in d.actions)


def test_throttles_in_tier_order_one_level_per_tick() -> None:
    decisions = run([6000, 6000, 6000, 6000, 6000])
    assert [d.level for d in decisions] == [1, 2, 3, 4, 4]
    first = decisions[0].actions
    assert [a.is_noop for a in first] == [True, True, True, False]  # idle GPU first
    second = decisions[1].actions
    assert [a.is_noop for a in second] == [False, False, True, False]  # then low
    third = decisions[2].actions
    assert all(not a.is_noop for a in third)  # high last
    last = decisions[3].actions
    assert all(a == TierAction(clock_ceiling_pct=30.0) for a in last)


def test_levels_without_gpus_on_this_node_are_skipped() -> None:
    decisions = run([6000, 6000], gpus=("high", "high"))
    # idle and low steps affect nobody here: straight to the high step, then the brake step.
    assert [d.level for d in decisions] == [3, 4]
    assert all(not a.is_noop for a in decisions[0].actions)


def test_release_needs_hold_below_release_level() -> None:
    powers = [6000, 6000] + [4400] * 30  # release level is 4500 W
    decisions = run(powers)
    levels = [d.level for d in decisions]
    assert levels[1] == 2
    # Below release from tick 2 (t=1 s): first release at t=6 s, next at t=11 s.
    assert levels[2:12] == [2] * 10
    assert levels.index(1, 2) == 12
    assert levels.index(0) == 22


def test_between_release_and_budget_holds() -> None:
    decisions = run([6000] + [4800] * 50)
    assert {d.level for d in decisions} == {1}


def test_missing_reading_holds_level() -> None:
    decisions = run([6000, None, None, None] + [None] * 30)
    assert {d.level for d in decisions} == {1}


def test_settle_time_spaces_escalations() -> None:
    config = GuardConfig(budget_w=5000, steps=default_guard_steps(TIERS), settle_s=1.0)
    decisions = run([6000] * 5, config=config)
    assert [d.level for d in decisions] == [1, 1, 2, 2, 3]


def test_changed_flag_and_reason() -> None:
    d = run([6000])[0]
    assert d.changed
    assert "guard" in d.reason


def test_custom_steps_override_for_same_tier() -> None:
    steps = (
        GuardStep(frozenset({"low"}), TierAction(power_limit_pct=80)),
        GuardStep(frozenset({"low"}), TierAction(clock_ceiling_pct=50)),
    )
    config = GuardConfig(budget_w=1000, steps=steps)
    decisions = run([2000, 2000], gpus=("low",), config=config)
    assert decisions[0].actions == (TierAction(power_limit_pct=80),)
    assert decisions[1].actions == (TierAction(clock_ceiling_pct=50),)


@pytest.mark.parametrize(
    "kwargs", [{"budget_w": 0}, {"release_pct": 0}, {"steps": ()}, {"hold_s": -1}]
)
def test_invalid_config(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"budget_w": 100, "steps": default_guard_steps(TIERS)}
    base.update(kwargs)
    with pytest.raises(ValueError, match=r"budget|release|step|hold"):
        GuardConfig(**base)  # type: ignore[arg-type]
