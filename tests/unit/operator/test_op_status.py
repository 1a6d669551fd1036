"""The status writer: what is written when, the conditions, and the stage-change events."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from polca.api.semantic import Problem
from polca_operator.fakes import FakeClock, RecordingEvents, RecordingSink
from polca_operator.status import CycleReport, StatusWriter, event_message

BASE = CycleReport(
    generation=3,
    stage_index=0,
    stage_name="normal",
    last_stage_index=4,
    changed=False,
    previous_stage_index=0,
    previous_stage_name="normal",
    reason="power 50.0%: steady",
    stale=False,
    budget_w=10_000.0,
    staleness_s=10.0,
    failsafe_stage_name="stage2",
    power_w=5_000.0,
    node_count=2,
    gpu_count=16,
)


def writer(clock: FakeClock, sink: RecordingSink, events: RecordingEvents) -> StatusWriter:
    return StatusWriter(
        "row-a",
        sink,
        events,
        monotonic=clock.monotonic,
        wall_clock=lambda: datetime.fromtimestamp(1e9 + clock.now_s, UTC),
    )


async def test_figures_are_refreshed_at_most_every_15_s() -> None:
    clock, sink, events = FakeClock(), RecordingSink(), RecordingEvents()
    w = writer(clock, sink, events)
    written = []
    for second in range(46):
        clock.now_s = second
        report = replace(BASE, power_w=5_000.0 + second)  # figures change every cycle
        written.append(await w.report(report))
    assert [s for s, wrote in enumerate(written) if wrote] == [0, 15, 30, 45]


async def test_unchanged_figures_are_not_rewritten() -> None:
    clock, sink, events = FakeClock(), RecordingSink(), RecordingEvents()
    w = writer(clock, sink, events)
    for second in range(40):
        clock.now_s = second
        await w.report(BASE)
    assert len(sink.patches) == 1


async def test_stage_change_is_written_at_once_with_an_event() -> None:
    clock, sink, events = FakeClock(), RecordingSink(), RecordingEvents()
    w = writer(clock, sink, events)
    await w.report(BASE)
    clock.now_s = 1
    up = replace(
        BASE, stage_index=1, stage_name="stage1", changed=True, power_w=8_200.0,
        reason="power 82.0% ≥ 80% trigger",
    )  # fmt: skip
    assert await w.report(up)
    assert sink.last["stage"] == "stage1"
    assert sink.last["stageSince"] == "2001-09-09T01:46:41Z"
    assert events.events == [
        ("Normal", "StageEscalated",
         "normal → stage1: power 82.0% ≥ 80% trigger; domain power 8200 W of 10000 W (82.0%)"),
    ]  # fmt: skip
    clock.now_s = 2
    steady = replace(up, changed=False, previous_stage_index=1, previous_stage_name="stage1")
    await w.report(steady)
    assert sink.last["stageSince"] == "2001-09-09T01:46:41Z"  # kept while the stage holds


async def test_brake_and_failsafe_events_are_warnings() -> None:
    events = RecordingEvents()
    w = writer(FakeClock(), RecordingSink(), events)
    brake = replace(BASE, stage_index=4, stage_name="brake", changed=True, power_w=10_100.0)
    await w.report(brake)
    stale = replace(
        BASE, stage_index=2, stage_name="stage2", changed=True, stale=True, power_w=None,
        reason="telemetry stale (missing): failsafe",
    )  # fmt: skip
    await w.report(stale)
    assert [e[0] for e in events.events] == ["Warning", "Warning"]
    assert "domain power unknown" in events.events[-1][2]


async def test_condition_transition_time_moves_only_with_its_status() -> None:
    clock, sink, events = FakeClock(), RecordingSink(), RecordingEvents()
    w = writer(clock, sink, events)
    await w.report(BASE)
    first = {c["type"]: c["lastTransitionTime"] for c in sink.last["conditions"]}
    clock.now_s = 20
    await w.report(replace(BASE, stage_index=1, stage_name="stage1", changed=True))
    second = {c["type"]: c["lastTransitionTime"] for c in sink.last["conditions"]}
    assert second["Ready"] == first["Ready"]
    assert second["Throttling"] != first["Throttling"]


async def test_problems_set_ready_false_and_post_once() -> None:
    events = RecordingEvents()
    sink = RecordingSink()
    w = writer(FakeClock(), sink, events)
    await w.report(BASE)
    problem = Problem("OverheadExceedsBudget", "overhead too high")
    await w.report(replace(BASE, problems=(problem,)))
    await w.report(replace(BASE, problems=(problem,)))
    ready = next(c for c in sink.last["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "OverheadExceedsBudget")
    assert events.reasons() == ["OverheadExceedsBudget"]
    await w.report(BASE)
    assert events.reasons() == ["OverheadExceedsBudget", "SpecAccepted"]


def test_event_message_without_power() -> None:
    report = replace(BASE, power_w=None, previous_stage_name="stage1", stage_name="stage2")
    assert event_message(report) == (
        "stage1 → stage2: power 50.0%: steady; domain power unknown (budget 10000 W)"
    )
