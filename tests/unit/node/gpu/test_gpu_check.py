"""`make gpu-check`'s comparisons, on readings shaped like the measured H200 and on bad ones."""

from __future__ import annotations

import dataclasses

import pytest

from polca.power.profiles import get_profile
from polca_node.gpu.backend import GpuInfo
from polca_testbed.gpu_check import (
    PhaseReadings,
    ReadOnlyNvml,
    compare_phases,
    compare_static,
    main,
    profile_for,
    step_time_s,
)

H200 = get_profile("H200")
INFO = GpuInfo(
    index=0, uuid="GPU-0", name="NVIDIA H200", min_limit_w=200.0, max_limit_w=700.0,
    default_limit_w=700.0, power_limit_w=700.0, enforced_limit_w=700.0, max_sm_clock_mhz=1980,
    supported_clocks_mhz=(1980, 1965),
)  # fmt: skip
# docs/measurements/h200-2026-11-30: idle 116 W, GEMM 692 W at 1485 MHz, capped; ~1 s mean.
MEASURED = PhaseReadings(
    idle_context_w=116.3, gemm_power_w=692.0, gemm_clock_mhz=1485, gemm_capped_share=0.97,
    average_step_s=1.0, instant_step_s=0.1,
)  # fmt: skip


def test_the_h200_name_finds_its_profile() -> None:
    assert profile_for("NVIDIA H200") is H200
    assert profile_for("NVIDIA B200") is None


def test_the_measured_h200_passes_every_check() -> None:
    checks = compare_static(INFO, H200) + compare_phases(MEASURED, H200, INFO)
    assert len(checks) == 10  # 4 static, 4 phase, 2 sensor
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"idle_context_w": 75.0}, "idle with a CUDA context, W"),  # no context: not our model
        ({"gemm_power_w": 600.0}, "GEMM power (limiter holds it), W"),
        ({"gemm_clock_mhz": 1980}, "GEMM SM clock (lowered by the limiter), MHz"),
        ({"gemm_capped_share": 0.1}, "GEMM samples with 'SW power cap'"),
        ({"average_step_s": 0.1}, "GetPowerUsage: 90% of a load step, s"),  # an instant reading
        ({"average_step_s": None}, "GetPowerUsage: 90% of a load step, s"),
        ({"instant_step_s": 0.9}, "instant field: 90% of a load step, s"),
    ],
)
def test_a_gpu_unlike_the_model_fails_the_named_check(
    change: dict[str, float | None], failing: str
) -> None:
    changed = dataclasses.replace(MEASURED, **change)  # type: ignore[arg-type]
    checks = compare_phases(changed, H200, INFO)
    assert [c.name for c in checks if not c.ok] == [failing]


def test_static_mismatch_is_named() -> None:
    other = dataclasses.replace(INFO, max_sm_clock_mhz=1755)
    assert [c.name for c in compare_static(other, H200) if not c.ok] == ["max SM clock, MHz"]


def test_step_time_is_the_first_sample_at_ninety_percent() -> None:
    ramp = [(10.0 + 0.1 * i, 100.0 + 60.0 * i) for i in range(11)]  # 100 -> 700 W over 1 s
    assert step_time_s(ramp, 10.0, 100.0, 700.0) == pytest.approx(0.9)
    assert step_time_s(ramp[:5], 10.0, 100.0, 700.0) is None


def test_setters_are_refused() -> None:
    class Nvml:
        def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
            return 1

    wrapped = ReadOnlyNvml(Nvml())
    assert wrapped.nvmlDeviceGetPowerUsage(None) == 1
    for setter in ("nvmlDeviceSetPowerManagementLimit", "nvmlDeviceResetGpuLockedClocks"):
        with pytest.raises(AssertionError, match="read-only"):
            getattr(wrapped, setter)


def test_without_a_gpu_it_says_so_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0  # this machine has no NVIDIA driver
    assert "no usable NVIDIA GPU here" in capsys.readouterr().out
