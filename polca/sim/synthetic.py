"""A synthetic request generator whose defaults are fitted to the Azure conversation trace.

Model:

* Arrivals: a gamma renewal process (inter-arrival coefficient of variation ``arrival_cv``)
  whose rate is modulated minute by minute by ``exp(x)``, with ``x`` an AR(1) process
  (lag-1 correlation ``rate_ac1``, stationary standard deviation ``rate_log_sd``): the trace's
  per-minute counts drift slowly (191 to 507 requests a minute over its hour).
* Diurnal shape (optional): the rate is also multiplied by
  ``1 − diurnal_amplitude · cos(2π t / diurnal_period_s)``, a trough at ``t = 0`` and a peak
  half a period later. A one-hour trace cannot show a day, so :func:`fit` leaves it off (0);
  the evaluation set (:mod:`polca.sim.evalset`) sets the period to the run's duration so a
  short run sees a whole trough-to-peak cycle.
* Prompt (context) and output (generated) lengths: independent log-normals, clipped to the
  trace's range (their log-correlation in the trace is 0.09).

Every parameter, its range in the evaluation set and why: ``docs/simulator.md`` section 2.

:data:`CONV_PARAMS` holds the values :func:`fit` gives for
``AzureLLMInferenceTrace_conv.csv`` (19,366 requests over 3,502 s); ``polca simulate
--fit-trace FILE`` prints them for any trace. A unit test re-fits the shared trace and checks
them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from polca.sim.trace import Trace

__all__ = ["CONV_PARAMS", "SyntheticParams", "fit", "generate", "synthetic_trace"]

_MINUTE_S = 60.0


@dataclass(frozen=True, slots=True)
class SyntheticParams:
    rate_per_s: float
    arrival_cv: float
    rate_log_sd: float
    rate_ac1: float
    context_log_mean: float
    context_log_sd: float
    context_min: int
    context_max: int
    generated_log_mean: float
    generated_log_sd: float
    generated_min: int
    generated_max: int
    diurnal_amplitude: float = 0.0  # 0: no daily shape; < 1 so the rate stays positive
    diurnal_period_s: float = 86400.0

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.arrival_cv <= 0:
            raise ValueError("rate_per_s and arrival_cv must be positive")
        if not -1 < self.rate_ac1 < 1:
            raise ValueError("rate_ac1 must be within (-1, 1)")
        if self.rate_log_sd < 0 or self.context_log_sd < 0 or self.generated_log_sd < 0:
            raise ValueError("standard deviations must not be negative")
        if not 1 <= self.context_min <= self.context_max:
            raise ValueError("need 1 <= context_min <= context_max")
        if not 1 <= self.generated_min <= self.generated_max:
            raise ValueError("need 1 <= generated_min <= generated_max")
        if not 0 <= self.diurnal_amplitude < 1 or not self.diurnal_period_s > 0:
            raise ValueError("need 0 <= diurnal_amplitude < 1 and diurnal_period_s > 0")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# fit(read_trace("AzureLLMInferenceTrace_conv.csv")), rounded to 3 significant digits.
CONV_PARAMS = SyntheticParams(
    rate_per_s=5.53,
    arrival_cv=1.09,
    rate_log_sd=0.219,
    rate_ac1=0.847,
    context_log_mean=6.63,
    context_log_sd=0.985,
    context_min=2,
    context_max=14050,
    generated_log_mean=5.02,
    generated_log_sd=0.859,
    generated_min=7,
    generated_max=1000,
)


def fit(trace: Trace) -> SyntheticParams:
    """Fit the generator's parameters to a trace (moments of the logs, per-minute counts)."""
    if len(trace) < 3 or trace.duration_s <= 0:
        raise ValueError("need at least 3 requests over a positive duration to fit")
    gaps = np.diff(trace.arrival_s)
    counts = np.bincount((trace.arrival_s // _MINUTE_S).astype(np.int64)).astype(np.float64)
    full_minutes = counts[:-1] if counts.size > 1 else counts  # the last minute is partial
    log_counts = np.log(np.maximum(full_minutes, 1.0))
    ac1 = 0.0
    if log_counts.size > 2 and np.std(log_counts) > 0:
        ac1 = float(np.corrcoef(log_counts[:-1], log_counts[1:])[0, 1])
    ctx = np.log(trace.context_tokens.astype(np.float64))
    gen = np.log(trace.generated_tokens.astype(np.float64))
    return SyntheticParams(
        rate_per_s=len(trace) / trace.duration_s,
        arrival_cv=float(np.std(gaps) / np.mean(gaps)) if np.mean(gaps) > 0 else 1.0,
        rate_log_sd=float(np.std(log_counts)),
        rate_ac1=min(max(ac1, -0.99), 0.99),
        context_log_mean=float(ctx.mean()),
        context_log_sd=float(ctx.std()),
        context_min=int(trace.context_tokens.min()),
        context_max=int(trace.context_tokens.max()),
        generated_log_mean=float(gen.mean()),
        generated_log_sd=float(gen.std()),
        generated_min=int(trace.generated_tokens.min()),
        generated_max=int(trace.generated_tokens.max()),
    )


def generate(params: SyntheticParams, duration_s: float, rng: np.random.Generator) -> Trace:
    """Requests over ``duration_s`` seconds; deterministic for a given ``rng`` state."""
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    minutes = max(1, math.ceil(duration_s / _MINUTE_S))
    # AR(1) log-rate per minute, centred so the mean rate stays rate_per_s.
    innovation_sd = params.rate_log_sd * math.sqrt(1.0 - params.rate_ac1**2)
    x = np.empty(minutes)
    x[0] = rng.normal(0.0, params.rate_log_sd)
    for i in range(1, minutes):
        x[i] = params.rate_ac1 * x[i - 1] + rng.normal(0.0, innovation_sd)
    factor = np.exp(x - params.rate_log_sd**2 / 2.0)
    if params.diurnal_amplitude > 0:
        mid_s = (np.arange(minutes) + 0.5) * _MINUTE_S
        factor *= 1.0 - params.diurnal_amplitude * np.cos(
            2.0 * math.pi * mid_s / params.diurnal_period_s
        )

    # Gamma renewal in "operational time" (unit mean rate), mapped through the rate profile.
    shape = 1.0 / params.arrival_cv**2
    expected = params.rate_per_s * duration_s * float(factor.max()) * 1.2 + 16
    gaps = rng.gamma(shape, 1.0 / shape, size=int(expected))
    op_time = np.cumsum(gaps) / params.rate_per_s
    # Operational time advances at factor[minute] per wall-clock second.
    wall_edges = np.arange(minutes + 1) * _MINUTE_S
    op_edges = np.concatenate([[0.0], np.cumsum(factor * _MINUTE_S)])
    arrival = np.interp(op_time, op_edges, wall_edges, right=np.inf)
    arrival = arrival[arrival < duration_s]

    n = arrival.size
    ctx = _clipped_lognormal(rng, params.context_log_mean, params.context_log_sd, n)
    gen = _clipped_lognormal(rng, params.generated_log_mean, params.generated_log_sd, n)
    return Trace(
        arrival_s=arrival - (arrival[0] if n else 0.0),
        context_tokens=np.clip(ctx, params.context_min, params.context_max),
        generated_tokens=np.clip(gen, params.generated_min, params.generated_max),
    )


def _clipped_lognormal(
    rng: np.random.Generator, log_mean: float, log_sd: float, n: int
) -> npt.NDArray[np.int64]:
    return np.rint(rng.lognormal(log_mean, log_sd, size=n)).astype(np.int64)


def synthetic_trace(params: SyntheticParams, duration_s: float, seed: int) -> Trace:
    """The synthetic trace of a run with this ``seed``: ``polca simulate`` and ``polca sweep``
    draw from the same stream, so a sweep cell can be rerun on its own."""
    return generate(params, duration_s, np.random.default_rng([seed, 7]))
