"""GPU profiles: the NVML-visible constraints and the phase power of each GPU model we model.

Every number has its source next to it. Sources:

[A100-DS]  NVIDIA A100 Tensor Core GPU datasheet: SXM4 80GB, max TDP 400 W, boost 1410 MHz.
[A100-SMI] ``nvidia-smi -q`` of an A100 SXM4 80GB, https://github.com/NVIDIA/DCGM/issues/152:
           Default/Max Power Limit 400.00 W, Min Power Limit 100.00 W, Max Clocks SM 1410 MHz,
           Memory 1593 MHz; the same min/max limits in
           https://github.com/NVIDIA/nvidia-docker/issues/1648.
[A100-CLK] ``nvidia-smi -q -d SUPPORTED_CLOCKS`` on A100, listed in
           https://github.com/1Panel-dev/1Panel/issues/11910 (1410, 1395, 1380, ... MHz: a 15 MHz
           grid); Ampere's lowest supported graphics clock is 210 MHz.
[H100-DS]  NVIDIA H100 Tensor Core GPU datasheet: H100 SXM max TDP up to 700 W, 80 GB HBM3.
[H100-SMI] ``nvidia-smi --query-gpu=name,clocks.max.sm,power.default_limit,power.min_limit,
           power.max_limit``: "NVIDIA H100 80GB HBM3, 1980 MHz, 700.00 W, 200.00 W, 700.00 W"
           (public benchmark notes found with the code search); memory.total 81559 MiB is what
           nvidia-smi reports for that device (many public hardware checks).
[H200-DS]  NVIDIA H200 Tensor Core GPU datasheet: H200 SXM 141 GB HBM3e, 4.8 TB/s, max TDP up
           to 700 W (configurable).
[H200-SMI] ``nvidia-smi -q -d CLOCK`` on AWS P5e (8x H200),
           https://github.com/awslabs/amazon-eks-ami/pull/1985: Max Clocks Graphics 1980 MHz,
           Memory 3201 MHz, idle SM clock 345 MHz; nvidia-smi name "NVIDIA H200", memory.total
           143771 MiB (many public hardware checks).
[AWS-CLK]  AWS EC2 "Optimize GPU settings" (docs.aws.amazon.com/AWSEC2/latest/UserGuide/
           optimize_gpu.html): max application clocks (memory, graphics) P4de/A100-80GB
           1593,1410; P5/H100 2619,1980; P5e/P5en/H200 3201,1980.
[DGX-PWR]  NVIDIA DGX H100/H200 user guide, "Managing Power Capping" (Redfish
           PowerLimitWatts): AllowableMin 200 W, AllowableMax 700 W, DefaultSetPoint 700 W.
[SPLITWISE] Patel et al., "Splitwise: Efficient generative LLM inference using phase splitting"
           (ISCA 2024), simulator power model, as quoted in DESIGN.md: A100 idle 63 W / prompt
           400 W / token 250 W; H100 idle 75 W / prompt 700 W / token 380 W.
[H200-M1]  Our read-only measurement of one H200, docs/measurements/h200-2026-11-30 (and
           ../shared/measurements/h200-2026-11-29): idle without a CUDA context 76-81 W; idle
           with one 116-124 W (the model takes 120 W); a Llama-3-70B-shaped shard decoding at
           395-419 W (median of five points 406 W) at 1980 MHz, prefilling at 594-639 W (p50 of
           the three sizes: 594, 639, 615 W; we take the middle one, 615 W) at 1920-1980 MHz; a
           bf16 GEMM held by the board's limiter at the 700 W limit at 1470-1515 MHz (1485 MHz
           p50, reason "SW power cap").

Phases (see polca/power/model.py): ``prefill_w``, ``decode_w`` and ``train_w`` are each phase's
power at the maximum SM clock *without* the power limiter, i.e. what the board would draw if
nothing held it back. ``train_w`` stands for compute-bound GEMM work (training; the probe's
GEMM): it exceeds the limit, so the limiter always holds it there. It is not measured directly
(nothing in a read-only measurement runs above the limit for more than ~100 ms); it is derived
from the measured limiter clock: with the model's clock shape (alpha 2.5, traffic share 0.1),
power at 1485/1980 = 75% of the max clock is 0.513 of the active power at full clock, so
``train_w = idle_context_w + (700 - idle_context_w) / 0.513`` = 1250 W for the H200. A100 and
H100 keep the same ratio (the limiter holds a GEMM at 75% of the max clock at the default
limit): an assumption, as neither was measured here.

Hopper's supported graphics clocks are the 15 MHz grid from 1980 MHz down to 345 MHz (the H200's
idle clock in [H200-SMI]); we assume the H100 SXM shares it, as both are GH100 dies.

Idle with a context (an inference server always holds one; a GPU with any work does) is the
no-context idle plus what the measured H200 adds with a context, 40 W ([H200-M1]: 120 - 80 W).
Splitwise's idle figures are taken as the no-context idle. The H100 gets the same +40 W (same
GH100 die); the A100 the same increment scaled by TDP, 40 x 400/700 = 23 W (an assumption).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from polca.control.plan import GpuLimits

__all__ = ["PROFILES", "GpuProfile", "get_profile"]


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """What one GPU model accepts (NVML constraints) and draws per LLM phase (power model)."""

    name: str
    nvml_name: str  # what nvmlDeviceGetName returns
    memory_total_mib: int
    min_limit_w: float
    max_limit_w: float
    default_limit_w: float
    max_sm_clock_mhz: int
    min_sm_clock_mhz: int
    supported_sm_clocks_mhz: tuple[int, ...]  # descending, as NVML returns them
    memory_clock_mhz: int
    idle_w: float  # idle, no CUDA context (the GPU parks at its lowest clock)
    idle_context_w: float  # idle with a CUDA context held (clock stays up), no kernels
    prefill_w: float  # LLM prefill at the max SM clock, limiter aside
    decode_w: float  # LLM decode at the max SM clock
    train_w: float  # compute-bound GEMM (training) at the max SM clock, limiter aside

    def __post_init__(self) -> None:
        if not self.min_limit_w <= self.default_limit_w <= self.max_limit_w:
            raise ValueError(f"{self.name}: limits must satisfy min <= default <= max")
        if not 0 < self.min_sm_clock_mhz <= self.max_sm_clock_mhz:
            raise ValueError(f"{self.name}: need 0 < min_sm_clock_mhz <= max_sm_clock_mhz")
        clocks = self.supported_sm_clocks_mhz
        if (
            not clocks
            or list(clocks) != sorted(clocks, reverse=True)
            or len(set(clocks)) != len(clocks)
        ):
            raise ValueError(f"{self.name}: supported clocks must be unique and descending")
        if clocks[0] != self.max_sm_clock_mhz or clocks[-1] != self.min_sm_clock_mhz:
            raise ValueError(f"{self.name}: supported clocks must span min..max SM clock")
        powers = (self.idle_w, self.idle_context_w, self.decode_w, self.prefill_w, self.train_w)
        if not 0 <= powers[0] <= powers[1] < powers[2] <= powers[3] <= powers[4]:
            raise ValueError(
                f"{self.name}: need idle_w <= idle_context_w < decode_w <= prefill_w <= train_w"
            )
        if self.train_w <= self.default_limit_w:
            raise ValueError(f"{self.name}: train_w must exceed the default limit (GEMM work)")

    @property
    def limits(self) -> GpuLimits:
        """What a plan's actions resolve against on this GPU model."""
        return GpuLimits(
            max_sm_clock_mhz=self.max_sm_clock_mhz,
            min_sm_clock_mhz=self.min_sm_clock_mhz,
            min_limit_w=self.min_limit_w,
            max_limit_w=self.max_limit_w,
            default_limit_w=self.default_limit_w,
        )


def _clock_grid(max_mhz: int, min_mhz: int, step_mhz: int = 15) -> tuple[int, ...]:
    """NVML's supported graphics clocks: a uniform grid, highest first."""
    return tuple(range(max_mhz, min_mhz - 1, -step_mhz))


A100_80GB = GpuProfile(
    name="A100-80GB",
    nvml_name="NVIDIA A100-SXM4-80GB",  # [A100-SMI]
    memory_total_mib=81920,  # nvidia-smi memory.total of A100-SXM4-80GB
    min_limit_w=100.0,  # [A100-SMI]
    max_limit_w=400.0,  # [A100-SMI], [A100-DS]
    default_limit_w=400.0,  # [A100-SMI]
    max_sm_clock_mhz=1410,  # [A100-SMI], [AWS-CLK]
    min_sm_clock_mhz=210,  # [A100-CLK]
    supported_sm_clocks_mhz=_clock_grid(1410, 210),  # [A100-CLK]
    memory_clock_mhz=1593,  # [A100-SMI], [AWS-CLK]
    idle_w=63.0,  # [SPLITWISE]
    idle_context_w=86.0,  # 63 + 23 W, see module docstring
    prefill_w=400.0,  # [SPLITWISE]: at TDP
    decode_w=250.0,  # [SPLITWISE]
    train_w=698.0,  # 86 + (400 - 86) / 0.513, see module docstring
)

H100_SXM = GpuProfile(
    name="H100-SXM",
    nvml_name="NVIDIA H100 80GB HBM3",  # [H100-SMI]
    memory_total_mib=81559,  # [H100-SMI]
    min_limit_w=200.0,  # [H100-SMI], [DGX-PWR]
    max_limit_w=700.0,  # [H100-SMI], [H100-DS]
    default_limit_w=700.0,  # [H100-SMI]
    max_sm_clock_mhz=1980,  # [H100-SMI], [AWS-CLK]
    min_sm_clock_mhz=345,  # Hopper grid, see module docstring
    supported_sm_clocks_mhz=_clock_grid(1980, 345),
    memory_clock_mhz=2619,  # [AWS-CLK]
    idle_w=75.0,  # [SPLITWISE]
    idle_context_w=115.0,  # 75 + 40 W, see module docstring
    prefill_w=700.0,  # [SPLITWISE]: at TDP
    decode_w=380.0,  # [SPLITWISE]
    train_w=1255.0,  # 115 + (700 - 115) / 0.513, see module docstring
)

H200 = GpuProfile(
    name="H200",
    nvml_name="NVIDIA H200",  # [H200-SMI]
    memory_total_mib=143771,  # [H200-SMI]
    min_limit_w=200.0,  # [DGX-PWR]
    max_limit_w=700.0,  # [DGX-PWR], [H200-DS]
    default_limit_w=700.0,  # [DGX-PWR]
    max_sm_clock_mhz=1980,  # [H200-SMI], [AWS-CLK]
    min_sm_clock_mhz=345,  # [H200-SMI] idle clock
    supported_sm_clocks_mhz=_clock_grid(1980, 345),
    memory_clock_mhz=3201,  # [H200-SMI], [AWS-CLK]
    idle_w=80.0,  # [H200-M1] 76-81 W
    idle_context_w=120.0,  # [H200-M1] 116-124 W
    prefill_w=615.0,  # [H200-M1] 594-639 W at 1920-1980 MHz
    decode_w=406.0,  # [H200-M1] 395-419 W at 1980 MHz
    train_w=1250.0,  # 120 + (700 - 120) / 0.513: the limiter's measured 1485 MHz at 700 W
)

PROFILES: Mapping[str, GpuProfile] = MappingProxyType(
    {profile.name: profile for profile in (A100_80GB, H100_SXM, H200)}
)


def get_profile(name: str) -> GpuProfile:
    """The profile called ``name``; a ValueError lists the valid names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        valid = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown GPU profile {name!r}; valid profiles: {valid}") from None
