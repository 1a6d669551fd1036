"""Control plans: validation, POLCA's table, resolution against a GPU's limits."""

from __future__ import annotations

from dataclasses import replace

import pytest

from polca.control.plan import (
    POLCA_PLAN,
    ControlPlan,
    GpuLimits,
    ResolvedAction,
    Stage,
    TierAction,
    a100_clock_percent,
    plan_from_dict,
    shift_triggers,
)

A100 = GpuLimits(
    max_sm_clock_mhz=1410,
    min_sm_clock_mhz=210,
    min_limit_w=100,
    max_limit_w=400,
    default_limit_w=400,
)
H100 = GpuLimits(
    max_sm_clock_mhz=1980,
    min_sm_clock_mhz=345,
    min_limit_w=200,
    max_limit_w=700,
    default_limit_w=700,
)


class TestPolcaTable:
    def test_thresholds_and_hysteresis(self) -> None:
        triggers = [(s.trigger_pct, s.release_pct) for s in POLCA_PLAN.stages[1:]]
        assert triggers == [(80, 75), (89, 84), (89, 84), (100, 89)]

    def test_tiers_ordered_first_throttled_first(self) -> None:
        assert POLCA_PLAN.tiers == ("idle", "low", "high")

    @pytest.mark.parametrize(
        ("stage", "low_mhz", "high_mhz"),
        [(0, None, None), (1, 1275, None), (2, 1110, None), (3, 1110, 1305), (4, 288, 288)],
    )
    def test_a100_clocks(self, stage: int, low_mhz: int | None, high_mhz: int | None) -> None:
        actions = POLCA_PLAN.actions_for(stage)
        assert actions["low"].resolve(A100).clock_ceiling_mhz == low_mhz
        assert actions["high"].resolve(A100).clock_ceiling_mhz == high_mhz

    @pytest.mark.parametrize(
        ("stage", "low_mhz", "high_mhz"),
        [(0, None, None), (1, 1790, None), (2, 1558, None), (3, 1558, 1832), (4, 404, 404)],
    )
    def test_h100_gets_the_same_share_of_its_max_clock(
        self, stage: int, low_mhz: int | None, high_mhz: int | None
    ) -> None:
        # GPU-relative: 1275/1410 of the A100's max is 1790 of the H100's 1980 MHz, not 1275.
        actions = POLCA_PLAN.actions_for(stage)
        assert actions["low"].resolve(H100).clock_ceiling_mhz == low_mhz
        assert actions["high"].resolve(H100).clock_ceiling_mhz == high_mhz

    @pytest.mark.parametrize(
        ("mhz", "pct"), [(1275, 90.43), (1110, 78.73), (1305, 92.56), (288, 20.43), (1410, 100)]
    )
    def test_a100_clocks_as_percentages(self, mhz: int, pct: float) -> None:
        assert a100_clock_percent(mhz) == pct
        assert TierAction(clock_ceiling_pct=pct).resolve(A100).clock_ceiling_mhz == mhz

    def test_brake_never_below_the_gpus_minimum_clock(self) -> None:
        brake = POLCA_PLAN.actions_for(POLCA_PLAN.last_stage)
        high_floor = replace(H100, min_sm_clock_mhz=600)  # above 20.43% of 1980 MHz
        assert {a.resolve(high_floor).clock_ceiling_mhz for a in brake.values()} == {600}
        assert {a.resolve(H100).clock_ceiling_mhz for a in brake.values()} == {404}

    def test_failsafe_throttles_low_priority_but_not_high(self) -> None:
        actions = POLCA_PLAN.actions_for(POLCA_PLAN.failsafe_stage)
        assert not actions["low"].is_noop
        assert actions["high"].is_noop

    def test_last_stage_is_the_brake_on_every_tier(self) -> None:
        actions = POLCA_PLAN.actions_for(POLCA_PLAN.last_stage)
        assert all(not a.is_noop for a in actions.values())
        assert POLCA_PLAN.stages[-1].trigger_pct == 100


class TestResolve:
    def test_percentages_are_of_max_clock_and_default_limit(self) -> None:
        action = TierAction(clock_ceiling_pct=50, power_limit_pct=50)
        assert action.resolve(H100) == ResolvedAction(clock_ceiling_mhz=990, power_limit_w=350)

    def test_clamped_to_what_the_gpu_accepts(self) -> None:
        low = TierAction(clock_ceiling_mhz=100, power_limit_w=50).resolve(H100)
        assert low == ResolvedAction(clock_ceiling_mhz=345, power_limit_w=200)
        high = TierAction(clock_ceiling_mhz=5000, power_limit_w=5000).resolve(H100)
        assert high == ResolvedAction(clock_ceiling_mhz=1980, power_limit_w=700)

    def test_empty_action_leaves_gpu_uncapped(self) -> None:
        assert TierAction().resolve(H100) == ResolvedAction()

    def test_stronger_takes_tighter_knob_each(self) -> None:
        a = ResolvedAction(clock_ceiling_mhz=1500, power_limit_w=None)
        b = ResolvedAction(clock_ceiling_mhz=1700, power_limit_w=400)
        assert a.stronger(b) == ResolvedAction(clock_ceiling_mhz=1500, power_limit_w=400)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"clock_ceiling_mhz": 1000, "clock_ceiling_pct": 50},
            {"power_limit_w": 300, "power_limit_pct": 50},
            {"clock_ceiling_pct": 0},
            {"power_limit_pct": 120},
            {"clock_ceiling_mhz": -5},
        ],
    )
    def test_invalid_actions_rejected(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError, match=r"clock|power"):
            TierAction(**kwargs)  # type: ignore[arg-type]


class TestValidation:
    def test_stage_zero_must_not_act(self) -> None:
        bad = (
            Stage("normal", 0, 0, {"low": TierAction(clock_ceiling_pct=90)}),
            *POLCA_PLAN.stages[1:],
        )
        with pytest.raises(ValueError, match="stage 0"):
            replace(POLCA_PLAN, stages=bad)

    def test_triggers_must_not_decrease(self) -> None:
        s = POLCA_PLAN.stages
        with pytest.raises(ValueError, match="triggers"):
            replace(POLCA_PLAN, stages=(s[0], s[2], s[1], s[4]))

    def test_release_above_trigger_rejected(self) -> None:
        with pytest.raises(ValueError, match="release_pct"):
            Stage("x", trigger_pct=80, release_pct=85)

    def test_unknown_tier_rejected(self) -> None:
        stages = (
            *POLCA_PLAN.stages[:-1],
            Stage("brake", 100, 90, {"gold": TierAction(clock_ceiling_mhz=300)}),
        )
        with pytest.raises(ValueError, match="gold"):
            replace(POLCA_PLAN, stages=stages)

    def test_failsafe_must_exist(self) -> None:
        with pytest.raises(ValueError, match="failsafe"):
            replace(POLCA_PLAN, failsafe_stage=9)

    def test_actions_cannot_be_mutated_after_construction(self) -> None:
        actions = {"low": TierAction(clock_ceiling_pct=90)}
        stage = Stage("one", 80, 75, actions)
        actions["high"] = TierAction(clock_ceiling_pct=10)
        assert "high" not in stage.actions


class TestTransforms:
    def test_shift_triggers_moves_all_but_brake_and_keeps_spacing(self) -> None:
        plan = shift_triggers(POLCA_PLAN, 95.0)
        got = [(s.trigger_pct, s.release_pct) for s in plan.stages[1:]]
        assert got == [(86, 81), (95, 90), (95, 90), (100, 89)]

    def test_shift_triggers_cannot_pass_brake(self) -> None:
        with pytest.raises(ValueError, match="brake"):
            shift_triggers(POLCA_PLAN, 101.0)

    def test_plan_from_dict_round_trip(self) -> None:
        data = {
            "stages": [
                {"name": "normal", "trigger_pct": 0, "release_pct": 0},
                {
                    "name": "cap",
                    "trigger_pct": 90,
                    "release_pct": 85,
                    "actions": {"low": {"power_limit_pct": 60}},
                },
                {
                    "name": "brake",
                    "trigger_pct": 100,
                    "release_pct": 90,
                    "actions": {
                        "low": {"clock_ceiling_pct": 20},
                        "high": {"clock_ceiling_pct": 20},
                    },
                },
            ],
            "tiers": ["low", "high"],
            "failsafe_stage": 1,
            "settle_s": 2,
            "hold_s": 20,
            "staleness_s": 5,
        }
        plan = plan_from_dict(data)
        assert isinstance(plan, ControlPlan)
        assert plan.actions_for(1)["low"].resolve(H100).power_limit_w == 420
        assert plan.actions_for(1)["high"].is_noop

    def test_plan_from_dict_reports_missing_keys(self) -> None:
        with pytest.raises(ValueError, match="invalid control plan"):
            plan_from_dict({"stages": []})
