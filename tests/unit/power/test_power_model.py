"""The per-GPU power and speed model: limits, monotonicity, energy conservation, published facts."""

from __future__ import annotations

import numpy as np
import pytest

from polca.power.model import (
    OperatingPoint,
    Phase,
    PhaseDemand,
    capped_clock_mhz,
    ceiling_clock_mhz,
    operating_point,
    phase_power_w,
    phase_speed,
)
from polca.power.profiles import PROFILES, GpuProfile, get_profile

H100 = get_profile("H100-SXM")
A100 = get_profile("A100-80GB")
ALL = pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())


def op(
    profile: GpuProfile,
    demand: PhaseDemand,
    ceiling: int | None = None,
    limit: float | None = None,
) -> OperatingPoint:
    return operating_point(profile, demand, clock_ceiling_mhz=ceiling, power_limit_w=limit)


class TestDemand:
    @pytest.mark.parametrize("fracs", [(-0.1, 0, 0), (0, 1.1, 0), (0.6, 0.6, 0), (0.5, 0.3, 0.3)])
    def test_invalid_fractions(self, fracs: tuple[float, float, float]) -> None:
        with pytest.raises(ValueError, match="fraction"):
            PhaseDemand(*fracs)

    def test_idle_is_the_rest(self) -> None:
        assert PhaseDemand(0.25, 0.5).idle_frac == pytest.approx(0.25)


class TestUncapped:
    @ALL
    def test_phase_power_at_default_limit(self, profile: GpuProfile) -> None:
        assert op(profile, PhaseDemand()).power_w == pytest.approx(profile.idle_w)
        with_context = PhaseDemand(context=True)
        assert op(profile, with_context).power_w == pytest.approx(profile.idle_context_w)
        assert op(profile, PhaseDemand(prefill_frac=1)).power_w == pytest.approx(profile.prefill_w)
        assert op(profile, PhaseDemand(decode_frac=1)).power_w == pytest.approx(profile.decode_w)
        # GEMM work exceeds the limit: the limiter holds it there.
        train = op(profile, PhaseDemand(train_frac=1))
        assert train.power_w == pytest.approx(profile.default_limit_w, abs=0.01)
        assert train.power_capped

    def test_work_implies_a_context_and_idle_share_draws_context_idle(self) -> None:
        h200 = get_profile("H200")
        p = op(h200, PhaseDemand(decode_frac=0.5))
        assert p.power_w == pytest.approx(0.5 * h200.decode_w + 0.5 * h200.idle_context_w)
        no_context = op(h200, PhaseDemand(decode_frac=0.5, context=False))
        assert no_context.power_w == pytest.approx(0.5 * h200.decode_w + 0.5 * h200.idle_w)

    @ALL
    def test_full_speed_and_no_caps(self, profile: GpuProfile) -> None:
        p = op(profile, PhaseDemand(0.3, 0.5))
        assert (p.prefill_speed, p.decode_speed) == (1.0, 1.0)
        # GEMM work would run at the limiter's clock: 75% of the max (1485 of 1980 MHz measured).
        assert p.train_speed == pytest.approx(0.75, abs=0.01)
        assert not p.power_capped
        assert not p.clock_capped
        assert p.sm_clock_mhz == profile.max_sm_clock_mhz

    def test_energy_conservation_mix_is_time_weighted(self) -> None:
        # Power of a mix equals the time-weighted phase powers (energy over the interval adds up).
        mix = op(H100, PhaseDemand(0.2, 0.5, 0.1), ceiling=1500)
        parts = (
            0.2 * op(H100, PhaseDemand(prefill_frac=1), ceiling=1500).power_w
            + 0.5 * op(H100, PhaseDemand(decode_frac=1), ceiling=1500).power_w
            + 0.1 * op(H100, PhaseDemand(train_frac=1), ceiling=1500).power_w
            + 0.2 * H100.idle_context_w
        )
        assert mix.power_w == pytest.approx(parts)


class TestClockCeiling:
    @ALL
    def test_power_and_speed_fall_monotonically_with_ceiling(self, profile: GpuProfile) -> None:
        clocks = sorted(profile.supported_sm_clocks_mhz)
        for phase_demand in (PhaseDemand(prefill_frac=1), PhaseDemand(decode_frac=1)):
            points = [op(profile, phase_demand, ceiling=c) for c in clocks]
            powers = [p.power_w for p in points]
            assert powers == sorted(powers)
            assert len(set(powers)) == len(powers)
            speeds = [p.prefill_speed + p.decode_speed for p in points]
            assert speeds == sorted(speeds)

    def test_prefill_compute_bound_decode_memory_bound(self) -> None:
        p = op(H100, PhaseDemand(0.5, 0.5), ceiling=990)  # half the max clock
        assert p.prefill_speed == pytest.approx(0.5)
        assert 0.85 < p.decode_speed < 0.95  # decode slows much less than the clock
        assert p.clock_capped

    def test_ceiling_snaps_down_to_supported_clock(self) -> None:
        assert float(ceiling_clock_mhz(H100, 1799)) == 1785
        assert float(ceiling_clock_mhz(H100, 10)) == H100.min_sm_clock_mhz
        assert float(ceiling_clock_mhz(H100, 9999)) == H100.max_sm_clock_mhz
        assert float(ceiling_clock_mhz(H100, None)) == H100.max_sm_clock_mhz

    def test_polca_clocks_reduce_a100_peak_about_a_fifth_for_single_digit_slowdown(self) -> None:
        # POLCA: ~20% lower peak power costs ≤ 7% inference performance.
        p = op(A100, PhaseDemand(prefill_frac=1), ceiling=1275)
        assert 0.12 < 1 - p.power_w / A100.prefill_w < 0.25
        assert 1 - op(A100, PhaseDemand(decode_frac=1), ceiling=1275).decode_speed < 0.07

    @ALL
    def test_brake_clock_is_near_idle(self, profile: GpuProfile) -> None:
        p = op(profile, PhaseDemand(prefill_frac=1), ceiling=profile.min_sm_clock_mhz)
        base_w = profile.idle_context_w
        assert p.power_w < base_w + 0.1 * (profile.prefill_w - base_w)


class TestPowerLimit:
    @ALL
    @pytest.mark.parametrize("limit_frac", [0.3, 0.5, 0.8])
    def test_power_never_exceeds_limit(self, profile: GpuProfile, limit_frac: float) -> None:
        limit = max(profile.min_limit_w, limit_frac * profile.max_limit_w)
        for demand in (
            PhaseDemand(prefill_frac=1),
            PhaseDemand(0.5, 0.5),
            PhaseDemand(train_frac=1),
        ):
            # The limiter holds each phase at the limit, or at the lowest clock if even that
            # draws more; 0.01 W: the resolution of the clock-power table.
            bound_w = sum(
                demand.frac(phase)
                * max(limit, float(phase_power_w(profile, phase, profile.min_sm_clock_mhz)))
                for phase in Phase
            )
            assert op(profile, demand, limit=limit).power_w <= bound_w + 0.01

    def test_cap_clips_prefill_and_leaves_decode(self) -> None:
        prefill = op(H100, PhaseDemand(prefill_frac=1), limit=500)
        decode = op(H100, PhaseDemand(decode_frac=1), limit=500)
        assert prefill.power_capped
        assert prefill.power_w == pytest.approx(500, abs=1)
        assert prefill.prefill_speed < 1
        assert not decode.power_capped
        assert decode.power_w == pytest.approx(H100.decode_w)
        assert decode.decode_speed == 1.0

    def test_decode_barely_slows_when_h100_capped_to_350w(self) -> None:
        # Splitwise: decoding barely slows when an H100 is capped from 700 W to 350 W.
        p = op(H100, PhaseDemand(decode_frac=1), limit=350)
        assert p.power_capped
        assert p.decode_speed > 0.97

    def test_limit_clamped_to_accepted_range(self) -> None:
        below = op(H100, PhaseDemand(prefill_frac=1), limit=10)
        at_min = op(H100, PhaseDemand(prefill_frac=1), limit=H100.min_limit_w)
        assert below.power_w == pytest.approx(at_min.power_w)

    def test_limit_and_ceiling_combine_to_the_tighter(self) -> None:
        both = op(H100, PhaseDemand(prefill_frac=1), ceiling=1200, limit=600)
        ceiling_only = op(H100, PhaseDemand(prefill_frac=1), ceiling=1200)
        assert both.power_w == pytest.approx(ceiling_only.power_w)
        assert not both.power_capped

    def test_lower_limit_never_raises_power_or_speed(self) -> None:
        limits = np.linspace(H100.min_limit_w, H100.max_limit_w, 30)
        clocks = capped_clock_mhz(H100, Phase.PREFILL, limits, float(H100.max_sm_clock_mhz))
        assert np.all(np.diff(clocks) >= 0)
        powers = phase_power_w(H100, Phase.PREFILL, clocks)
        assert np.all(powers <= limits + 1e-6)


class TestVectorised:
    def test_arrays_match_scalar_operating_point(self) -> None:
        clocks = np.array([600.0, 1200.0, 1980.0])
        vec = phase_power_w(H100, Phase.DECODE, clocks)
        scalar = [op(H100, PhaseDemand(decode_frac=1), ceiling=int(c)).power_w for c in clocks]
        assert vec == pytest.approx(scalar)

    def test_speed_is_one_at_max_clock(self) -> None:
        for phase in Phase:
            assert float(phase_speed(phase, 1.0)) == 1.0
