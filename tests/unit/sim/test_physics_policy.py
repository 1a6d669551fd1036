"""The ``physics`` policy: its plan does what the power model says, and the example runs it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from polca.cli import main
from polca.control.plan import ControlPlan, TierAction
from polca.power.model import Phase, capped_clock_mhz, phase_power_w, phase_speed
from polca.power.profiles import PROFILES, GpuProfile
from polca.power.sensor import AVERAGE_WINDOW_S
from polca.sim.domain import gpu_limits
from polca.sim.policies import PHYSICS_PLAN, make_policy
from polca.tooling.policyfile import read_policy

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "physics.yaml"
SHORT = ["--duration", "120", "--load-scale", "8", "--servers", "4", "--no-progress", "--json"]


def knob(stage: str, tier: str) -> TierAction:
    return next(s for s in PHYSICS_PLAN.stages if s.name == stage).action_for(tier)


def clocks_mhz(profile: GpuProfile, action: TierAction, phase: Phase) -> float:
    """The clock ``phase`` runs at under ``action`` (the board's limiter included)."""
    resolved = action.resolve(gpu_limits(profile))
    limit_w = resolved.power_limit_w or profile.max_limit_w
    ceiling = resolved.clock_ceiling_mhz or profile.max_sm_clock_mhz
    return float(capped_clock_mhz(profile, phase, limit_w, ceiling))


@pytest.mark.parametrize("profile", PROFILES.values(), ids=lambda p: p.name)
class TestTheKnobsDoWhatThePlanSays:
    def test_the_power_limits_leave_decode_at_full_clock(self, profile: GpuProfile) -> None:
        for action in (knob("low-cap", "low"), knob("high-cap", "high")):
            assert clocks_mhz(profile, action, Phase.DECODE) == profile.max_sm_clock_mhz

    def test_the_low_power_limit_sheds_prefill(self, profile: GpuProfile) -> None:
        full_w = float(phase_power_w(profile, Phase.PREFILL, profile.max_sm_clock_mhz))
        clock = clocks_mhz(profile, knob("low-cap", "low"), Phase.PREFILL)
        assert float(phase_power_w(profile, Phase.PREFILL, clock)) < 0.8 * full_w

    def test_the_low_clock_ceiling_sheds_decode_power_cheaply(self, profile: GpuProfile) -> None:
        top = profile.max_sm_clock_mhz
        clock = clocks_mhz(profile, knob("low-clock", "low"), Phase.DECODE)
        saved = 1 - float(phase_power_w(profile, Phase.DECODE, clock) / phase_power_w(
            profile, Phase.DECODE, top))  # fmt: skip
        lost = 1 - float(phase_speed(Phase.DECODE, clock / top))
        # Memory-bound decode: a fifth of its power for a few percent of its speed.
        assert saved > 0.2
        assert lost < 0.05
        assert saved > 4 * lost


def test_physics_predicts_over_the_sensor_window_and_settles_over_its_reaction() -> None:
    policy = make_policy("physics")
    assert policy.plan is not None
    assert policy.plan.predict_s == AVERAGE_WINDOW_S
    assert policy.plan.settle_s == pytest.approx(policy.reaction_s)
    assert not policy.derive_triggers  # triggers as written, from the model
    assert policy.guard is not None


def _rounded(plan: ControlPlan) -> ControlPlan:
    return replace(plan, settle_s=round(plan.settle_s, 6), predict_s=round(plan.predict_s, 6))


def test_the_example_manifest_is_the_simulated_plan() -> None:
    """What the operator runs from examples/physics.yaml is what `--policy physics` runs."""
    policy = make_policy("physics")
    assert policy.plan is not None
    assert _rounded(read_policy(str(EXAMPLE)).plan) == _rounded(policy.plan)


def simulate(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["simulate", *argv, *SHORT]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_simulate_runs_physics_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    out = simulate(capsys, "--policy", "none", "--policy", "physics")
    assert [r["policy"] for r in out["results"]] == ["none", "physics"]
    physics = out["results"][1]
    assert len(physics["stage_time_pct"]) == len(PHYSICS_PLAN.stages)
    assert sum(physics["stage_time_pct"]) == pytest.approx(100.0, abs=0.5)


def test_simulate_f_runs_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    out = simulate(capsys, "-f", str(EXAMPLE), "--oversubscription", "0.25")
    runs = {r["policy"]: r for r in out["results"]}
    assert set(runs) == {"none", "polca-k8s"}  # the manifest's plan runs as the operator's
    assert len(runs["polca-k8s"]["stage_time_pct"]) == len(PHYSICS_PLAN.stages)
