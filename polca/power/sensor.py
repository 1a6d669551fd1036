"""What NVML reports of a board's power: a 1 s average, an instant field, and the transient.

Measured on an H200 (docs/measurements/h200-2026-11-30, ../shared/measurements/README.md),
read-only:

* both power readings refresh every 100 ms (``REFRESH_S``);
* ``nvmlDeviceGetPowerUsage`` (and the ``NVML_FI_DEV_POWER_AVERAGE`` field, equal to it) is the
  mean of the last second (``AVERAGE_WINDOW_S``): a step shows as a linear ramp over ~1 s;
* ``NVML_FI_DEV_POWER_INSTANT`` is the last refresh period's power;
* at the start of a burst the board draws its unlimited demand until the limiter catches up,
  about one refresh period (``TRANSIENT_S``), up to 1.39x the enforced limit
  (``OVERSHOOT_RATIO``: 970 W instant on a 700 W limit, the largest reading of both runs).

:class:`PowerSensor` turns one power value per refresh period (the board's true mean power over
it) into those readings; :func:`period_power_w` says what that value is in the period where the
limiter has to pull the clock down. Pure Python: the fake NVML and the simulator use it, and
both are allowed no more than this.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = [
    "AVERAGE_WINDOW_S",
    "MEASURED",
    "OVERSHOOT_RATIO",
    "REFRESH_S",
    "TRANSIENT_S",
    "PowerSensor",
    "SensorSpec",
    "period_power_w",
]

REFRESH_S = 0.1  # measured: both fields change every ~100 ms
AVERAGE_WINDOW_S = 1.0  # measured: idle→load shows as a ~1 s linear ramp in GetPowerUsage
TRANSIENT_S = 0.1  # measured: the overshoot lasts one refresh, the limiter acts within ~100 ms
OVERSHOOT_RATIO = 1.39  # measured: instant field up to 970 W on a 700 W limit


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """How a board reports power; ``MEASURED`` is the H200's."""

    refresh_s: float = REFRESH_S
    window_s: float = AVERAGE_WINDOW_S
    overshoot_ratio: float = OVERSHOOT_RATIO

    def __post_init__(self) -> None:
        if not 0 < self.refresh_s <= self.window_s:
            raise ValueError("need 0 < refresh_s <= window_s")
        if self.overshoot_ratio < 1.0:
            raise ValueError("overshoot_ratio must be at least 1")

    @property
    def window_periods(self) -> int:
        return max(1, round(self.window_s / self.refresh_s))


MEASURED = SensorSpec()


def period_power_w(
    *, settled_w: float, demand_w: float, limit_w: float, limiter_caught_up: bool, spec: SensorSpec
) -> float:
    """The board's mean power over one refresh period.

    ``settled_w`` is the power with the limiter in place, ``demand_w`` the power at the clock the
    board ran before (ceiling only). In the first period after the limiter has to lower the clock
    (``limiter_caught_up`` False) the board draws its demand, bounded by the overshoot the
    measurement saw; afterwards it sits at ``settled_w``.
    """
    if limiter_caught_up or demand_w <= settled_w:
        return settled_w
    return max(settled_w, min(demand_w, spec.overshoot_ratio * limit_w))


class PowerSensor:
    """The readings of one board, fed one true power value per refresh period."""

    def __init__(self, power_w: float, spec: SensorSpec = MEASURED) -> None:
        self.spec = spec
        periods = spec.window_periods
        self._window: deque[float] = deque([power_w] * periods, maxlen=periods)
        self.instant_w = power_w
        self.energy_j = 0.0
        self._capped = False  # the limiter held the clock down in the last period…
        self._limit_w = float("inf")  # …for this limit

    def limiter_caught_up(self, *, capped: bool, limit_w: float) -> bool:
        """Whether the limiter already holds the clock where ``limit_w`` needs it: not when it
        has only now become necessary, or the limit has just been lowered."""
        return not capped or (self._capped and limit_w >= self._limit_w)

    def step(self, *, settled_w: float, demand_w: float, limit_w: float, capped: bool) -> float:
        """One refresh period of a board whose limiter lags one period; returns its power."""
        power_w = period_power_w(
            settled_w=settled_w,
            demand_w=demand_w,
            limit_w=limit_w,
            limiter_caught_up=self.limiter_caught_up(capped=capped, limit_w=limit_w),
            spec=self.spec,
        )
        self._capped, self._limit_w = capped, limit_w
        self.push(power_w)
        return power_w

    def push(self, power_w: float) -> None:
        """One refresh period has passed at mean power ``power_w``."""
        self._window.append(power_w)
        self.instant_w = power_w
        self.energy_j += power_w * self.spec.refresh_s

    def hold(self, power_w: float, duration_s: float, *, capped: bool, limit_w: float) -> None:
        """A long stretch at one settled power: fills the window without a push per period."""
        self._window.extend([power_w] * self.spec.window_periods)
        self.instant_w = power_w
        self.energy_j += power_w * duration_s
        self._capped, self._limit_w = capped, limit_w

    @property
    def average_w(self) -> float:
        """``nvmlDeviceGetPowerUsage``: the mean over the last window."""
        # Ten values: summing them each time is cheap and never drifts.
        return sum(self._window) / len(self._window)
