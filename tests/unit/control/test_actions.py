"""Combining actions per GPU: percent resolution and the most restrictive knob per knob."""

from __future__ import annotations

import pytest

from polca.control.actions import (
    GpuLimits,
    ResolvedAction,
    most_restrictive,
    resolve_for_gpu,
)
from polca.control.plan import TierAction

A100 = GpuLimits(
    max_sm_clock_mhz=1410,
    min_sm_clock_mhz=210,
    min_limit_w=100.0,
    max_limit_w=400.0,
    default_limit_w=400.0,
)
H100 = GpuLimits(
    max_sm_clock_mhz=1980,
    min_sm_clock_mhz=345,
    min_limit_w=200.0,
    max_limit_w=700.0,
    default_limit_w=700.0,
)


def test_no_actions_means_no_limits() -> None:
    assert most_restrictive([]) == ResolvedAction(None, None)


def test_the_minimum_wins_knob_by_knob_and_none_loses() -> None:
    combined = most_restrictive(
        [
            ResolvedAction(clock_ceiling_mhz=1305, power_limit_w=None),
            ResolvedAction(clock_ceiling_mhz=None, power_limit_w=350.0),
            ResolvedAction(clock_ceiling_mhz=1110, power_limit_w=500.0),
        ]
    )
    assert combined == ResolvedAction(clock_ceiling_mhz=1110, power_limit_w=350.0)


def test_order_does_not_matter() -> None:
    actions = [ResolvedAction(1200, None), ResolvedAction(None, 300.0), ResolvedAction(1000, 450.0)]
    assert most_restrictive(actions) == most_restrictive(list(reversed(actions)))


@pytest.mark.parametrize(
    ("gpu", "pct", "expected_mhz"),
    [(A100, 90.4, 1274), (H100, 90.4, 1789), (A100, 100.0, 1410), (A100, 78.7, 1109)],
)
def test_percent_clocks_resolve_against_each_gpus_maximum(
    gpu: GpuLimits, pct: float, expected_mhz: int
) -> None:
    assert resolve_for_gpu([TierAction(clock_ceiling_pct=pct)], gpu).clock_ceiling_mhz == (
        expected_mhz
    )


def test_percent_power_resolves_against_the_default_limit() -> None:
    resolved = resolve_for_gpu([TierAction(power_limit_pct=50.0)], H100)
    assert resolved == ResolvedAction(clock_ceiling_mhz=None, power_limit_w=350.0)


def test_percent_and_absolute_compare_after_resolution() -> None:
    # Nested domains: the hall asks for 90% of max clock, the row for 1305 MHz.
    hall = TierAction(clock_ceiling_pct=90.0)
    row = TierAction(clock_ceiling_mhz=1305)
    assert resolve_for_gpu([hall, row], A100).clock_ceiling_mhz == 1269  # 90% of 1410
    assert resolve_for_gpu([hall, row], H100).clock_ceiling_mhz == 1305  # 90% would be 1782


def test_an_empty_action_does_not_lift_another_policys_limit() -> None:
    resolved = resolve_for_gpu([TierAction(), TierAction(power_limit_w=300.0)], A100)
    assert resolved == ResolvedAction(clock_ceiling_mhz=None, power_limit_w=300.0)
