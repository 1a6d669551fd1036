"""Per-GPU power and speed model: demand per phase, the board's limiter, and the two knobs.

The shape follows our H200 measurement (docs/measurements/, ../shared/measurements/README.md);
what we cannot measure (we never change a GPU setting to measure) comes from published
characterisations, cited at each constant. docs/simulator.md §1 explains it in prose.

* **Demand per phase at a clock.** Each phase has a power at the maximum SM clock
  (:class:`~polca.power.profiles.GpuProfile`: ``prefill_w``, ``decode_w``, ``train_w``; the last
  is compute-bound GEMM work and exceeds the limit). At a relative clock ``r = f / f_max``::

      P(r) = idle_context + (P_phase - idle_context) * (m * speed(r) + (1 - m) * r ** ALPHA)

  The base is idle *with* a CUDA context: a GPU running a phase holds one (measured: 120 W on the
  H200 at full clock, against 80 W without a context). ``m`` is the share of active power that
  follows the work rate (memory traffic) rather than the clock (0.1 compute-bound, 0.4 decode).
* **Speed against the clock** (throughput relative to the max clock): compute-bound prefill and
  training scale linearly, ``speed = r``; memory-bound decode much less: only a share
  ``DECODE_COMPUTE_SHARE`` of an iteration scales with the clock,
  ``speed = 1 / ((1 - c) + c / r)``.
* **The board's own limiter** holds power at the enforced limit by lowering the SM clock: each
  phase runs at the highest clock whose power fits the limit (continuous, as the limiter
  dithers between supported clocks), and never above the ceiling. Measured on the H200: a GEMM
  sits at 700 W at ~1485 MHz with reason "SW power cap", within ~100 ms of its start (the
  transient before that is the sensor's business, :mod:`polca.power.sensor`).
* **Two knobs, their real interaction.** A clock ceiling (locked clocks) snaps down to the
  highest supported clock at or below it and lowers every phase whose clock is above it; a
  ceiling above the clock the limiter already chose sheds nothing. A power limit only bites on
  phases whose demand exceeds it (prefill and GEMM, never decode at 406 W on a 700 W board).
* **Idle**: without a context at ``idle_w`` and the lowest clock; with one at ``idle_context_w``.

Constants and their sources:

* ``ALPHA`` = 2.5: dynamic power ~ f * V**2; along the DVFS curve V rises with f (-> f**3) down
  to the voltage floor, where it stays (-> f); 2.5 sits between. With it, the measured GEMM
  limiter clock (1485 of 1980 MHz at 700 W) fixes ``train_w`` (profiles.py), and POLCA's A100
  ceiling 1275 MHz cuts prefill power by about a fifth (POLCA, arXiv 2308.12908: "~20% peak
  power reduction for <= 7% performance").
* ``DECODE_COMPUTE_SHARE`` = 0.1: decode is nearly insensitive to the SM clock. Maliakel, Ilager,
  Brandic (arXiv 2501.08219, abstract checked) measure 1-6% more latency for a cut from 2842 to
  180 MHz (1B-32B models, where decode is 77-91% of the time); Ma et al., "The Illusion of
  Power Capping in LLM Decode" (arXiv 2605.11999, abstract checked) report "minimal throughput
  loss" under SM clock locking on the H200. 0.1 is more clock-sensitive than the first (at half
  the clock decode keeps 91% of its speed): conservative for a policy, which it charges more
  for a ceiling than those measurements would.
* Traffic share ``m`` = 0.1 for compute-bound phases: an assumption (their operands come from
  on-chip memory); the measured limiter clock is fitted with it through ``train_w``.
* Decode traffic share ``m`` = 0.4: HBM traffic keeps flowing at a lower clock, so decode power
  falls less than compute power. With it an H200 decode locked at 50-60% of the max clock draws
  32-37% less power for 6-9% less speed, i.e. 28-31% less energy per token: Ma et al. report
  clock locking saves "up to 32%" of decode energy.

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
    "idle_power_w",
    "operating_point",
    "phase_peak_w",
    "phase_power_w",
    "phase_speed",
]

FloatArray = npt.NDArray[np.float64]

ALPHA = 2.5  # exponent of clock-driven dynamic power, see module docstring
DECODE_COMPUTE_SHARE = 0.1  # share of a decode iteration that scales with the SM clock
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
    """Shares of time a GPU spends in each phase (the rest is idle), uncapped.

    ``context``: whether a process holds a CUDA context on the GPU (idle then draws
    ``idle_context_w``). None means "if it does any work": serving and training processes keep
    their context through idle gaps, while a GPU with nothing to do has none.
    """

    prefill_frac: float = 0.0
    decode_frac: float = 0.0
    train_frac: float = 0.0
    context: bool | None = None

    def __post_init__(self) -> None:
        fracs = (self.prefill_frac, self.decode_frac, self.train_frac)
        if any(not 0.0 <= f <= 1.0 for f in fracs):
            raise ValueError(f"phase fractions must be within [0, 1], got {fracs}")
        if sum(fracs) > 1.0 + 1e-9:
            raise ValueError(f"phase fractions must sum to at most 1, got {sum(fracs)}")

    @property
    def has_context(self) -> bool:
        if self.context is not None:
            return self.context
        return self.prefill_frac + self.decode_frac + self.train_frac > 0

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

    ``sm_clock_mhz`` is the time-weighted clock over the active phases (idle: the lowest
    supported clock without a context, the ceiling clock with one). Speeds are relative to the
    uncapped GPU and describe the phase *if it runs*, whether or not it has time in ``demand``.
    ``demand_w`` is the power at the ceiling's clock without the limiter: what the board draws
    for the ~100 ms before the limiter catches up.
    """

    power_w: float
    demand_w: float
    sm_clock_mhz: int
    power_capped: bool
    clock_capped: bool
    prefill_speed: float
    decode_speed: float
    train_speed: float


def phase_peak_w(profile: GpuProfile, phase: Phase) -> float:
    """Power of a phase at the maximum clock, limiter aside."""
    return {
        Phase.PREFILL: profile.prefill_w,
        Phase.DECODE: profile.decode_w,
        Phase.TRAIN: profile.train_w,
    }[phase]


def idle_power_w(profile: GpuProfile, *, context: bool) -> float:
    """Idle power with or without a CUDA context held."""
    return profile.idle_context_w if context else profile.idle_w


def phase_speed(phase: Phase, clock_ratio: FloatArray | float) -> FloatArray:
    """Speed relative to the maximum clock, for a relative clock in (0, 1]."""
    ratio = np.asarray(clock_ratio, dtype=np.float64)
    if phase is Phase.DECODE:
        c = DECODE_COMPUTE_SHARE
        return np.asarray(1.0 / ((1.0 - c) + c / ratio), dtype=np.float64)
    return ratio


def phase_power_w(profile: GpuProfile, phase: Phase, clock_mhz: FloatArray | float) -> FloatArray:
    """Power while running ``phase`` at ``clock_mhz`` (the limiter aside)."""
    ratio = np.asarray(clock_mhz, dtype=np.float64) / profile.max_sm_clock_mhz
    m = _TRAFFIC_SHARE[phase]
    active_w = phase_peak_w(profile, phase) - profile.idle_context_w
    shape = m * phase_speed(phase, ratio) + (1.0 - m) * ratio**ALPHA
    return np.asarray(profile.idle_context_w + active_w * shape, dtype=np.float64)


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

    context = demand.has_context
    power_w = demand_w = demand.idle_frac * idle_power_w(profile, context=context)
    speeds: dict[Phase, float] = {}
    weighted_clock = 0.0
    power_capped = False
    for phase in Phase:
        clock = float(capped_clock_mhz(profile, phase, limit, ceiling))
        frac = demand.frac(phase)
        power_w += frac * float(phase_power_w(profile, phase, clock))
        demand_w += frac * float(phase_power_w(profile, phase, ceiling))
        speeds[phase] = float(phase_speed(phase, clock / profile.max_sm_clock_mhz))
        weighted_clock += frac * clock
        power_capped = power_capped or (frac > 0 and clock < ceiling)

    active = 1.0 - demand.idle_frac
    if active > 0:
        sm_clock = weighted_clock / active
    else:  # measured on the H200: 345 MHz without a context, 1980 MHz (max) with one
        sm_clock = ceiling if context else float(profile.min_sm_clock_mhz)
    return OperatingPoint(
        power_w=power_w,
        demand_w=demand_w,
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
