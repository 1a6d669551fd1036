"""The end-of-run figures, the table, the plot and the live view, from hand-made recordings."""

from __future__ import annotations

from pathlib import Path

import pytest

from polca_testbed.demo.policy import StageLine
from polca_testbed.demo.recording import DemoEvent, Recording, Sample
from polca_testbed.demo.summary import (
    excursions,
    plot_run,
    summarize,
    summary_text,
    trigger_names,
)
from polca_testbed.demo.view import ViewInfo, power_bar, render_text, sparkline

STAGES = (
    StageLine(0, "normal", None),
    StageLine(1, "stage1", 80.0),
    StageLine(2, "stage2", 89.0),
    StageLine(3, "stage3", 89.0),
    StageLine(4, "brake", 100.0),
)
BUDGET_W = 10_000.0


def sample(
    t_s: float,
    pct: float | None,
    stage: int | None,
    *,
    uncapped_pct: float = 95.0,
    low: int = 0,
    high: int = 0,
) -> Sample:
    return Sample(
        t_s=t_s,
        power_w=None if pct is None else pct * BUDGET_W / 100.0,
        uncapped_w=uncapped_pct * BUDGET_W / 100.0,
        stage_index=stage,
        stage=None if stage is None else STAGES[stage].name,
        operator_power_w=None,
        throttled={"high": high, "low": low},
        lowest_ceiling_mhz={"low": 1110.0} if low else {},
        tier_throttled={"low": low} if low else {},
    )


def recording(*samples: Sample) -> Recording:
    return Recording(
        budget_w=BUDGET_W,
        stages=STAGES,
        workloads={"n1": "high", "n2": "low"},
        gpus_per_node=4,
        interval_s=1.0,
        samples=list(samples),
    )


RUN = recording(
    sample(0.0, None, None, uncapped_pct=70.0),
    sample(1.0, 70.0, 0, uncapped_pct=70.0),
    sample(2.0, 85.0, 1, uncapped_pct=101.0, low=4),
    sample(3.0, 90.0, 2, uncapped_pct=102.0, low=4),
    sample(4.0, 86.0, 3, uncapped_pct=99.0, low=4, high=4),
    sample(6.0, 83.0, 2, uncapped_pct=103.0, low=4),
)


class TestExcursions:
    def test_counts_runs_at_or_above_the_budget(self) -> None:
        result = excursions([99.0, 100.0, 104.0, 98.0, None, 101.0], [1.0] * 6)
        assert result.count == 2
        assert result.seconds == pytest.approx(3.0)
        assert result.peak_pct == 104.0

    def test_mean_is_time_weighted_and_skips_gaps(self) -> None:
        result = excursions([80.0, None, 90.0], [1.0, 5.0, 3.0])
        assert result.mean_pct == pytest.approx((80.0 + 270.0) / 4.0)
        assert result.count == 0

    def test_nothing_recorded(self) -> None:
        assert excursions([], []).count == 0


class TestSummary:
    def test_stage_time_with_the_time_before_the_first_decision(self) -> None:
        summary = summarize(RUN)
        seconds = dict(summary.stage_seconds)
        assert seconds == {
            "normal": 1.0,
            "stage1": 1.0,
            "stage2": 2.0,
            "stage3": 2.0,
            "brake": 0.0,
            "unknown": 1.0,
        }
        assert summary.duration_s == pytest.approx(7.0)
        assert summary.highest_stage == "stage3"
        assert summary.stage_changes == 4

    def test_power_with_the_policy_and_without(self) -> None:
        summary = summarize(RUN)
        assert summary.measured.count == 0
        assert summary.measured.peak_pct == pytest.approx(90.0)
        assert summary.uncapped.count == 2
        assert summary.uncapped.seconds == pytest.approx(3.0)  # 2 s and 3 s, not 4 s (99%)

    def test_throttled_gpu_seconds_per_workload(self) -> None:
        throttling = dict(summarize(RUN).throttling)
        assert throttling["low"].throttled_gpu_s == pytest.approx(4 * 5.0)
        assert throttling["low"].first_throttled_s == 2.0
        assert throttling["low"].share_pct == pytest.approx(100.0 * 20.0 / (4 * 7.0))
        assert throttling["high"].throttled_gpu_s == pytest.approx(4 * 2.0)
        assert throttling["high"].first_throttled_s == 4.0
        assert list(dict(summarize(RUN).throttling)) == ["high", "low"]

    def test_table_text_lists_every_figure(self) -> None:
        text = summary_text(summarize(RUN))
        for needle in (
            "time in stage3",
            "brake-level excursions with POLCA",
            "uncapped (no policy)",
            "high-priority inference",
            "first at 2 s",
        ):
            assert needle in text

    def test_triggers_shared_by_stages_are_named_together(self) -> None:
        assert trigger_names(RUN) == {80.0: ["stage1"], 89.0: ["stage2", "stage3"]}

    def test_plot_is_a_png(self, tmp_path: Path) -> None:
        path = plot_run(RUN, tmp_path / "plots" / "demo.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000


class TestView:
    INFO = ViewInfo(
        title="POLCA demo test",
        kubeconfig=Path("/tmp/kc"),
        duration_s=60.0,
        speedup=20.0,
        workload_tiers={"high": "high", "low": "low"},
    )

    def test_sparkline_scales_and_clips(self) -> None:
        assert sparkline([0.0, 50.0, 100.0, 200.0, None], low=0.0, high=100.0) == "▁▅██ "

    def test_power_bar_fills_to_the_power_and_marks_triggers(self) -> None:
        bar = power_bar(60.0, [("stage1", 80.0)], width=12).plain
        assert bar == "██████  │ ┃ "
        assert power_bar(None, [], width=12).plain.strip() == "┃"

    def test_view_shows_power_stage_gpus_events_and_kubeconfig(self) -> None:
        run = recording(*RUN.samples)
        run.set_events(
            [
                DemoEvent(
                    "2026-01-01T10:00:03Z",
                    "Normal",
                    "StageEscalated",
                    "PowerPolicy/demo",
                    "stage1 → stage2",
                )
            ]
        )
        text = render_text(run, self.INFO)
        assert "83.0% of budget" in text
        assert "stage2" in text
        assert "(stage 2 of 4, for 0 s)" in text
        assert "low-priority inference" in text
        assert "1110 MHz" in text
        assert "10:00:03" in text
        assert "StageEscalated" in text
        assert "export KUBECONFIG=/tmp/kc\n" in text
        assert "kubectl get pp,nps -o wide" in text

    def test_view_before_the_first_sample(self) -> None:
        text = render_text(recording(), self.INFO)
        assert "waiting for the first sample" in text
        assert "no decision yet" in text
