"""Metrics, trigger derivation, the search, and a small end-to-end scenario."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from polca.power.profiles import get_profile
from polca.sim.domain import DomainConfig
from polca.sim.metrics import weighted_percentile
from polca.sim.policies import derive_top_trigger, make_policy
from polca.sim.runner import Scenario, calibrate_load, run_level
from polca.sim.search import _climb, search
from polca.sim.synthetic import CONV_PARAMS, generate


class TestClimb:
    @pytest.mark.parametrize("threshold", [0, 1, 7, 12, 13, 29, 40])
    def test_finds_the_largest_passing_level(self, threshold: int) -> None:
        calls: list[int] = []

        def passes(extra: int) -> bool:
            calls.append(extra)
            return extra <= threshold

        assert _climb(passes, step=4, max_extra=40) == threshold
        assert len(calls) <= 40 // 4 + 4  # coarse steps, then bisection

    def test_none_when_base_row_fails(self) -> None:
        assert _climb(lambda extra: False, step=4, max_extra=40) is None


class TestMetrics:
    def test_weighted_percentile(self) -> None:
        values = np.array([1.0, 2.0, 3.0])
        assert weighted_percentile(values, np.array([1.0, 1.0, 1.0]), 50) == 2.0
        assert weighted_percentile(values, np.array([10.0, 1.0, 1.0]), 50) == 1.0
        assert weighted_percentile(values, np.array([0.0, 0.0, 5.0]), 1) == 3.0
        assert np.isnan(weighted_percentile(np.array([]), np.array([]), 50))

    def test_derived_trigger_leaves_room_for_largest_rise(self) -> None:
        power = np.full(3000, 80.0)
        power[2000:] = 88.0  # one 8-point step
        top = derive_top_trigger(
            power, 100.0, reaction_s=2.0, dt_s=0.1, margin_pct=1.0, max_pct=97.0
        )
        assert top == pytest.approx(91.0)
        flat = derive_top_trigger(
            np.full(3000, 80.0), 100.0, reaction_s=2.0, dt_s=0.1, margin_pct=1.0, max_pct=97.0
        )
        assert flat == 97.0

    def test_ramp_up_at_start_is_ignored(self) -> None:
        power = np.concatenate([np.linspace(0, 80, 100), np.full(3000, 80.0)])
        top = derive_top_trigger(
            power, 100.0, reaction_s=2.0, dt_s=0.1, margin_pct=1.0, max_pct=97.0
        )
        assert top == 97.0


def small_scenario(duration_s: float = 150.0) -> Scenario:
    trace = generate(CONV_PARAMS, duration_s, np.random.default_rng(3))
    domain = DomainConfig(get_profile("H100-SXM"), base_servers=6)
    return Scenario(trace=trace, domain=domain, duration_s=duration_s, seed=1, target_peak_pct=79.0)


@pytest.mark.slow
class TestEndToEnd:
    def test_calibration_hits_target_peak(self) -> None:
        scenario = small_scenario()
        scale = calibrate_load(scenario)
        level = run_level(scenario, 0.0, [make_policy("none")], load_scale=scale)
        peak = 100 * float(level.baseline.metered_power_w.max()) / level.domain.budget_w
        assert peak == pytest.approx(79.0, abs=1.5)  # a 6-server row's peak is noisy in the load

    def test_more_servers_raise_power_and_policies_cut_it(self) -> None:
        scenario = small_scenario()
        scale = calibrate_load(scenario)
        policies = [make_policy(n) for n in ("none", "polca", "polca-k8s")]
        level = run_level(scenario, 0.5, policies, load_scale=scale)
        base_peak = level.runs["none"].metrics.peak_power_pct
        assert base_peak > 100  # 9 servers on a 6-server budget at a 79% peak
        assert level.runs["none"].metrics.brake_events > 0
        baseline_mean = 100 * float(level.baseline.metered_power_w.mean()) / level.domain.budget_w
        for name in ("polca", "polca-k8s"):
            metrics = level.runs[name].metrics
            assert metrics.mean_power_pct < baseline_mean  # throttling lowered the power
            assert max(metrics.stage_time_pct[1:]) > 0
        k8s, none = level.runs["polca-k8s"].metrics, level.runs["none"].metrics
        assert k8s.time_above_budget_s < none.time_above_budget_s

    def test_search_is_deterministic_and_reports_levels(self) -> None:
        scenario = replace(small_scenario(120.0), load_scale=None)
        policies = [make_policy("none"), make_policy("polca-k8s")]
        first = search(scenario, policies, coarse_step=0.34, max_oversubscription=0.67)
        again = search(scenario, policies, coarse_step=0.34, max_oversubscription=0.67)
        assert [p.best_extra_servers for p in first.policies] == [
            p.best_extra_servers for p in again.policies
        ]
        for p in first.policies:
            assert p.evaluated
            assert all(m.passed == (not m.failures) for m in p.evaluated)
            if p.best is not None:
                assert p.best.passed
                assert p.best.brake_events == 0
