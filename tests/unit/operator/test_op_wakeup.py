"""The early wake-up rule: a streamed sample that takes the domain to the next stage's trigger
runs the cycle at once; nothing else does, and a flood of samples cannot spin the loop."""

from __future__ import annotations

from polca.control.plan import POLCA_PLAN
from polca_operator.wakeup import EscalationWatch, wake_at_w

BUDGET_W = 10_000.0


def test_the_threshold_is_the_next_stages_trigger_less_the_overhead() -> None:
    assert wake_at_w(POLCA_PLAN, 0, BUDGET_W) == 8_000.0  # stage 1: 80%
    assert wake_at_w(POLCA_PLAN, 1, BUDGET_W, overhead_w=500.0) == 8_900.0 - 500.0
    assert wake_at_w(POLCA_PLAN, POLCA_PLAN.last_stage, BUDGET_W) is None  # nothing above


def test_a_sample_that_crosses_wakes_once() -> None:
    watch = EscalationWatch()
    assert not watch.sample("a", 3_000.0)  # not armed before the first cycle
    assert not watch.arm(8_000.0, seen_w=watch.total_w)
    assert not watch.sample("b", 4_000.0)  # 7,000 W
    assert watch.sample("b", 5_500.0)  # 8,500 W: crossed
    assert not watch.sample("a", 3_100.0)  # still over: no second wake for the same crossing
    assert not watch.sample("a", 1_000.0)  # below again
    assert watch.sample("a", 3_000.0)  # and over again: a new crossing


def test_power_the_cycle_already_saw_over_the_trigger_wakes_nothing() -> None:
    """Say the settle time kept the stage: the interval's cycles take it from there."""
    watch = EscalationWatch()
    watch.sample("a", 9_000.0)
    assert not watch.arm(8_000.0, seen_w=watch.total_w)
    assert not any(watch.sample("a", w) for w in (9_100.0, 9_050.0, 9_200.0))


def test_a_crossing_during_the_cycle_wakes_at_arming() -> None:
    watch = EscalationWatch()
    watch.sample("a", 7_000.0)
    seen_w = watch.total_w  # the cycle reads here...
    watch.sample("a", 8_200.0)  # ...a sample crosses while it writes its status
    assert watch.arm(8_000.0, seen_w)


def test_the_last_stage_and_nodes_that_left_wake_nothing() -> None:
    watch = EscalationWatch()
    assert not watch.arm(None, seen_w=0.0)
    assert not watch.sample("a", 1e9)
    watch.retain({"b"})
    assert watch.total_w == 0.0
    watch.sample("b", 100.0)
    assert watch.total_w == 100.0


def test_release_never_wakes() -> None:
    watch = EscalationWatch()
    watch.sample("a", 9_500.0)
    assert not watch.arm(wake_at_w(POLCA_PLAN, 2, BUDGET_W), seen_w=watch.total_w)
    assert not watch.sample("a", 1_000.0)  # far below stage 2's release: the interval's job
