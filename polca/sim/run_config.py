"""What one simulation run is given and what it returns, whichever engine runs it.

:class:`SimConfig` (the domain, the policy, the time grid, the meter and the brake) and
:class:`SimResult` (power, stages, brakes, latencies, tokens) are shared by the request-level
engine (:mod:`polca.sim.engine`) and the fluid one (:mod:`polca.sim.fluid_engine`), so the
metrics (:mod:`polca.sim.metrics`) read either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from polca.control.plan import ControlPlan
from polca.power.sensor import AVERAGE_WINDOW_S
from polca.sim.domain import TIER_HIGH, TIER_LOW, TIER_TRAIN, DomainConfig
from polca.sim.policies import PolicyConfig

__all__ = [
    "BRAKE_CLOCK_PCT",
    "INFERENCE_TIERS",
    "MAX_STEPS",
    "PLAN_TIER",
    "SimConfig",
    "SimResult",
    "check_steps",
]

FloatArray = npt.NDArray[np.float64]

# POLCA's brake: ~288 MHz on a 1410 MHz A100, i.e. about a fifth of the max clock.
BRAKE_CLOCK_PCT = 100.0 * 288 / 1410
# Plan tier of each server tier: training is throttled like low-priority inference.
PLAN_TIER = MappingProxyType({TIER_HIGH: "high", TIER_LOW: "low", TIER_TRAIN: "low"})
INFERENCE_TIERS = (TIER_HIGH, TIER_LOW)


# The most time steps one run may take: its per-step records (power, stage, ...) are arrays of
# this length, ~10 bytes a step. 10 M steps is 11.6 simulated days at 100 ms.
MAX_STEPS = 10_000_000


def check_steps(duration_s: float, dt_s: float) -> None:
    """Refuse a run whose per-step arrays would not fit in memory (or never end)."""
    steps = duration_s / dt_s
    if not steps <= MAX_STEPS:  # also refuses inf and nan
        raise ValueError(
            f"{duration_s:g} s in steps of {dt_s:g} s is {steps:.3g} steps, more than the "
            f"simulator's limit of {MAX_STEPS:,}: shorten --duration or raise --dt"
        )


@dataclass(frozen=True, slots=True)
class SimConfig:
    domain: DomainConfig
    policy: PolicyConfig
    duration_s: float = 3600.0
    dt_s: float = 0.1
    meter_window_s: float = AVERAGE_WINDOW_S
    brake_enabled: bool = True
    brake_hold_s: float = 10.0
    drain_s: float = 120.0  # keep simulating (no arrivals) so in-flight requests finish

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.dt_s <= 0:
            raise ValueError("duration_s and dt_s must be positive")
        check_steps(self.duration_s + self.drain_s, self.dt_s)
        if self.meter_window_s < self.dt_s:
            raise ValueError("meter_window_s must be at least one step")
        if self.brake_hold_s < 0 or self.drain_s < 0:
            raise ValueError("brake_hold_s and drain_s must not be negative")

    @property
    def horizon_steps(self) -> int:
        return round(self.duration_s / self.dt_s)


@dataclass(frozen=True, slots=True)
class SimResult:
    config: SimConfig
    plan: ControlPlan | None  # the plan actually run (derived triggers applied)
    raw_power_w: npt.NDArray[np.float32]
    metered_power_w: npt.NDArray[np.float32]
    stage: npt.NDArray[np.int8]
    brake_events: int
    time_above_budget_s: float
    energy_j: float
    request_tier: npt.NDArray[np.int8]  # index into INFERENCE_TIERS
    arrival_s: FloatArray
    first_token_s: FloatArray  # nan: never got its first token
    finish_s: FloatArray  # nan: never finished
    tbt_samples: Mapping[str, tuple[FloatArray, FloatArray]]  # tier → (tbt_s, token weights)
    tokens_in_horizon: Mapping[str, float]  # generated tokens per tier within duration_s
    train_iterations: float  # completed within duration_s
    stage_changes: int
    guard_actions: int = 0
    # Requests per tier when the request arrays hold a sample of them (the fluid engine);
    # None: they hold every request.
    tier_requests: Mapping[str, int] | None = None

    @property
    def budget_w(self) -> float:
        return self.config.domain.budget_w
