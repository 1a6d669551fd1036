"""Pure rules: clamping requests to what a GPU accepts, decoding clock-event reasons."""

from __future__ import annotations

import pynvml
import pytest

from polca_node.gpu.backend import CLOCK_EVENT_REASONS, decode_clock_event_reasons
from polca_node.gpu.clamping import clamp_clock_mhz, clamp_limit_w, lowest_lock_clock_mhz

GRID = (1410, 1395, 1380, 1365)


class TestClockClamp:
    @pytest.mark.parametrize(
        ("request_mhz", "expected_mhz"),
        [(1395, 1395), (1394, 1380), (1400, 1395), (5000, 1410), (1366, 1365), (10, 1365)],
    )
    def test_nearest_supported_at_or_below(self, request_mhz: int, expected_mhz: int) -> None:
        assert clamp_clock_mhz(request_mhz, GRID, 1410) == expected_mhz

    def test_without_table_caps_at_max(self) -> None:
        assert clamp_clock_mhz(5000, (), 1980) == 1980
        assert clamp_clock_mhz(1234, (), 1980) == 1234

    @pytest.mark.parametrize("bad_mhz", [0, -1])
    def test_non_positive_rejected(self, bad_mhz: int) -> None:
        with pytest.raises(ValueError, match="positive"):
            clamp_clock_mhz(bad_mhz, GRID, 1410)

    def test_lock_range_low_end(self) -> None:
        assert lowest_lock_clock_mhz(GRID, 1395) == 1365
        assert lowest_lock_clock_mhz((), 1395) == 1395


class TestLimitClamp:
    @pytest.mark.parametrize(
        ("request_w", "expected_w"), [(350.0, 350.0), (50.0, 200.0), (900.0, 700.0), (200.0, 200.0)]
    )
    def test_within_constraints(self, request_w: float, expected_w: float) -> None:
        assert clamp_limit_w(request_w, 200.0, 700.0) == expected_w

    @pytest.mark.parametrize("bad_w", [float("nan"), float("inf"), float("-inf")])
    def test_non_finite_rejected(self, bad_w: float) -> None:
        with pytest.raises(ValueError, match="finite"):
            clamp_limit_w(bad_w, 200.0, 700.0)


class TestClockEventReasons:
    def test_bits_match_pynvml(self) -> None:
        names = {
            "gpu_idle": pynvml.nvmlClocksEventReasonGpuIdle,
            "applications_clocks_setting": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
            "sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
            "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
            "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
            "sw_thermal_slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
            "hw_thermal_slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
            "hw_power_brake_slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
            "display_clock_setting": pynvml.nvmlClocksEventReasonDisplayClockSetting,
        }
        assert {name: bit for bit, name in CLOCK_EVENT_REASONS.items()} == names

    def test_decode(self) -> None:
        assert decode_clock_event_reasons(0) == ()
        assert decode_clock_event_reasons(0x4 | 0x1) == ("gpu_idle", "sw_power_cap")
        assert decode_clock_event_reasons(0x80) == ("hw_power_brake_slowdown",)

    def test_unknown_bits_are_kept(self) -> None:
        assert decode_clock_event_reasons(0x4 | 0x1000) == ("sw_power_cap", "bit_0x1000")
