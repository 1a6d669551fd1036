"""Tables (rich) and JSON for simulation results."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from rich.table import Table

from polca.sim.metrics import Metrics
from polca.sim.search import SearchResult
from polca.sim.sweep import SweepResult

__all__ = [
    "domain_table",
    "latency_table",
    "search_json",
    "search_table",
    "simulate_json",
    "sweep_json",
    "sweep_table",
    "sweep_trace_table",
]


def _ms(value_s: float) -> str:
    return "∞" if math.isinf(value_s) else ("–" if math.isnan(value_s) else f"{1000 * value_s:.0f}")


def _s(value_s: float) -> str:
    return "∞" if math.isinf(value_s) else ("–" if math.isnan(value_s) else f"{value_s:.2f}")


def _pct(value: float, *, signed: bool = False) -> str:
    if math.isnan(value):
        return "–"
    return f"{100 * value:+.2f}%" if signed else f"{100 * value:.1f}%"


def domain_table(metrics: Sequence[Metrics]) -> Table:
    table = Table(title="Power domain", title_justify="left")
    for name in (
        "policy",
        "servers",
        "brake events",
        "time > budget",
        "energy",
        "mean power",
        "peak power",
        "top trigger",
        "time per stage",
        "criteria",
    ):
        table.add_column(name, justify="left" if name in {"policy", "criteria"} else "right")
    for m in metrics:
        table.add_row(
            m.policy,
            f"{m.servers} (+{100 * m.oversubscription:.1f}%)",
            str(m.brake_events),
            f"{m.time_above_budget_s:.1f} s",
            f"{m.energy_kwh:.1f} kWh",
            f"{m.mean_power_pct:.1f}%",
            f"{m.peak_power_pct:.1f}%",
            "–" if m.top_trigger_pct is None else f"{m.top_trigger_pct:.1f}%",
            " / ".join(f"{p:.0f}" for p in m.stage_time_pct) + " %",
            "pass" if m.passed else "FAIL: " + "; ".join(m.failures),
        )
    return table


def latency_table(metrics: Sequence[Metrics]) -> Table:
    table = Table(title="Per tier (impact relative to the uncapped baseline)", title_justify="left")
    for name in (
        "policy",
        "tier",
        "requests",
        "TTFT p50/p99 ms",
        "TBT p50/p99 ms",
        "e2e p50/p99 s",
        "e2e p50 impact",
        "TTFT p50 impact",
        "throughput",
    ):
        table.add_column(name, justify="left" if name in {"policy", "tier"} else "right")
    for m in metrics:
        for tier, t in m.tiers.items():
            table.add_row(
                m.policy,
                tier,
                str(t.requests),
                f"{_ms(t.ttft_p50_s)} / {_ms(t.ttft_p99_s)}",
                f"{_ms(t.tbt_p50_s)} / {_ms(t.tbt_p99_s)}",
                f"{_s(t.e2e_p50_s)} / {_s(t.e2e_p99_s)}",
                _pct(t.e2e_p50_impact, signed=True),
                _pct(t.ttft_p50_impact, signed=True),
                _pct(t.throughput_rel),
            )
    return table


def search_table(result: SearchResult) -> Table:
    table = Table(
        title=(
            f"Largest oversubscription meeting the criteria (base {result.base_servers} servers, "
            f"load scale {result.load_scale:.3g})"
        ),
        title_justify="left",
    )
    for name in (
        "policy",
        "oversubscription",
        "servers",
        "brake events",
        "peak power",
        "high e2e p50 impact",
        "low throughput",
        "low e2e p50 impact",
        "top trigger",
        "levels tried (servers: pass/FAIL)",
    ):
        table.add_column(
            name,
            justify="left" if name in {"policy", "levels tried (servers: pass/FAIL)"} else "right",
        )
    for p in result.policies:
        tried = ", ".join(f"{m.servers}:{'pass' if m.passed else 'FAIL'}" for m in p.evaluated)
        if p.best is None:
            table.add_row(p.policy, "none passes", "–", "–", "–", "–", "–", "–", "–", tried)
            continue
        b = p.best
        high, low = b.tiers["high"], b.tiers["low"]
        table.add_row(
            p.policy,
            f"+{100 * (p.best_extra_servers or 0) / result.base_servers:.1f}%",
            str(b.servers),
            str(b.brake_events),
            f"{b.peak_power_pct:.1f}%",
            _pct(high.e2e_p50_impact, signed=True),
            _pct(low.throughput_rel),
            _pct(low.e2e_p50_impact, signed=True),
            "–" if b.top_trigger_pct is None else f"{b.top_trigger_pct:.1f}%",
            tried,
        )
    return table


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def simulate_json(scenario: Mapping[str, Any], metrics: Sequence[Metrics]) -> dict[str, Any]:
    out: dict[str, Any] = _clean({"scenario": scenario, "results": [m.as_dict() for m in metrics]})
    return out


def search_json(scenario: Mapping[str, Any], result: SearchResult) -> dict[str, Any]:
    policies = [
        {
            "policy": p.policy,
            "best_extra_servers": p.best_extra_servers,
            "best_oversubscription": p.best_oversubscription(result.base_servers),
            "best": p.best.as_dict() if p.best is not None else None,
            "evaluated": [m.as_dict() for m in p.evaluated],
        }
        for p in result.policies
    ]
    out: dict[str, Any] = _clean(
        {
            "scenario": scenario,
            "load_scale": result.load_scale,
            "base_servers": result.base_servers,
            "policies": policies,
        }
    )
    return out


def _criteria_text(pairs: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{_CRITERION_NAMES.get(k, k)} ({n})" for k, n in pairs) or "–"


_CRITERION_NAMES = {
    "brakes": "brakes",
    "high_p50": "high P50",
    "low_throughput": "low throughput",
    "low_p50": "low P50",
}


def _level(extra: int | None, base: int) -> str:
    return "none passes" if extra is None else f"+{100 * extra / base:.1f}% ({base + extra})"


def _opt_pct(value: float | None, *, signed: bool = False) -> str:
    return "–" if value is None else _pct(value, signed=signed)


def sweep_table(result: SweepResult) -> Table:
    """The worst case per policy over every trace and seed of a sweep."""
    spec = result.spec
    base = spec.domain.base_servers
    table = Table(
        title=(
            f"Worst case over {len(spec.members)} traces x {len(spec.seeds)} seeds "
            f"(base {base} servers; largest level passing every cell at it and below)"
        ),
        title_justify="left",
    )
    for name in (
        "policy",
        "worst case (servers)",
        "gain over none",
        "binds at next level (cells)",
        "failing traces",
        "high e2e p50",
        "low thr.",
        "low e2e p50",
        "TTFT p99 high/low ms",
    ):
        table.add_column(name, justify="left" if name in {"policy", "failing traces"} else "right")
    for w in result.worst_cases():
        ttft = dict(w.ttft_p99_s)
        table.add_row(
            w.policy,
            _level(w.extra_servers, base)
            + (" top of grid" if w.first_failing_extra is None else ""),
            "–" if w.gain_over_none is None else f"{100 * w.gain_over_none:+.1f} pts",
            _criteria_text(w.failures_at_first_failing),
            ", ".join(w.failing_traces) or "–",
            _opt_pct(w.high_e2e_p50_impact, signed=True),
            _opt_pct(w.low_throughput_rel),
            _opt_pct(w.low_e2e_p50_impact, signed=True),
            f"{_ms(ttft.get('high', math.nan))} / {_ms(ttft.get('low', math.nan))}",
        )
    return table


def sweep_trace_table(result: SweepResult) -> Table:
    """Each trace's own worst case over seeds, per policy."""
    base = result.spec.domain.base_servers
    worst = result.worst_cases()
    table = Table(title="Per trace (worst over seeds)", title_justify="left")
    table.add_column("trace")
    table.add_column("load scale", justify="right")
    for w in worst:
        table.add_column(w.policy, justify="right")
    scales: dict[str, list[float]] = {}
    for name, _seed, scale in result.load_scales:
        scales.setdefault(name, []).append(scale)
    for name, values in scales.items():
        cells = [_level(dict(w.per_trace_extra).get(name), base) for w in worst]
        span = (
            f"{min(values):.4g}"
            if min(values) == max(values)
            else (f"{min(values):.4g}-{max(values):.4g}")
        )
        table.add_row(name, span, *cells)
    return table


def sweep_json(described: Mapping[str, Any], result: SweepResult) -> dict[str, Any]:
    out: dict[str, Any] = _clean(
        {
            "sweep": described,
            "load_scales": [
                {"trace": name, "seed": seed, "load_scale": scale}
                for name, seed, scale in result.load_scales
            ],
            "worst_case": [asdict(w) for w in result.worst_cases()],
            "cells": [
                {
                    "trace": c.trace,
                    "seed": c.seed,
                    "extra_servers": c.extra_servers,
                    "metrics": c.metrics.as_dict(),
                }
                for c in result.cells
            ],
        }
    )
    return out
