"""Figures: domain power against budget and thresholds with the stage over time, latency CDFs.

matplotlib is imported lazily (Agg backend) so the simulator itself does not need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polca.control.plan import ControlPlan
from polca.sim.engine import INFERENCE_TIERS, SimResult
from polca.sim.search import SearchResult
from polca.sim.sweep import SweepResult

__all__ = ["budget_and_triggers", "plot_runs", "plot_search", "plot_sweep"]


def _pyplot() -> Any:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runs(results: Sequence[SimResult], path: str | Path) -> Path:
    """Power and stage over time per policy, then per-tier end-to-end latency CDFs."""
    plt = _pyplot()
    n = len(results)
    fig, axes = plt.subplots(n + 1, 1, figsize=(11, 3.2 * (n + 1)), squeeze=False)
    for ax, result in zip(axes[:n, 0], results, strict=True):
        _power_panel(ax, result)
    _cdf_panel(axes[n, 0], results)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _power_panel(ax: Any, result: SimResult) -> None:
    cfg = result.config
    budget = result.budget_w
    t_min = np.arange(result.metered_power_w.size) * cfg.dt_s / 60.0
    ax.plot(
        t_min,
        100.0 * result.metered_power_w / budget,
        lw=0.6,
        color="tab:blue",
        label="domain power",
    )
    budget_and_triggers(ax, result.plan)
    ax.set_ylabel("% of budget")
    ax.set_title(
        f"{cfg.policy.name}: {cfg.domain.servers} servers "
        f"(+{100 * cfg.domain.oversubscription:.1f}%), {result.brake_events} brake events"
    )
    ax.legend(loc="lower left", fontsize=7)
    stage_ax = ax.twinx()
    stage_ax.step(t_min, result.stage, where="post", color="tab:red", lw=0.8, alpha=0.7)
    stage_ax.set_ylabel("stage", color="tab:red")
    top = len(result.plan.stages) - 1 if result.plan is not None else 1
    stage_ax.set_ylim(-0.2, top + 0.2)
    ax.set_xlabel("minutes")


def budget_and_triggers(ax: Any, plan: ControlPlan | None) -> None:
    """The budget (100%) and the plan's throttling triggers on a %-of-budget axis."""
    ax.axhline(100.0, color="black", lw=1.0, label="budget")
    if plan is None:
        return
    for i, stage in enumerate(plan.stages[1:-1], start=1):
        ax.axhline(
            stage.trigger_pct, color="tab:orange", lw=0.6, ls="--",
            label="triggers" if i == 1 else None,
        )  # fmt: skip


def _cdf_panel(ax: Any, results: Sequence[SimResult]) -> None:
    styles = {INFERENCE_TIERS[0]: "-", INFERENCE_TIERS[1]: ":"}
    for result in results:
        for code, tier in enumerate(INFERENCE_TIERS):
            mask = result.request_tier == code
            e2e = np.sort((result.finish_s - result.arrival_s)[mask])
            e2e = e2e[np.isfinite(e2e)]
            if not e2e.size:
                continue
            ax.plot(
                e2e,
                np.arange(1, e2e.size + 1) / mask.sum(),
                ls=styles[tier],
                label=f"{result.config.policy.name} {tier}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (s)")
    ax.set_ylabel("CDF")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_search(result: SearchResult, path: str | Path) -> Path:
    """Peak power and high-priority P50 impact against oversubscription, per policy."""
    plt = _pyplot()
    fig, (ax_power, ax_p50) = plt.subplots(1, 2, figsize=(11, 4))
    for p in result.policies:
        over = [100 * m.oversubscription for m in p.evaluated]
        ax_power.plot(over, [m.peak_power_pct for m in p.evaluated], marker="o", label=p.policy)
        ax_p50.plot(
            over,
            [100 * m.tiers["high"].e2e_p50_impact for m in p.evaluated],
            marker="o",
            label=p.policy,
        )
    ax_power.axhline(100, color="black", lw=1)
    ax_power.set(xlabel="oversubscription (%)", ylabel="peak metered power (% of budget)")
    ax_p50.axhline(1.0, color="black", lw=1)
    ax_p50.set(
        xlabel="oversubscription (%)", ylabel="high-priority e2e P50 impact (%)", yscale="symlog"
    )
    for ax in (ax_power, ax_p50):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_sweep(result: SweepResult, path: str | Path) -> Path:
    """Worst case per policy (bars) and each trace's own worst case over seeds (markers)."""
    plt = _pyplot()
    base = result.spec.domain.base_servers
    worst = result.worst_cases()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(worst) + 3), 4.5))
    x = np.arange(len(worst))
    heights = [100 * (w.oversubscription or 0.0) for w in worst]
    bars = ax.bar(x, heights, color="tab:blue", alpha=0.6, label="worst case (all traces, seeds)")
    for bar, w in zip(bars, worst, strict=True):
        label = "none passes" if w.extra_servers is None else f"+{bar.get_height():.1f}%"
        if w.gain_over_none is not None and w.policy != "none":
            label += f"\n({100 * w.gain_over_none:+.1f} vs none)"
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center", va="bottom", fontsize=8,
        )  # fmt: skip
    names = [m.name for m in result.spec.members]
    markers = "osv^D<>px*h"
    for i, name in enumerate(names):
        ys = [dict(w.per_trace_extra).get(name) for w in worst]
        ax.scatter(
            x + (i - (len(names) - 1) / 2) * 0.08,
            [math.nan if y is None else 100 * y / base for y in ys],
            marker=markers[i % len(markers)], s=18, zorder=3, label=name,
        )  # fmt: skip
    ax.set_xticks(x, [w.policy for w in worst])
    ax.set_ylabel("largest safe oversubscription (%)")
    ax.set_title(
        f"{len(names)} traces x {len(result.spec.seeds)} seeds, base {base} servers "
        "(markers: each trace's worst over seeds)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
