"""The live terminal view: domain power against the budget and the stage thresholds, the stage,
GPUs throttled per workload, recent Kubernetes events, and how to look from another terminal.

Pure rendering from a `Recording` (rich renderables); `run.py` refreshes it once per sample.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from polca_testbed.demo.recording import Recording
from polca_testbed.demo.summary import WORKLOAD_TITLES, workload_order

__all__ = ["ViewInfo", "power_bar", "render", "render_text", "sparkline"]

SPARK_CHARS = "▁▂▃▄▅▆▇█"
BAR_MAX_PCT = 120.0
SPARK_LOW_PCT, SPARK_HIGH_PCT = 70.0, 105.0  # where the stages act
EVENTS_SHOWN = 6


@dataclass(frozen=True, slots=True)
class ViewInfo:
    """What the view says about the run besides the recording."""

    title: str
    kubeconfig: Path
    duration_s: float
    speedup: float
    workload_tiers: dict[str, str]  # workload → policy tier it is meant to land in


def sparkline(values: Sequence[float | None], *, low: float, high: float) -> str:
    """One character per value between `low` and `high` (clipped); a gap for None."""
    span = max(high - low, 1e-9)
    out = []
    for value in values:
        if value is None:
            out.append(" ")
            continue
        level = (min(max(value, low), high) - low) / span
        out.append(SPARK_CHARS[round(level * (len(SPARK_CHARS) - 1))])
    return "".join(out)


def power_bar(pct: float | None, triggers: Sequence[tuple[str, float]], width: int = 60) -> Text:
    """A bar from 0 to 120% of the budget, with a mark at each trigger and at 100%."""
    cells = [" "] * width
    styles = [""] * width
    filled = 0 if pct is None else round(min(max(pct, 0.0), BAR_MAX_PCT) / BAR_MAX_PCT * width)
    color = "green"
    if pct is not None and pct >= 100.0:
        color = "bold red"
    elif pct is not None and any(pct >= trigger for _, trigger in triggers):
        color = "yellow"
    for i in range(filled):
        cells[i], styles[i] = "█", color
    for _, trigger in [*triggers, ("budget", 100.0)]:
        i = min(width - 1, round(trigger / BAR_MAX_PCT * width))
        cells[i] = "┃" if trigger >= 100.0 else "│"
        styles[i] = "bold red" if trigger >= 100.0 else "magenta"
    text = Text()
    for cell, style in zip(cells, styles, strict=True):
        text.append(cell, style=style or None)
    return text


def _power_panel(recording: Recording, width: int) -> Panel:
    last = recording.samples[-1] if recording.samples else None
    triggers = [
        (line.name, line.trigger_pct)
        for line in recording.stages
        if line.trigger_pct is not None and line.trigger_pct < BAR_MAX_PCT
    ]
    pct = recording.percent(last.power_w) if last and last.power_w is not None else None
    lines = Text()
    lines.append_text(power_bar(pct, triggers, width))
    lines.append("\n")
    scale = Text(" " * width, style="dim")
    for name, trigger in [*triggers, ("100%", 100.0)]:
        i = min(width - 1, round(trigger / BAR_MAX_PCT * width))
        label = f"{trigger:.0f}" if name != "100%" else "100"
        scale = scale[:i] + Text(label, style="magenta") + scale[i + len(label) :]
    lines.append_text(scale[:width])
    lines.append("\n")
    if last is None:
        lines.append("waiting for the first sample…", style="dim")
    else:
        power = (
            "n/a"
            if last.power_w is None
            else f"{last.power_w / 1000:7.1f} kW = {pct:5.1f}% of budget"
        )
        lines.append(f"domain power {power}", style="bold")
        lines.append(
            f"   (uncapped load: {recording.percent(last.uncapped_w):5.1f}%)\n", style="dim"
        )
        history = recording.samples[-width:]
        lines.append(
            sparkline(
                [recording.percent(s.power_w) if s.power_w is not None else None for s in history],
                low=SPARK_LOW_PCT,
                high=SPARK_HIGH_PCT,
            ),
            style="cyan",
        )
        lines.append(
            f"  last {len(history)} samples, {SPARK_LOW_PCT:.0f}–{SPARK_HIGH_PCT:.0f}%", style="dim"
        )
    title = f"domain power, % of the {recording.budget_w / 1000:.1f} kW budget"
    legend = "│ stage triggers   ┃ budget (100%)"
    return Panel(lines, title=title, title_align="left", subtitle=legend, subtitle_align="right")


def _stage_panel(recording: Recording) -> Panel:
    last = recording.samples[-1] if recording.samples else None
    text = Text()
    if last is None or last.stage_index is None:
        text.append("no decision yet (the operator has not written the policy status)", style="dim")
    else:
        since = last.t_s
        for sample in reversed(recording.samples):
            if sample.stage_index != last.stage_index:
                break
            since = sample.t_s
        style = "green" if last.stage_index == 0 else "bold yellow"
        text.append(f"{last.stage or recording.stage_name(last.stage_index)}", style=style)
        text.append(
            f"  (stage {last.stage_index} of {len(recording.stages) - 1}, "
            f"for {last.t_s - since:.0f} s)"
        )
        if last.operator_power_w is not None:
            # The operator refreshes status.powerWatts slowly between decisions.
            operator_pct = recording.percent(last.operator_power_w)
            text.append(f"   status.powerWatts: {operator_pct:5.1f}%", style="dim")
    return Panel(text, title="stage (PowerPolicy status)", title_align="left")


def _gpu_table(recording: Recording, info: ViewInfo) -> Table:
    last = recording.samples[-1] if recording.samples else None
    table = Table(title="GPUs per workload", title_justify="left", expand=False)
    table.add_column("workload")
    table.add_column("tier", justify="center")
    table.add_column("GPUs", justify="right")
    table.add_column("throttled", justify="right")
    table.add_column("lowest ceiling", justify="right")
    gpus = recording.gpus_by_workload()
    for workload in sorted(gpus, key=workload_order):
        throttled = last.throttled.get(workload, 0) if last else 0
        ceiling = last.lowest_ceiling_mhz.get(workload) if last else None
        table.add_row(
            WORKLOAD_TITLES.get(workload, workload),
            info.workload_tiers.get(workload, "?"),
            str(gpus[workload]),
            Text(str(throttled), style="bold yellow" if throttled else "green"),
            "—" if ceiling is None else f"{ceiling:.0f} MHz",
        )
    return table


def _events_table(recording: Recording) -> Table:
    table = Table(title="recent Kubernetes events", title_justify="left", expand=True)
    table.add_column("time", no_wrap=True)
    table.add_column("object", no_wrap=True)
    table.add_column("reason", no_wrap=True)
    table.add_column("message", overflow="ellipsis", no_wrap=True, ratio=1)
    for event in recording.events[-EVENTS_SHOWN:]:
        clock = event.time[11:19] if len(event.time) >= 19 else event.time
        style = "red" if event.type == "Warning" else ""
        table.add_row(clock, event.object, Text(event.reason, style=style), event.message)
    return table


def render(recording: Recording, info: ViewInfo, *, width: int = 60) -> RenderableType:
    """The whole view for the current state of the recording."""
    elapsed = recording.samples[-1].t_s if recording.samples else 0.0
    header = Text()
    header.append(info.title, style="bold")
    header.append(
        f"\nreplay {elapsed:4.0f}/{info.duration_s:.0f} s  (trace time "
        f"{elapsed * info.speedup / 60:5.1f} min at ×{info.speedup:g})",
        style="dim",
    )
    footer = Text()
    footer.append("in another terminal:\n", style="dim")
    footer.append(
        f"  export KUBECONFIG={info.kubeconfig}\n  kubectl get pp,nps -o wide\n", style="bold cyan"
    )
    footer.append("Ctrl-C ends the run early (summary, plot and clean shutdown).", style="dim")
    return Group(
        header,
        _power_panel(recording, width),
        _stage_panel(recording),
        _gpu_table(recording, info),
        _events_table(recording),
        footer,
    )


def render_text(recording: Recording, info: ViewInfo, *, columns: int = 100) -> str:
    """The view as plain text (the last frame is saved next to the summary)."""
    console = Console(file=io.StringIO(), width=columns, color_system=None, record=True)
    console.print(render(recording, info))
    return console.export_text()
