"""The stage controller, driven with fake time."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from dataclasses import replace

import pytest

from polca.control.controller import MIN_TREND_WINDOW_S, ControllerState, Decision, decide
from polca.control.plan import POLCA_PLAN, ControlPlan

BUDGET_W = 100_000.0
PLAN = replace(POLCA_PLAN, settle_s=5.0, hold_s=30.0, staleness_s=10.0)


def run(
    plan: ControlPlan,
    utils_pct: Iterable[float | None],
    *,
    interval_s: float = 1.0,
    state: ControllerState | None = None,
    age_s: float = 0.5,
) -> list[Decision]:
    """Feed one sample per interval (None = no sample) and collect the decisions."""
    state = state or ControllerState()
    out = []
    for i, util in enumerate(utils_pct):
        d = decide(
            plan,
            state,
            now_s=i * interval_s,
            domain_power_w=None if util is None else util * BUDGET_W / 100,
            budget_w=BUDGET_W,
            sample_age_s=None if util is None else age_s,
        )
        out.append(d)
        state = d.state
    return out


def stages(decisions: list[Decision]) -> list[int]:
    return [d.stage for d in decisions]


class TestEscalation:
    def test_below_first_trigger_stays_normal(self) -> None:
        assert set(stages(run(PLAN, [50, 79.9, 70]))) == {0}

    def test_first_trigger_escalates_immediately(self) -> None:
        d = run(PLAN, [80])[0]
        assert (d.stage, d.changed) == (1, True)
        assert "80" in d.reason

    def test_one_stage_per_settle_period(self) -> None:
        got = stages(run(PLAN, [95] * 12))
        # 0 s → 1, 5 s → 2, 10 s → 3; never two stages at once.
        assert got == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3]

    def test_stage_three_needs_power_still_high_after_stage_two(self) -> None:
        got = stages(run(PLAN, [90] * 6 + [86] * 10))
        assert max(got) == 2

    def test_brake_jumps_straight_to_last_stage(self) -> None:
        d = run(PLAN, [100.5])[0]
        assert d.stage == PLAN.last_stage
        assert "brake" in d.reason

    def test_brake_not_subject_to_settling(self) -> None:
        got = stages(run(PLAN, [81, 101]))
        assert got == [1, PLAN.last_stage]


class TestRelease:
    def test_release_after_hold_time_below_release(self) -> None:
        got = stages(run(PLAN, [81] + [74] * 40))
        first_zero = got.index(0)
        assert first_zero == 31  # below 75% from t=1 s, released once 30 s have passed

    def test_between_release_and_trigger_holds_stage(self) -> None:
        assert set(stages(run(PLAN, [81] + [77] * 100))) == {1}

    def test_hold_restarts_when_power_returns_above_release(self) -> None:
        utils = [81] + [74] * 20 + [76] + [74] * 20
        got = stages(run(PLAN, utils))
        assert set(got[:42]) == {1}

    def test_release_one_stage_at_a_time(self) -> None:
        utils = [95] * 11 + [50] * 100
        got = stages(run(PLAN, utils))
        drops = [b for a, b in itertools.pairwise(got) if b < a]
        assert drops == [2, 1, 0]
        # Each release needs its own hold period.
        times = [i for i, (a, b) in enumerate(itertools.pairwise(got), 1) if b < a]
        assert all(t2 - t1 >= PLAN.hold_s for t1, t2 in itertools.pairwise(times))


class TestTelemetry:
    def test_missing_telemetry_goes_to_failsafe(self) -> None:
        d = run(PLAN, [None])[0]
        assert (d.stage, d.changed) == (PLAN.failsafe_stage, True)
        assert "stale" in d.reason

    def test_stale_sample_goes_to_failsafe(self) -> None:
        d = run(PLAN, [10.0], age_s=PLAN.staleness_s + 0.1)[0]
        assert d.stage == PLAN.failsafe_stage

    def test_stale_never_lowers_a_higher_stage(self) -> None:
        start = ControllerState(stage=3)
        got = stages(run(PLAN, [None] * 50, state=start))
        assert set(got) == {3}

    def test_fresh_telemetry_after_outage_releases_only_after_hold(self) -> None:
        got = stages(run(PLAN, [None] * 5 + [10.0] * 40))
        assert got[5:35] == [PLAN.failsafe_stage] * 30
        assert got[35] == PLAN.failsafe_stage - 1


class TestRobustness:
    def test_deterministic(self) -> None:
        rng = random.Random(7)
        utils = [rng.uniform(60, 105) for _ in range(500)]
        assert run(PLAN, utils) == run(PLAN, utils)

    def test_oscillation_around_trigger_does_not_flap(self) -> None:
        # ±2% around the 80% trigger: hysteresis keeps stage 1 once entered.
        utils = [80 + (2 if i % 2 else -2) for i in range(200)]
        got = stages(run(PLAN, utils))[1:]  # the first sample (78%) is below the trigger
        changes = sum(1 for a, b in itertools.pairwise(got) if a != b)
        assert changes == 0
        assert set(got) == {1}

    def test_noisy_power_changes_stage_rarely(self) -> None:
        rng = random.Random(3)
        utils = [rng.gauss(82, 3) for _ in range(600)]
        got = stages(run(PLAN, utils))
        changes = sum(1 for a, b in itertools.pairwise(got) if a != b)
        # Every change needs settle (up) or hold (down): bounded by the run length / hold time.
        assert changes <= 600 / PLAN.hold_s * 2
        assert PLAN.last_stage not in got

    def test_restart_continues_from_status_stage(self) -> None:
        d = run(PLAN, [86], state=ControllerState(stage=2))[0]
        assert (d.stage, d.changed) == (2, False)

    def test_state_stage_out_of_range_is_clamped(self) -> None:
        d = run(PLAN, [50], state=ControllerState(stage=99))[0]
        assert d.stage == PLAN.last_stage

    def test_time_going_backwards_does_not_escalate_early(self) -> None:
        state = run(PLAN, [81])[0].state
        d = decide(PLAN, state, now_s=-10, domain_power_w=95_000, budget_w=BUDGET_W, sample_age_s=0)
        assert d.stage == 1

    def test_budget_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="budget"):
            decide(PLAN, ControllerState(), now_s=0, domain_power_w=1, budget_w=0, sample_age_s=0)


class TestPrediction:
    """``predict_s``: thresholds see the power predicted that far ahead from the latest rise."""

    AHEAD = replace(PLAN, predict_s=2.0)

    def test_a_rise_escalates_before_the_trigger_is_reached(self) -> None:
        # 70 → 76%: +6%/s; 2 s ahead that is 88% ≥ the 80% trigger, while 76% is below it.
        got = run(self.AHEAD, [70, 76])
        assert stages(got) == [0, 1]
        assert "rising to 88.0%" in got[1].reason
        assert got[1].predicted_pct == pytest.approx(88.0)

    def test_without_prediction_the_same_rise_waits_for_the_trigger(self) -> None:
        assert stages(run(PLAN, [70, 76])) == [0, 0]

    def test_flat_or_falling_power_predicts_nothing_more(self) -> None:
        assert stages(run(self.AHEAD, [79, 79, 79])) == [0, 0, 0]
        assert stages(run(self.AHEAD, [79.5, 78, 77])) == [0, 0, 0]

    def test_a_forecast_never_brakes(self) -> None:
        # 80 → 96%: 16%/s, 128% ahead; measured 96% is below the brake's 100%.
        got = run(self.AHEAD, [80, 96])
        assert got[1].stage < PLAN.last_stage
        assert run(self.AHEAD, [80, 100])[1].stage == PLAN.last_stage

    def test_release_goes_by_the_measured_power(self) -> None:
        # In stage 1 (release below 75%): 70 → 73% rises 3%/s (79% in 2 s), but a rise is
        # noisy: the hold runs on what is measured, and releases after hold_s.
        start = ControllerState(stage=1)
        got = run(self.AHEAD, [70, *[73] * 31], state=start)
        assert got[1].state.below_release_since_s == 0.0
        assert stages(got)[29:] == [1, 0, 0]

    def test_the_same_sample_read_twice_keeps_the_trend(self) -> None:
        # The controller runs every 1 s, telemetry every 2 s: age grows, the sample repeats.
        state = ControllerState()
        seen = []
        for now_s, util, age_s in ((0.0, 70, 0.0), (2.0, 76, 0.0), (3.0, 76, 1.0)):
            d = decide(
                self.AHEAD,
                state,
                now_s=now_s,
                domain_power_w=util * BUDGET_W / 100,
                budget_w=BUDGET_W,
                sample_age_s=age_s,
            )
            state = d.state
            seen.append(state.rise_w_per_s)
        assert seen == [0.0, pytest.approx(3_000.0), pytest.approx(3_000.0)]

    def test_samples_closer_than_the_trend_window_keep_the_rise(self) -> None:
        # Streamed telemetry: one node's step lands 50 ms after the last domain sample. Over
        # 50 ms, +1% would read as +20%/s (40% ahead); the rise is measured over ≥ 0.5 s instead.
        state = ControllerState()
        rises = []
        for now_s, util in ((0.0, 70.0), (1.0, 71.0), (1.05, 72.0), (1.6, 73.0)):
            state = decide(self.AHEAD, state, now_s=now_s, domain_power_w=util * BUDGET_W / 100,
                           budget_w=BUDGET_W, sample_age_s=0.0).state  # fmt: skip
            rises.append(state.rise_w_per_s)
        per_pct_s = BUDGET_W / 100  # watts per second of a 1%/s rise
        assert rises == [0.0, pytest.approx(per_pct_s), pytest.approx(per_pct_s),
                         pytest.approx(2 * per_pct_s / 0.6)]  # fmt: skip
        assert state.sample_s == 1.6
        assert MIN_TREND_WINDOW_S == 0.5

    def test_stale_telemetry_forgets_the_trend(self) -> None:
        got = run(self.AHEAD, [70, 76, None, 77])
        assert got[2].state.sample_s is None
        assert got[3].state.rise_w_per_s == 0.0  # one fresh sample: no trend yet

    def test_negative_prediction_is_refused(self) -> None:
        with pytest.raises(ValueError, match="predict_s"):
            replace(PLAN, predict_s=-1.0)


class TestEarlyCycles:
    """The operator runs a cycle early when a streamed sample reaches the next trigger
    (`polca_operator.wakeup`): extra decisions between the interval's must not move the settle
    or hold timers, which count time, not calls."""

    # Power that changes only on whole seconds: up, over the brake, down to release, idle.
    PROFILE = [50.0] * 3 + [85.0] * 4 + [95.0] * 14 + [80.0] * 5 + [70.0] * 40 + [50.0] * 40

    def _run(self, extra_per_s: int, seed: int) -> dict[float, int]:
        """Stage after each decision at whole seconds, with `extra_per_s` decisions at random
        times inside every second (the early wake-ups)."""
        rng = random.Random(seed)
        state = ControllerState()
        at_whole_s: dict[float, int] = {}
        for second, util in enumerate(self.PROFILE):
            extras = sorted(rng.uniform(0.001, 0.999) for _ in range(extra_per_s))
            for now_s in (float(second), *(second + f for f in extras)):
                d = decide(PLAN, state, now_s=now_s, domain_power_w=util * BUDGET_W / 100,
                           budget_w=BUDGET_W, sample_age_s=0.1)  # fmt: skip
                if d.changed:
                    assert now_s == second, f"stage moved at {now_s:.3f} s, between samples"
                state = d.state
                if now_s == second:
                    at_whole_s[now_s] = d.stage
        return at_whole_s

    @pytest.mark.parametrize("seed", range(3))
    def test_extra_decisions_change_no_stage_and_no_timer(self, seed: int) -> None:
        on_interval = self._run(0, seed)
        assert self._run(20, seed) == on_interval
        assert set(on_interval.values()) == {0, 1, 2, 3}  # the profile exercises every stage
