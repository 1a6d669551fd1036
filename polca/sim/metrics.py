"""Figures of a run, and POLCA's acceptance criteria against the uncapped baseline.

Latencies cover every request that arrived within the run; one that never finished counts as
infinitely late (percentiles use the inverted CDF, so they stay finite while under half, or
1%, of the requests are unfinished). Time between tokens is weighted by tokens: a step's
samples are the server's mean iteration spacing in that step (prefill stalls included).
Throughput is tokens generated within the run's duration, relative to the baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from polca.sim.engine import INFERENCE_TIERS, SimResult

__all__ = [
    "CRITERIA_KEYS",
    "Criteria",
    "Metrics",
    "TierMetrics",
    "judge",
    "summarize",
    "weighted_percentile",
]

# Machine-readable names of the criteria, in the order they are checked (``failed_criteria``):
# a sweep counts which one binds without parsing the human-readable ``failures``.
BRAKES = "brakes"
HIGH_P50 = "high_p50"
LOW_THROUGHPUT = "low_throughput"
LOW_P50 = "low_p50"
CRITERIA_KEYS = (BRAKES, HIGH_P50, LOW_THROUGHPUT, LOW_P50)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Criteria:
    """POLCA's: zero brakes, high-priority P50 impact ≤ +1%, low-priority throughput ≥ 98%.

    ``max_low_p50_impact`` optionally bounds the low-priority end-to-end P50 impact too (POLCA
    does not; an open-loop replay keeps low-priority throughput while its latency grows).
    """

    max_brake_events: int = 0
    max_high_p50_impact: float = 0.01
    min_low_throughput: float = 0.98
    max_low_p50_impact: float | None = None


@dataclass(frozen=True, slots=True)
class TierMetrics:
    requests: int
    ttft_p50_s: float
    ttft_p99_s: float
    tbt_p50_s: float
    tbt_p99_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    tokens: float
    throughput_rel: float  # tokens / baseline tokens
    e2e_p50_impact: float  # e2e P50 / baseline e2e P50 − 1
    ttft_p50_impact: float
    tbt_p50_impact: float


@dataclass(frozen=True, slots=True)
class Metrics:
    policy: str
    servers: int
    base_servers: int
    oversubscription: float
    budget_w: float
    brake_events: int
    time_above_budget_s: float
    energy_kwh: float
    mean_power_pct: float
    peak_power_pct: float
    stage_time_pct: tuple[float, ...]  # share of time the controller held each stage
    stage_changes: int
    top_trigger_pct: float | None
    tiers: dict[str, TierMetrics]
    passed: bool
    failures: tuple[str, ...]
    failed_criteria: tuple[str, ...] = ()  # CRITERIA_KEYS of the failures, same order

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def weighted_percentile(values: FloatArray, weights: FloatArray, q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` (0..100) of the total."""
    if values.size == 0 or float(weights.sum()) <= 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    idx = int(np.searchsorted(cum, cum[-1] * q / 100.0, side="left"))
    return float(values[order][min(idx, values.size - 1)])


def _percentile(values: FloatArray, q: float) -> float:
    if values.size == 0:
        return float("nan")
    return float(np.percentile(values, q, method="inverted_cdf"))


def _tier_raw(result: SimResult, code: int, tier: str) -> dict[str, float]:
    mask = result.request_tier == code
    arrival = result.arrival_s[mask]
    ttft = np.nan_to_num(result.first_token_s[mask] - arrival, nan=np.inf)
    e2e = np.nan_to_num(result.finish_s[mask] - arrival, nan=np.inf)
    tbt_values, tbt_weights = result.tbt_samples[tier]
    return {
        "requests": float(
            mask.sum() if result.tier_requests is None else result.tier_requests[tier]
        ),
        "ttft_p50_s": _percentile(ttft, 50),
        "ttft_p99_s": _percentile(ttft, 99),
        "tbt_p50_s": weighted_percentile(tbt_values, tbt_weights, 50),
        "tbt_p99_s": weighted_percentile(tbt_values, tbt_weights, 99),
        "e2e_p50_s": _percentile(e2e, 50),
        "e2e_p99_s": _percentile(e2e, 99),
        "tokens": result.tokens_in_horizon[tier],
    }


def _ratio(value: float, base: float) -> float:
    if base > 0 and np.isfinite(base):
        return value / base
    return float("nan")


def judge(
    criteria: Criteria,
    brake_events: int,
    high: TierMetrics | None,
    low: TierMetrics | None,
) -> list[tuple[str, str]]:
    """The criteria a run fails, as (key of CRITERIA_KEYS, message); empty when it passes.

    Each bound is inclusive (a run exactly at +1% high-priority impact passes); a NaN impact
    (no baseline to compare with) fails, and a tier without requests is not judged.
    """
    failures: list[tuple[str, str]] = []
    if brake_events > criteria.max_brake_events:
        failures.append((BRAKES, f"{brake_events} brake events"))
    if (
        high is not None
        and high.requests
        and not high.e2e_p50_impact <= criteria.max_high_p50_impact
    ):
        failures.append((HIGH_P50, f"high-priority P50 impact {100 * high.e2e_p50_impact:+.2f}%"))
    if low is not None and low.requests and not low.throughput_rel >= criteria.min_low_throughput:
        message = f"low-priority throughput {100 * low.throughput_rel:.1f}%"
        failures.append((LOW_THROUGHPUT, message))
    if (
        criteria.max_low_p50_impact is not None
        and low is not None
        and low.requests
        and not low.e2e_p50_impact <= criteria.max_low_p50_impact
    ):
        failures.append((LOW_P50, f"low-priority P50 impact {100 * low.e2e_p50_impact:+.2f}%"))
    return failures


def summarize(
    result: SimResult,
    baseline: SimResult,
    *,
    criteria: Criteria | None = None,
    top_trigger_pct: float | None = None,
) -> Metrics:
    """Metrics of ``result`` with impacts relative to ``baseline`` (same requests, uncapped)."""
    criteria = criteria or Criteria()
    dom = result.config.domain
    tiers: dict[str, TierMetrics] = {}
    for code, tier in enumerate(INFERENCE_TIERS):
        raw = _tier_raw(result, code, tier)
        base = _tier_raw(baseline, code, tier)
        tiers[tier] = TierMetrics(
            requests=int(raw["requests"]),
            ttft_p50_s=raw["ttft_p50_s"],
            ttft_p99_s=raw["ttft_p99_s"],
            tbt_p50_s=raw["tbt_p50_s"],
            tbt_p99_s=raw["tbt_p99_s"],
            e2e_p50_s=raw["e2e_p50_s"],
            e2e_p99_s=raw["e2e_p99_s"],
            tokens=raw["tokens"],
            throughput_rel=_ratio(raw["tokens"], base["tokens"]),
            e2e_p50_impact=_ratio(raw["e2e_p50_s"], base["e2e_p50_s"]) - 1.0,
            ttft_p50_impact=_ratio(raw["ttft_p50_s"], base["ttft_p50_s"]) - 1.0,
            tbt_p50_impact=_ratio(raw["tbt_p50_s"], base["tbt_p50_s"]) - 1.0,
        )

    failures = judge(criteria, result.brake_events, tiers.get("high"), tiers.get("low"))
    metered = result.metered_power_w.astype(np.float64)
    n_stages = len(result.plan.stages) if result.plan is not None else 1
    stage_counts = np.bincount(result.stage.astype(np.int64), minlength=n_stages)
    return Metrics(
        policy=result.config.policy.name,
        servers=dom.servers,
        base_servers=dom.base_servers,
        oversubscription=dom.oversubscription,
        budget_w=dom.budget_w,
        brake_events=result.brake_events,
        time_above_budget_s=result.time_above_budget_s,
        energy_kwh=result.energy_j / 3.6e6,
        mean_power_pct=100.0 * float(metered.mean()) / dom.budget_w,
        peak_power_pct=100.0 * float(metered.max()) / dom.budget_w,
        stage_time_pct=tuple(float(x) for x in 100.0 * stage_counts / max(1, result.stage.size)),
        stage_changes=result.stage_changes,
        top_trigger_pct=top_trigger_pct,
        tiers=tiers,
        passed=not failures,
        failures=tuple(message for _key, message in failures),
        failed_criteria=tuple(key for key, _message in failures),
    )
