"""GPU profiles: the published constraints and their internal consistency."""

from __future__ import annotations

from dataclasses import replace

import pytest

from polca.power.profiles import PROFILES, GpuProfile, get_profile


def test_known_profiles() -> None:
    assert set(PROFILES) == {"A100-80GB", "H100-SXM", "H200"}


def test_get_profile_unknown_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"A100-80GB, H100-SXM, H200"):
        get_profile("B200")


def test_profiles_are_read_only() -> None:
    with pytest.raises(TypeError):
        PROFILES["X"] = get_profile("H200")  # type: ignore[index]


@pytest.mark.parametrize("profile", PROFILES.values(), ids=PROFILES.keys())
class TestConsistency:
    def test_clocks_descending_and_span_range(self, profile: GpuProfile) -> None:
        clocks = profile.supported_sm_clocks_mhz
        assert list(clocks) == sorted(clocks, reverse=True)
        assert clocks[0] == profile.max_sm_clock_mhz
        assert clocks[-1] == profile.min_sm_clock_mhz

    def test_limits_ordered(self, profile: GpuProfile) -> None:
        assert profile.min_limit_w <= profile.default_limit_w <= profile.max_limit_w

    def test_phase_order(self, profile: GpuProfile) -> None:
        # Prefill reaches at most the TDP; GEMM work exceeds it (the limiter holds it).
        assert profile.prefill_w <= profile.default_limit_w < profile.train_w
        assert profile.idle_w < profile.idle_context_w < profile.decode_w < profile.prefill_w


@pytest.mark.parametrize(
    ("name", "nvml_name", "tdp_w", "max_mhz", "idle_w", "prefill_w", "decode_w"),
    [
        ("A100-80GB", "NVIDIA A100-SXM4-80GB", 400, 1410, 63, 400, 250),
        ("H100-SXM", "NVIDIA H100 80GB HBM3", 700, 1980, 75, 700, 380),
    ],
)
def test_splitwise_and_datasheet_numbers(
    name: str,
    nvml_name: str,
    tdp_w: float,
    max_mhz: int,
    idle_w: float,
    prefill_w: float,
    decode_w: float,
) -> None:
    p = get_profile(name)
    assert (p.nvml_name, p.max_limit_w, p.max_sm_clock_mhz) == (nvml_name, tdp_w, max_mhz)
    assert (p.idle_w, p.prefill_w, p.decode_w) == (idle_w, prefill_w, decode_w)


def test_h200_from_the_measurement() -> None:
    # docs/measurements/h200-2026-11-30 (and shared h200-2026-11-29): idle 76-81 W without a
    # context, 116-124 W with one; LLM decode 395-419 W, prefill 594-639 W at full clock.
    p = get_profile("H200")
    assert 76 <= p.idle_w <= 81
    assert 116 <= p.idle_context_w <= 124
    assert 395 <= p.decode_w <= 419
    assert 594 <= p.prefill_w <= 639


def test_a100_supports_polca_clocks() -> None:
    clocks = get_profile("A100-80GB").supported_sm_clocks_mhz
    assert {1275, 1110, 1305} <= set(clocks)


@pytest.mark.parametrize(
    "change",
    [
        {"min_limit_w": 800.0},
        {"supported_sm_clocks_mhz": (345, 1980)},
        {"supported_sm_clocks_mhz": (1980, 1000)},
        {"decode_w": 800.0},
        {"train_w": 650.0},
        {"idle_context_w": 60.0},
        {"min_sm_clock_mhz": 0},
    ],
)
def test_inconsistent_profile_rejected(change: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="H100-SXM"):
        replace(get_profile("H100-SXM"), **change)  # type: ignore[arg-type]
