"""The replay's figure: domain power against the budget and triggers, with the stage, per row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from polca.sim.plotting import _pyplot as pyplot  # the simulator's Agg set-up
from polca.sim.plotting import budget_and_triggers  # the simulator's Agg set-up
from polca.tooling.replay import ReplayResult

__all__ = ["plot_replays"]


def plot_replays(rows: Sequence[tuple[str, ReplayResult]], path: str | Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 3.2 * len(rows)), squeeze=False)
    for ax, (title, result) in zip(axes[:, 0], rows, strict=True):
        hours = (result.times_s - result.times_s[0]) / 3600.0
        ax.plot(
            hours,
            100.0 * result.power_w / result.budget_w,
            lw=0.6,
            color="tab:blue",
            label="domain power",
        )
        budget_and_triggers(ax, result.plan)
        over = np.flatnonzero(result.over_budget)
        if over.size:
            ax.plot(
                hours[over],
                100.0 * result.power_w[over] / result.budget_w,
                "x",
                color="black",
                label="brake-level moments",
            )
        ax.set_ylabel("% of budget")
        ax.set_xlabel("hours")
        ax.set_title(f"{title}: {result.brake_moments} brake-level moments")
        ax.legend(loc="lower left", fontsize=7)
        stage_ax = ax.twinx()
        stage_ax.step(hours, result.stage, where="post", color="tab:red", lw=0.8, alpha=0.7)
        stage_ax.set_ylabel("stage", color="tab:red")
        stage_ax.set_ylim(-0.2, len(result.plan.stages) - 0.8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
