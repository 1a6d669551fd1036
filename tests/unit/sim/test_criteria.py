"""The criteria's bounds: inclusive at the limit, failing past it; NaN fails; empty tiers pass."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from polca.sim.metrics import (
    BRAKES,
    HIGH_P50,
    LOW_P50,
    LOW_THROUGHPUT,
    Criteria,
    TierMetrics,
    judge,
)

STRICT = Criteria(max_low_p50_impact=0.25)


def _tier(*, impact: float = 0.0, throughput: float = 1.0, requests: int = 100) -> TierMetrics:
    return TierMetrics(
        requests=requests,
        ttft_p50_s=0.1,
        ttft_p99_s=0.5,
        tbt_p50_s=0.02,
        tbt_p99_s=0.05,
        e2e_p50_s=2.0,
        e2e_p99_s=9.0,
        tokens=1000.0,
        throughput_rel=throughput,
        e2e_p50_impact=impact,
        ttft_p50_impact=0.0,
        tbt_p50_impact=0.0,
    )


def _keys(failures: list[tuple[str, str]]) -> list[str]:
    return [key for key, _ in failures]


def test_a_run_exactly_at_every_bound_passes() -> None:
    high = _tier(impact=STRICT.max_high_p50_impact)
    low = _tier(impact=0.25, throughput=STRICT.min_low_throughput)
    assert judge(STRICT, 0, high, low) == []


@pytest.mark.parametrize(
    ("brakes", "high", "low", "failed"),
    [
        (1, _tier(), _tier(), [BRAKES]),
        (0, _tier(impact=0.0101), _tier(), [HIGH_P50]),
        (0, _tier(), _tier(throughput=0.9799), [LOW_THROUGHPUT]),
        (0, _tier(), _tier(impact=0.2501), [LOW_P50]),
        (
            2,
            _tier(impact=0.5),
            _tier(impact=1.0, throughput=0.5),
            [BRAKES, HIGH_P50, LOW_THROUGHPUT, LOW_P50],
        ),
    ],
)
def test_just_past_a_bound_fails_that_criterion(
    brakes: int, high: TierMetrics, low: TierMetrics, failed: list[str]
) -> None:
    assert _keys(judge(STRICT, brakes, high, low)) == failed


def test_nan_impact_fails_rather_than_passing_silently() -> None:
    nan = math.nan
    failures = judge(STRICT, 0, _tier(impact=nan), _tier(impact=nan, throughput=nan))
    assert _keys(failures) == [HIGH_P50, LOW_THROUGHPUT, LOW_P50]


def test_tiers_without_requests_are_not_judged() -> None:
    empty = _tier(impact=9.0, throughput=0.0, requests=0)
    assert judge(STRICT, 0, empty, empty) == []
    assert judge(STRICT, 0, None, None) == []


def test_low_p50_is_judged_only_when_bounded() -> None:
    polca = replace(STRICT, max_low_p50_impact=None)
    assert judge(polca, 0, _tier(), _tier(impact=2.0)) == []


def test_messages_name_the_value() -> None:
    (failure,) = judge(STRICT, 0, _tier(impact=0.0123), _tier())
    assert failure == (HIGH_P50, "high-priority P50 impact +1.23%")
