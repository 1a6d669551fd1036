"""The default policy's clock ceilings on a GPU model, for tests that look at (fake) GPUs.

The default policy is GPU-relative (percentages of each GPU's max SM clock), so what a stage
sets depends on the GPU: a test derives it from the plan and the GPU's profile here instead of
writing POLCA's A100 MHz, which an H100 would not get.
"""

from __future__ import annotations

from polca.control.plan import POLCA_PLAN, GpuLimits
from polca.power.profiles import GpuProfile, get_profile
from polca_node.gpu.clamping import clamp_clock_mhz

__all__ = ["applied_ceiling_mhz", "default_ceiling_mhz"]


def _profile(spec: str) -> GpuProfile:
    return get_profile(spec.split(":", maxsplit=1)[0])  # `H100-SXM:4`: four of that model


def default_ceiling_mhz(stage: str, tier: str, gpu: str | GpuLimits = "H100-SXM") -> int:
    """The clock ceiling the default policy's ``stage`` asks of a ``tier`` GPU.

    ``gpu`` is a profile name (a fake NVML spec such as ``H100-SXM:4`` works too) or limits.
    """
    limits = _profile(gpu).limits if isinstance(gpu, str) else gpu
    (chosen,) = (s for s in POLCA_PLAN.stages if s.name == stage)
    ceiling = chosen.action_for(tier).resolve(limits).clock_ceiling_mhz
    if ceiling is None:
        raise ValueError(f"the default's {stage} sets no clock ceiling on tier {tier!r}")
    return ceiling


def applied_ceiling_mhz(stage: str, tier: str, gpu: str = "H100-SXM") -> int:
    """What the GPU is locked at for that ceiling: the daemon writes the highest clock the GPU
    supports at or below it (POLCA's A100 clocks are on the A100's grid; 90.43% of an H100's
    1980 MHz, 1790 MHz, is not on its 15 MHz grid)."""
    wanted = default_ceiling_mhz(stage, tier, gpu)
    profile = _profile(gpu)
    return clamp_clock_mhz(wanted, profile.supported_sm_clocks_mhz, profile.max_sm_clock_mhz)
