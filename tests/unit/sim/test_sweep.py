"""The sweep's aggregation (worst case, binding criterion, gain over none) on hand-made
results, and its option parsing."""

from __future__ import annotations

import pytest

from polca.sim.sweep import Outcome, WorstCase, worst_cases
from polca.sim.sweep_cli import parse_levels, parse_seeds

BASE = 40


def _grid(
    policy: str,
    failing: dict[tuple[str, int, int], tuple[str, ...]],
    *,
    traces: tuple[str, ...] = ("a", "b"),
    seeds: tuple[int, ...] = (0, 1),
    levels: tuple[int, ...] = (8, 10, 12, 14),
) -> list[Outcome]:
    """Every (trace, seed, level) passes unless ``failing`` names its failed criteria."""
    return [
        Outcome(
            policy=policy,
            trace=t,
            seed=s,
            extra_servers=lv,
            passed=(t, s, lv) not in failing,
            failed_criteria=failing.get((t, s, lv), ()),
            high_e2e_p50_impact=0.001 * lv,
            low_e2e_p50_impact=0.01 * lv + 0.001 * s,
            low_throughput_rel=1.0 - 0.001 * s,
            ttft_p99_s=(("high", 0.3 + 0.01 * lv), ("low", 0.4 + 0.1 * s)),
        )
        for t in traces
        for s in seeds
        for lv in levels
    ]


def _by_policy(cases: tuple[WorstCase, ...]) -> dict[str, WorstCase]:
    return {w.policy: w for w in cases}


def test_worst_case_is_the_largest_level_passing_every_trace_and_seed() -> None:
    outcomes = _grid("none", {("b", 1, 12): ("brakes",), ("b", 1, 14): ("brakes",)})
    outcomes += _grid("polca-k8s", {("a", 0, 14): ("low_p50",)})
    cases = _by_policy(worst_cases(outcomes, base_servers=BASE))

    none = cases["none"]
    assert none.extra_servers == 10
    assert none.oversubscription == pytest.approx(0.25)
    assert none.first_failing_extra == 12
    assert none.binding == "brakes"
    assert none.failing_traces == ("b",)
    assert dict(none.per_trace_extra) == {"a": 14, "b": 10}
    assert none.gain_over_none == 0.0

    k8s = cases["polca-k8s"]
    assert k8s.extra_servers == 12
    assert k8s.gain_over_none == pytest.approx(2 / BASE)
    assert k8s.binding == "low_p50"
    # Worst over the cells at the worst-case level (12): every trace and seed.
    assert k8s.high_e2e_p50_impact == pytest.approx(0.012)
    assert k8s.low_e2e_p50_impact == pytest.approx(0.121)
    assert k8s.low_throughput_rel == pytest.approx(0.999)
    assert dict(k8s.ttft_p99_s) == pytest.approx({"high": 0.42, "low": 0.5})


def test_a_lucky_pass_above_a_failure_is_not_credited() -> None:
    # Seed 1 of trace a fails at 10 servers but passes at 12 and 14.
    cases = worst_cases(_grid("polca", {("a", 1, 10): ("high_p50",)}), base_servers=BASE)
    assert cases[0].extra_servers == 8
    assert cases[0].first_failing_extra == 10
    assert dict(cases[0].per_trace_extra) == {"a": 8, "b": 14}


def test_binding_is_the_criterion_most_cells_fail_ties_in_criteria_order() -> None:
    failing = {
        ("a", 0, 12): ("high_p50", "low_p50"),
        ("a", 1, 12): ("low_p50",),
        ("b", 0, 12): ("brakes", "high_p50"),
    }
    case = worst_cases(_grid("polca", failing), base_servers=BASE)[0]
    assert case.failures_at_first_failing == (("high_p50", 2), ("low_p50", 2), ("brakes", 1))
    assert case.binding == "high_p50"  # tied with low_p50 on 2 cells; checked first
    assert case.failing_traces == ("a", "b")


def test_failing_the_lowest_level_and_passing_everything() -> None:
    outcomes = _grid("none", {("a", 0, 8): ("brakes",)}) + _grid("polca", {})
    cases = _by_policy(worst_cases(outcomes, base_servers=BASE))
    assert cases["none"].extra_servers is None
    assert cases["none"].oversubscription is None
    assert cases["none"].first_failing_extra == 8
    assert cases["none"].high_e2e_p50_impact is None
    assert cases["none"].ttft_p99_s == ()
    assert cases["polca"].extra_servers == 14
    assert cases["polca"].first_failing_extra is None
    assert cases["polca"].binding is None
    assert cases["polca"].gain_over_none is None  # none has no worst case to compare with


def test_no_none_policy_means_no_gain() -> None:
    case = worst_cases(_grid("polca", {}), base_servers=BASE)[0]
    assert case.gain_over_none is None


def test_parse_seeds_and_levels() -> None:
    assert parse_seeds("0-4") == (0, 1, 2, 3, 4)
    assert parse_seeds("3,1,3,7-8") == (3, 1, 7, 8)
    assert parse_levels("0.3,0.2,0.25,0.26", 40) == (8, 10, 12)
    for bad in ("", "a", "1-x"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    for bad in ("x", "-0.1", "nan", "0.2,,0.3"):
        with pytest.raises(ValueError, match="--levels"):
            parse_levels(bad, 40)
