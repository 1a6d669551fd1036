"""Per-GPU power and speed model: how a clock ceiling and a power limit change power and speed.

The model (see docs/simulator.md for the derivation and sources):

* Uncapped phase power is Splitwise's per-phase constant: ``idle_w``, ``prefill_w`` (prompt) and
  ``decode_w`` (token) of the :class:`~polca.power.profiles.GpuProfile`. Training compute is
  compute-bound like prefill and draws the same near-TDP power (POLCA: training runs near TDP).
* At a relative SM clock ``r = f / f_max`` the *active* power above idle of a phase is split into
  a clock-driven share and a traffic-driven share::

      P(r) = idle + (P_phase - idle) * (m * speed(r) + (1 - m) * r ** ALPHA)

  ``ALPHA`` = 2.5: dynamic power is ~ f * V**2; along the DVFS curve V rises with f (-> f**3)
  until the voltage floor, where it stays constant (-> f); 2.5 sits between and reproduces
  POLCA's "~20% lower peak power for <= 7% inference performance". ``m`` is the share of active
  power that follows memory traffic, i.e. the phase's work rate (0.1 for compute-bound prefill
  and training, 0.4 for memory-bound decode, whose HBM traffic dominates).
* Speed (relative to uncapped): prefill and training are compute-bound, ``speed = r``. Decode is
  memory-bound: only a fraction ``DECODE_COMPUTE_SHARE`` = 0.2 of an iteration scales with the
  clock, ``speed = 1 / ((1 - c) + c / r)``. With these numbers an H100 decoding under a 350 W
  limit (decode draws 380 W uncapped) keeps ~99% of its speed, as Splitwise reports ("decoding
  barely slows when capped from 700 W to 350 W").
* A clock ceiling snaps down to the highest supported clock at or below it (clamped to the
  supported range), like ``nvmlDeviceSetGpuLockedClocks``.
* A power limit makes the GPU's power controller lower the clock *during the phases that exceed
  it*: each phase runs at the highest clock whose power fits the limit (continuous, as the
  controller dithers between supported clocks) and never above the ceiling. That is why caps clip
  prefill peaks and leave decode alone, while ceilings lower every phase.

All functions work on NumPy arrays (the simulator evaluates hundreds of GPUs per step) and
:func:`operating_point` is the scalar view the fake NVML uses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from polca.power.profiles import GpuProfile

__all__ = [
    "ALPHA",
    "DECODE_COMPUTE_SHARE",
    "OperatingPoint",
    "Phase",
    "PhaseDemand",
    "capped_clock_mhz",
    "ceiling_clock_mhz",
    "operating_point",
    "phase_power_w",
    "phase_speed",
]

FloatArray = npt.NDArray[np.float64]

ALPHA = 2.5  # exponent of clock-driven dynamic power, see module docstring
DECODE_COMPUTE_SHARE = 0.2  # share of a decode iteration that scales with the SM clock
_TABLE_STEP_MHZ = 1.0  # resolution of the power→clock inversion tables


class Phase(enum.Enum):
    """What a GPU is doing; idle is the remainder of the time."""

    PREFILL = "prefill"
    DECODE = "decode"
    TRAIN = "train"


# Share of active power that follows the work rate (memory traffic) rather than the clock.
_TRAFFIC_SHARE = {Phase.PREFILL: 0.1, Phase.DECODE: 0.4, Phase.TRAIN: 0.1}


@dataclass(frozen=True, slots=True)
class PhaseDemand:
    """Shares of time a GPU spends in each phase (the rest is idle), uncapped."""

    prefill_frac: float = 0.0
    decode_frac: float = 0.0
    train_frac: float = 0.0

    def __post_init__(self) -> None:
        fracs = (self.prefill_frac, self.decode_frac, self.train_frac)
        if any(not 0.0 <= f <= 1.0 for f in fracs):
            raise ValueError(f"phase fractions must be within [0, 1], got {fracs}")
        if sum(fracs) > 1.0 + 1e-9:
            raise ValueError(f"phase fractions must sum to at most 1, got {sum(fracs)}")

    @property
    def idle_frac(self) -> float:
        return max(0.0, 1.0 - self.prefill_frac - self.decode_frac - self.train_frac)

    def frac(self, phase: Phase) -> float:
        return {
            Phase.PREFILL: self.prefill_frac,
            Phase.DECODE: self.decode_frac,
            Phase.TRAIN: self.train_frac,
        }[phase]


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """Average power and the effect of the current settings on a GPU's speed.

    ``sm_clock_mhz`` is the time-weighted clock over the active phases (the idle clock, i.e. the
    lowest supported clock, when the GPU is idle). Speeds are relative to the uncapped GPU and
    describe the phase *if it runs*, whether or not it has time in ``demand``.
    """

    power_w: float
    sm_clock_mhz: int
    power_capped: bool
    clock_capped: bool
    prefill_speed: float
    decode_speed: float
    train_speed: float


def phase_peak_w(profile: GpuProfile, phase: Phase) -> float:
    """Uncapped power of a phase at the maximum clock."""
    return profile.decode_w if phase is Phase.DECODE else profile.prefill_w


def phase_speed(phase: Phase, clock_ratio: FloatArray | float) -> FloatArray:
    """Speed relative to the maximum clock, for a relative clock in (0, 1]."""
    ratio = np.asarray(clock_ratio, dtype=np.float64)
    if phase is Phase.DECODE:
        c = DECODE_COMPUTE_SHARE
        return np.asarray(1.0 / ((1.0 - c) + c / ratio), dtype=np.float64)
    return ratio


def phase_power_w(profile: GpuProfile, phase: Phase, clock_mhz: FloatArray | float) -> FloatArray:
    """Power while running ``phase`` at ``clock_mhz`` (uncapped by any limit)."""
    ratio = np.asarray(clock_mhz, dtype=np.float64) / profile.max_sm_clock_mhz
    m = _TRAFFIC_SHARE[phase]
    active_w = phase_peak_w(profile, phase) - profile.idle_w
    shape = m * phase_speed(phase, ratio) + (1.0 - m) * ratio**ALPHA
    return np.asarray(profile.idle_w + active_w * shape, dtype=np.float64)


def ceiling_clock_mhz(profile: GpuProfile, ceiling_mhz: FloatArray | float | None) -> FloatArray:
    """The clock a locked-clock ceiling yields: highest supported clock ≤ ceiling, clamped."""
    if ceiling_mhz is None:
        return np.asarray(float(profile.max_sm_clock_mhz))
    grid = _ascending_clocks(profile)
    requested = np.asarray(ceiling_mhz, dtype=np.float64)
    idx = np.searchsorted(grid, requested, side="right") - 1
    return np.asarray(grid[np.clip(idx, 0, grid.size - 1)], dtype=np.float64)


def capped_clock_mhz(
    profile: GpuProfile,
    phase: Phase,
    limit_w: FloatArray | float,
    ceiling_mhz: FloatArray | float,
) -> FloatArray:
    """Highest clock ≤ ceiling at which ``phase`` fits ``limit_w`` (min clock if none fits)."""
    clocks, powers = _power_table(profile, phase)
    fit = np.interp(np.asarray(limit_w, dtype=np.float64), powers, clocks)
    return np.asarray(np.minimum(fit, np.asarray(ceiling_mhz, dtype=np.float64)))


def operating_point(
    profile: GpuProfile,
    demand: PhaseDemand,
    *,
    clock_ceiling_mhz: int | None,
    power_limit_w: float | None,
) -> OperatingPoint:
    """Average power, effective clock and speeds of one GPU under the given settings."""
    ceiling = float(ceiling_clock_mhz(profile, clock_ceiling_mhz))
    limit = profile.max_limit_w if power_limit_w is None else power_limit_w
    limit = min(max(limit, profile.min_limit_w), profile.max_limit_w)

    power_w = demand.idle_frac * profile.idle_w
    speeds: dict[Phase, float] = {}
    weighted_clock = 0.0
    power_capped = False
    for phase in Phase:
        clock = float(capped_clock_mhz(profile, phase, limit, ceiling))
        frac = demand.frac(phase)
        power_w += frac * float(phase_power_w(profile, phase, clock))
        speeds[phase] = float(phase_speed(phase, clock / profile.max_sm_clock_mhz))
        weighted_clock += frac * clock
        power_capped = power_capped or (frac > 0 and clock < ceiling)

    active = 1.0 - demand.idle_frac
    sm_clock = weighted_clock / active if active > 0 else float(profile.min_sm_clock_mhz)
    return OperatingPoint(
        power_w=power_w,
        sm_clock_mhz=round(sm_clock),
        power_capped=power_capped,
        clock_capped=ceiling < profile.max_sm_clock_mhz,
        prefill_speed=speeds[Phase.PREFILL],
        decode_speed=speeds[Phase.DECODE],
        train_speed=speeds[Phase.TRAIN],
    )


@lru_cache(maxsize=32)
def _ascending_clocks(profile: GpuProfile) -> FloatArray:
    return np.asarray(sorted(profile.supported_sm_clocks_mhz), dtype=np.float64)


@lru_cache(maxsize=32)
def _power_table(profile: GpuProfile, phase: Phase) -> tuple[FloatArray, FloatArray]:
    """Clock → power on a fine grid; power rises strictly with clock, so np.interp inverts it."""
    clocks = np.arange(
        profile.min_sm_clock_mhz, profile.max_sm_clock_mhz + _TABLE_STEP_MHZ, _TABLE_STEP_MHZ
    )
    clocks = np.minimum(clocks, profile.max_sm_clock_mhz)
    return clocks, phase_power_w(profile, phase, clocks)
