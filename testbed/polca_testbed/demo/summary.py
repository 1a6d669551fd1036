"""The end of a demo run: figures from the recording, a table, a text file and a PNG plot.

A *brake-level excursion* is a stretch of samples at or above 100% of the budget: where a real
row's breaker or power brake would act. The same figures for the *uncapped* load (the same
demand with no limits, i.e. no policy) show what POLCA prevented.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from polca_testbed.demo.recording import Recording, Sample

__all__ = [
    "Excursions",
    "Summary",
    "WorkloadThrottling",
    "excursions",
    "plot_run",
    "summarize",
    "summary_table",
    "summary_text",
    "trigger_names",
    "workload_order",
]

WORKLOAD_TITLES = {
    "high": "high-priority inference",
    "low": "low-priority inference",
    "train": "training",
}


@dataclass(frozen=True, slots=True)
class Excursions:
    """Stretches at or above the budget."""

    count: int
    seconds: float
    peak_pct: float
    mean_pct: float


@dataclass(frozen=True, slots=True)
class WorkloadThrottling:
    gpus: int
    throttled_gpu_s: float
    share_pct: float  # of the workload's GPU-seconds
    first_throttled_s: float | None  # when the first of its GPUs got a limit


@dataclass(frozen=True, slots=True)
class Summary:
    duration_s: float
    samples: int
    stage_seconds: tuple[tuple[str, float], ...]  # in stage order, then "unknown"
    highest_stage: str | None
    stage_changes: int
    measured: Excursions
    uncapped: Excursions
    throttling: tuple[tuple[str, WorkloadThrottling], ...]  # in workload order


def _durations(samples: Sequence[Sample], interval_s: float) -> list[float]:
    """How long each sample stands for: until the next one (the last: one interval)."""
    return [
        (samples[i + 1].t_s - s.t_s) if i + 1 < len(samples) else interval_s
        for i, s in enumerate(samples)
    ]


def excursions(percents: Sequence[float | None], durations: Sequence[float]) -> Excursions:
    """Runs of samples at or above 100% (a missing sample ends a run)."""
    count, above = 0, False
    known = [(p, d) for p, d in zip(percents, durations, strict=True) if p is not None]
    for pct in percents:
        now = pct is not None and pct >= 100.0
        if now and not above:
            count += 1
        above = now
    seconds = sum(d for p, d in known if p >= 100.0)
    total = sum(d for _, d in known)
    return Excursions(
        count=count,
        seconds=seconds,
        peak_pct=max((p for p, _ in known), default=0.0),
        mean_pct=sum(p * d for p, d in known) / total if total > 0 else 0.0,
    )


def summarize(recording: Recording) -> Summary:
    samples = recording.samples
    durations = _durations(samples, recording.interval_s)
    stage_seconds = {line.name: 0.0 for line in recording.stages}
    unknown = 0.0
    changes, last_index = 0, None
    for sample, dt in zip(samples, durations, strict=True):
        if sample.stage_index is None:
            unknown += dt
            continue
        name = recording.stage_name(sample.stage_index)
        stage_seconds[name] = stage_seconds.get(name, 0.0) + dt
        if last_index is not None and sample.stage_index != last_index:
            changes += 1
        last_index = sample.stage_index
    rows = list(stage_seconds.items())
    if unknown > 0:
        rows.append(("unknown", unknown))
    indices = [s.stage_index for s in samples if s.stage_index is not None]

    gpus = recording.gpus_by_workload()
    throttling = []
    for workload in sorted(gpus, key=workload_order):
        gpu_s = sum(
            s.throttled.get(workload, 0) * dt for s, dt in zip(samples, durations, strict=True)
        )
        first = next((s.t_s for s in samples if s.throttled.get(workload, 0) > 0), None)
        total = gpus[workload] * sum(durations)
        throttling.append(
            (
                workload,
                WorkloadThrottling(
                    gpus=gpus[workload],
                    throttled_gpu_s=gpu_s,
                    share_pct=100.0 * gpu_s / total if total > 0 else 0.0,
                    first_throttled_s=first,
                ),
            )
        )
    return Summary(
        duration_s=sum(durations),
        samples=len(samples),
        stage_seconds=tuple(rows),
        highest_stage=recording.stage_name(max(indices)) if indices else None,
        stage_changes=changes,
        measured=excursions(
            [recording.percent(s.power_w) if s.power_w is not None else None for s in samples],
            durations,
        ),
        uncapped=excursions([recording.percent(s.uncapped_w) for s in samples], durations),
        throttling=tuple(throttling),
    )


def workload_order(workload: str) -> int:
    order = list(WORKLOAD_TITLES)
    return order.index(workload) if workload in order else len(order)


def summary_table(summary: Summary) -> Table:
    """One rich table with the run's figures."""
    table = Table(
        title=f"POLCA demo: {summary.duration_s:.0f} s, {summary.samples} samples",
        show_header=True,
        header_style="bold",
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, seconds in summary.stage_seconds:
        share = 100.0 * seconds / summary.duration_s if summary.duration_s else 0.0
        table.add_row(f"time in {name}", f"{seconds:6.0f} s  ({share:4.1f}%)")
    table.add_row("stage changes", str(summary.stage_changes))
    table.add_section()
    for label, exc in (
        ("with POLCA", summary.measured),
        ("uncapped (no policy)", summary.uncapped),
    ):
        table.add_row(
            f"domain power {label}",
            f"mean {exc.mean_pct:5.1f}%  peak {exc.peak_pct:5.1f}% of budget",
        )
        table.add_row(
            f"brake-level excursions {label}", f"{exc.count} ({exc.seconds:.0f} s at ≥100%)"
        )
    table.add_section()
    for workload, t in summary.throttling:
        first = (
            f"first at {t.first_throttled_s:.0f} s" if t.first_throttled_s is not None else "never"
        )
        table.add_row(
            f"throttled GPU-s, {WORKLOAD_TITLES.get(workload, workload)} ({t.gpus} GPUs)",
            f"{t.throttled_gpu_s:7.0f}  ({t.share_pct:4.1f}%, {first})",
        )
    return table


def summary_text(summary: Summary, width: int = 100) -> str:
    """The table as plain text (for summary.txt and logs)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(summary_table(summary))
    output = console.file
    assert isinstance(output, io.StringIO)
    return output.getvalue()


def trigger_names(recording: Recording) -> dict[float, list[str]]:
    """Stage names by trigger (stages may share one: POLCA's stage 2 and 3), 100% and up left
    out (the budget line stands for them)."""
    out: dict[float, list[str]] = {}
    for line in recording.stages:
        if line.trigger_pct is not None and line.trigger_pct < 100.0:
            out.setdefault(line.trigger_pct, []).append(line.name)
    return out


def plot_run(recording: Recording, path: Path) -> Path:
    """Domain power against the budget and stage triggers, the stage, and throttled GPUs."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    samples = recording.samples
    t = [s.t_s for s in samples]
    fig, (ax_power, ax_stage, ax_gpus) = plt.subplots(
        3, 1, figsize=(10, 7.5), sharex=True, height_ratios=[3, 1.2, 1.5]
    )
    measured = [
        recording.percent(s.power_w) if s.power_w is not None else float("nan") for s in samples
    ]
    ax_power.plot(
        t,
        [recording.percent(s.uncapped_w) for s in samples],
        color="0.6",
        linestyle="--",
        linewidth=1,
        label="uncapped load (no policy)",
    )
    ax_power.plot(t, measured, color="tab:blue", linewidth=1.5, label="domain power (daemons)")
    ax_power.axhline(100.0, color="tab:red", linewidth=1.5, label="budget")
    for trigger_pct, names in trigger_names(recording).items():
        ax_power.axhline(trigger_pct, color="tab:orange", linewidth=0.8, linestyle=":")
        ax_power.annotate(
            " / ".join(names),
            (0.01, trigger_pct),  # left: the run starts below the triggers (the ramp)
            xycoords=("axes fraction", "data"),
            fontsize=7,
            color="tab:orange",
            va="bottom",
            ha="left",
        )
    ax_power.set_ylabel("% of budget")
    ax_power.set_title(
        f"POLCA demo: {len(recording.workloads)} nodes, budget {recording.budget_w / 1000:.1f} kW"
    )
    ax_power.legend(loc="lower left", fontsize=8)
    ax_power.grid(alpha=0.3)

    stages = [s.stage_index if s.stage_index is not None else float("nan") for s in samples]
    ax_stage.step(t, stages, where="post", color="tab:purple")
    ax_stage.set_yticks(
        [line.index for line in recording.stages],
        [line.name for line in recording.stages],
        fontsize=7,
    )
    ax_stage.set_ylabel("stage")
    ax_stage.grid(alpha=0.3)

    # Workloads often move together (same tier): distinct dashes keep each line visible.
    styles = iter([("-", 2.5), ("--", 1.8), (":", 1.8), ("-.", 1.5)])
    for workload in sorted(recording.gpus_by_workload(), key=workload_order):
        linestyle, width = next(styles, ("-", 1.0))
        ax_gpus.step(
            t,
            [s.throttled.get(workload, 0) for s in samples],
            where="post",
            linestyle=linestyle,
            linewidth=width,
            label=WORKLOAD_TITLES.get(workload, workload),
        )
    ax_gpus.set_ylabel("throttled GPUs")
    ax_gpus.set_xlabel("seconds since the replay started")
    ax_gpus.legend(loc="upper left", fontsize=8)
    ax_gpus.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
