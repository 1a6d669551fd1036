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

Hopper's supported graphics clocks are the 15 MHz grid from 1980 MHz down to 345 MHz (the H200's
idle clock in [H200-SMI]); we assume the H100 SXM shares it, as both are GH100 dies.

H200 phase power is our documented choice, because Splitwise did not model the H200: the same
GH100 compute die and TDP as the H100 ([H200-DS]), so idle 75 W and prompt 700 W (compute-bound
prefill reaches the TDP); token (decode) 400 W, i.e. about 5% above the H100's 380 W, because
decode is memory-bound and the H200 streams 1.4x the bandwidth per second through a larger HBM3e
stack, which keeps the SMs and memory busier per unit time. Replace with measurements when
available.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

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
    idle_w: float
    prefill_w: float
    decode_w: float

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
        if not 0 <= self.idle_w < self.decode_w <= self.prefill_w:
            raise ValueError(f"{self.name}: need idle_w < decode_w <= prefill_w")


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
    prefill_w=400.0,  # [SPLITWISE]
    decode_w=250.0,  # [SPLITWISE]
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
    prefill_w=700.0,  # [SPLITWISE]
    decode_w=380.0,  # [SPLITWISE]
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
    idle_w=75.0,  # our choice, see module docstring
    prefill_w=700.0,  # our choice (TDP), see module docstring
    decode_w=400.0,  # our choice, see module docstring
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
