"""The control loop with fake telemetry, fake time and a recording API sink."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest

from polca.api.defaults import STAGE_NAMES
from polca.api.powerpolicy import LAST_APPLIED
from polca.control.plan import POLCA_PLAN
from polca_operator.endpoints import NodeAddresses
from polca_operator.fakes import (
    DOMAIN_LABEL,
    Harness,
    StaticView,
    domain_view,
    make_harness,
    policy_body,
)
from polca_operator.indexes import NodeReport
from polca_operator.loop import ControlLoop, CycleOutcome, run_loop, stage_from_status

BUDGET_W = 100_000.0


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


async def run_cycles(
    h: Harness,
    loop: ControlLoop,
    body: dict[str, Any],
    view: StaticView,
    *,
    util_pct: float | None,
    seconds: int,
) -> list[CycleOutcome]:
    """One cycle per second at a constant utilisation (None: no telemetry)."""
    h.reader.power_w = None if util_pct is None else util_pct * BUDGET_W / 100
    out = []
    for _ in range(seconds):
        out.append(await loop.cycle(body, view))
        h.clock.advance(1.0)
    return out


async def test_first_cycle_writes_the_resting_stage_and_conditions(harness: Harness) -> None:
    loop = harness.loop()
    harness.reader.power_w = 50_000
    outcome = await loop.cycle(policy_body(), domain_view(4))
    assert outcome.wrote_status
    status = harness.sink.last
    assert (status["stage"], status["stageIndex"], status["observedGeneration"]) == ("normal", 0, 1)
    assert status["nodeCount"] == 4
    assert status["gpuCount"] == 32
    assert conditions(status) == {
        "Ready": ("True", "Enforcing"),
        "Invalid": ("False", "Valid"),
        "TelemetryStale": ("False", "FreshPower"),
        "Throttling": ("False", "Normal"),
    }
    assert status["powerWatts"] == 50_000
    assert status["utilizationPercent"] == 50


async def test_load_up_escalates_one_stage_and_posts_the_figures(harness: Harness) -> None:
    loop = harness.loop()
    body, view = policy_body(), domain_view(4)
    await run_cycles(harness, loop, body, view, util_pct=50, seconds=3)
    outcomes = await run_cycles(harness, loop, body, view, util_pct=85, seconds=3)
    assert [o.decision.stage for o in outcomes if o.decision] == [1, 1, 1]
    assert harness.sink.last["stage"] == "stage1"
    assert conditions(harness.sink.last)["Throttling"] == ("True", "StageActive")
    type_, reason, message = harness.events.events[-1]
    assert (type_, reason) == ("Normal", "StageEscalated")
    assert message.startswith("normal → stage1")
    assert "85000 W of 100000 W (85.0%)" in message


async def test_steady_state_writes_only_the_slow_refresh(harness: Harness) -> None:
    loop = harness.loop()
    await run_cycles(harness, loop, policy_body(), domain_view(4), util_pct=50, seconds=60)
    # The first write, then one figure refresh per 15 s.
    assert len(harness.sink.patches) == 4
    assert all(p["stage"] == "normal" for _, p in harness.sink.patches)


async def _scenario_writes(nodes: int) -> tuple[int, int, float]:
    """Status writes, stage changes and seconds of a load-up-and-release scenario."""
    h = make_harness()
    loop = h.loop()
    body, view = policy_body(), domain_view(nodes)
    changes = 0
    seconds = 0
    for util in (50, 85, 92, 92, 92, 92, 92, 92, 50):
        outcomes = await run_cycles(h, loop, body, view, util_pct=util, seconds=10)
        changes += sum(1 for o in outcomes if o.decision and o.decision.changed)
        seconds += 10
    return len(h.sink.patches), changes, seconds


async def test_writes_do_not_grow_with_the_number_of_nodes() -> None:
    small = await _scenario_writes(10)
    large = await _scenario_writes(2000)
    assert small == large
    writes, changes, seconds = small
    assert changes == 3  # normal → stage1 → stage2 → stage3
    # One write per change, the first write, and at most one figure refresh per 15 s.
    assert changes < writes <= changes + 1 + seconds / 15


async def test_release_waits_for_the_hold_time(harness: Harness) -> None:
    loop = harness.loop()
    body, view = policy_body(), domain_view(2)
    await run_cycles(harness, loop, body, view, util_pct=85, seconds=2)
    outcomes = await run_cycles(harness, loop, body, view, util_pct=60, seconds=35)
    stages = [o.decision.stage for o in outcomes if o.decision]
    hold_s = int(POLCA_PLAN.hold_s)
    assert stages[:hold_s] == [1] * hold_s
    assert stages[-1] == 0
    assert harness.events.reasons()[-1] == "StageReleased"
    assert harness.sink.last["stage"] == "normal"


async def test_stale_telemetry_moves_to_the_failsafe_stage(harness: Harness) -> None:
    loop = harness.loop()
    body, view = policy_body(), domain_view(2)
    await run_cycles(harness, loop, body, view, util_pct=50, seconds=2)
    outcome = (await run_cycles(harness, loop, body, view, util_pct=None, seconds=1))[0]
    assert outcome.decision is not None
    failsafe = POLCA_PLAN.failsafe_stage
    assert outcome.decision.stage == failsafe
    assert harness.sink.last["stage"] == STAGE_NAMES[failsafe]
    assert harness.sink.last["powerWatts"] is None
    assert conditions(harness.sink.last)["TelemetryStale"] == ("True", "NoFreshPower")
    assert harness.events.events[-1][:2] == ("Warning", "StageEscalated")
    failsafe_metric = harness.metrics.registry.get_sample_value(
        "polca_domain_failsafe", {"policy": "row-a"}
    )
    assert failsafe_metric == 1.0


async def test_old_samples_count_as_stale(harness: Harness) -> None:
    loop = harness.loop()
    harness.reader.age_s = 60.0
    outcome = (await run_cycles(harness, loop, policy_body(), domain_view(1), util_pct=10,
                                seconds=1))[0]  # fmt: skip
    assert outcome.decision is not None
    assert outcome.decision.stage == POLCA_PLAN.failsafe_stage


async def test_restart_resumes_the_stage_from_status_and_never_passes_stage_0(
    harness: Harness,
) -> None:
    first = harness.loop()
    body, view = policy_body(), domain_view(3)
    await run_cycles(harness, first, body, view, util_pct=92, seconds=12)
    assert harness.sink.last["stage"] == "stage3"
    status_before = dict(harness.sink.last)
    writes_before = len(harness.sink.patches)

    restarted = harness.loop(status=status_before)
    outcomes = await run_cycles(harness, restarted, policy_body(status=status_before), view,
                                util_pct=50, seconds=5)  # fmt: skip
    assert [o.decision.stage for o in outcomes if o.decision] == [3] * 5
    new_patches = [p for _, p in harness.sink.patches[writes_before:]]
    assert new_patches, "the figures are refreshed after a restart"
    assert all(p["stage"] == "stage3" for p in new_patches)
    assert new_patches[0]["stageSince"] == status_before["stageSince"]
    assert "StageReleased" not in harness.events.reasons()[-1:]


def test_stage_from_status() -> None:
    plan = POLCA_PLAN
    assert stage_from_status({"stage": plan.stages[2].name, "stageIndex": 4}, plan) == 2
    assert stage_from_status({"stage": "renamed", "stageIndex": 3}, plan) == 3
    assert stage_from_status({"stage": "renamed", "stageIndex": 99}, plan) == plan.last_stage
    assert stage_from_status({}, plan) == 0
    assert stage_from_status(None, plan) == 0


async def test_policy_update_changes_thresholds_and_keeps_the_stage(harness: Harness) -> None:
    loop = harness.loop()
    view = domain_view(2)
    await run_cycles(harness, loop, policy_body(), view, util_pct=85, seconds=2)
    assert loop.stage == 1
    raised = policy_body(generation=2, stages=_stages(stage1=(95, 90)), failsafeStage="stage2")
    outcome = (await run_cycles(harness, loop, raised, view, util_pct=85, seconds=1))[0]
    assert outcome.wrote_status
    assert harness.sink.last["observedGeneration"] == 2
    assert harness.sink.last["stage"] == "stage1"  # carried over by name, not reset
    threshold = harness.metrics.registry.get_sample_value(
        "polca_domain_stage_threshold_watts", {"policy": "row-a", "stage": "stage1"}
    )
    assert threshold == pytest.approx(95_000)
    # 85% is now below stage1's release (90%): the domain steps down after the hold.
    outcomes = await run_cycles(harness, loop, raised, view, util_pct=85, seconds=31)
    assert outcomes[-1].decision is not None
    assert outcomes[-1].decision.stage == 0


def _stages(stage1: tuple[float, float]) -> list[dict[str, Any]]:
    trigger, release = stage1
    low = {"clockCeilingMHz": 1275}
    return [
        {"name": "normal"},
        {"name": "stage1", "triggerPercent": trigger, "releasePercent": release,
         "actions": {"idle": low, "low": low}},
        {"name": "stage2", "triggerPercent": 98, "releasePercent": 92,
         "actions": {"idle": {"clockCeilingMHz": 1110}, "low": {"clockCeilingMHz": 1110}}},
    ]  # fmt: skip


async def test_invalid_update_keeps_enforcing_the_last_valid_plan(harness: Harness) -> None:
    loop = harness.loop()
    view = domain_view(2)
    await run_cycles(harness, loop, policy_body(), view, util_pct=85, seconds=2)
    broken = policy_body(generation=2, failsafeStage="no-such-stage")
    outcomes = await run_cycles(harness, loop, broken, view, util_pct=92, seconds=5)
    assert outcomes[-1].decision is not None
    assert outcomes[-1].decision.stage == 2  # still escalating, with the old plan
    status = harness.sink.last
    assert conditions(status)["Ready"] == ("False", "InvalidSpec")
    assert conditions(status)["Invalid"] == ("True", "InvalidSpec")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert "failsafeStage" in ready["message"]
    assert ready["message"].endswith("enforcing the last valid spec")
    assert "InvalidSpec" in harness.events.reasons()


async def test_spec_that_never_parsed_leaves_the_stage_alone(harness: Harness) -> None:
    loop = harness.loop(status={"stage": "stage2", "stageIndex": 2})
    broken = policy_body(budget_w=-5)
    outcome = await loop.cycle(broken, domain_view(1))
    assert outcome.decision is None
    assert outcome.wrote_status
    patch = harness.sink.last
    assert "stage" not in patch
    assert "stageIndex" not in patch
    assert conditions(patch) == {
        "Ready": ("False", "InvalidSpec"),
        "Invalid": ("True", "InvalidSpec"),
    }
    assert not (await loop.cycle(broken, domain_view(1))).wrote_status  # no repeated writes


async def test_restart_reads_what_the_server_stored_and_keeps_its_stage(
    harness: Harness,
) -> None:
    # Safety rule 6: a near-integer (`kubectl patch`) and a newer CRD's field are read, not
    # taken for a broken or deleted policy: the loop continues from the stored stage.
    stages = _stages((80, 75))
    stages[1]["actions"]["low"] = {"clockCeilingMHz": 1275.000001, "minClockMHz": 900}
    stored = policy_body(stages=stages, failsafeStage="stage1", futureKnob={"on": True})
    loop = harness.loop(status={"stage": "stage2", "stageIndex": 2})
    outcome = await loop.cycle(stored, domain_view(1))
    assert outcome.decision is not None
    assert loop.stage == 2
    assert conditions(harness.sink.last)["Ready"] == ("True", "Enforcing")


async def test_an_annotation_only_fix_is_seen_without_a_new_generation(
    harness: Harness,
) -> None:
    loop = harness.loop(status={"stage": "stage1", "stageIndex": 1})
    written = {"spec": {"nodeSelector": {"matchLabels": {DOMAIN_LABEL: "row-a", "row": None}}}}
    body = policy_body()
    body["metadata"]["annotations"] = {LAST_APPLIED: json.dumps(written)}
    assert (await loop.cycle(body, domain_view(1))).decision is None
    assert "kubectl apply dropped row" in json.dumps(harness.sink.last)
    # `kubectl apply` of the manifest without the key: only the annotation changes.
    body["metadata"]["annotations"] = {LAST_APPLIED: json.dumps(policy_body())}
    assert (await loop.cycle(body, domain_view(1))).decision is not None
    assert loop.stage is not None
    assert loop.stage >= 1  # continued from the stored stage, never from 0


async def test_no_nodes_selected_is_not_ready_but_valid(harness: Harness) -> None:
    loop = harness.loop()
    view = StaticView(labels={"gpu-1": {DOMAIN_LABEL: "row-b"}})
    await loop.cycle(policy_body(), view)
    assert conditions(harness.sink.last)["Ready"] == ("False", "NoNodesSelected")
    assert conditions(harness.sink.last)["Invalid"] == ("False", "Valid")


async def test_failed_status_write_is_retried_next_cycle(harness: Harness) -> None:
    loop = harness.loop()
    body, view = policy_body(), domain_view(1)
    harness.sink.fail = True
    assert not (await loop.cycle(body, view)).wrote_status
    harness.sink.fail = False
    assert (await loop.cycle(body, view)).wrote_status


async def test_query_carries_endpoints_and_overhead(harness: Harness) -> None:
    loop = harness.loop()
    view = domain_view(3)
    view.labels["other"] = {DOMAIN_LABEL: "row-b"}
    view.labels["cpu-node"] = {DOMAIN_LABEL: "row-a"}
    body = policy_body(nodePower={"source": "gpu", "overheadWatts": 500})
    await loop.cycle(body, view)
    await loop.cycle(body, view)
    first, second = harness.reader.queries
    assert first is second  # nothing changed: the domain is not rebuilt
    assert {n.name for n in first.nodes} == {"node-00000", "node-00001", "node-00002", "cpu-node"}
    assert [n.reporting for n in first.nodes if n.name == "cpu-node"] == [False]
    assert set(first.metrics_urls) == {"node-00000", "node-00001", "node-00002"}
    assert first.overhead_w == 500
    view.labels["cpu-node"] = {DOMAIN_LABEL: "row-b"}
    view.version += 1
    await loop.cycle(body, view)
    assert len(harness.reader.queries[-1].nodes) == 3


async def test_only_the_nodes_own_endpoints_are_scraped(harness: Harness) -> None:
    """A NodePowerState status is written by whoever can write it: the operator scrapes only a
    URL on the node's own address (or pod CIDR) and the daemon port, never metadata services."""
    view = domain_view(4)
    urls = {
        "node-00000": "http://10.0.0.7:9402/metrics",  # the node's InternalIP
        "node-00001": "http://10.244.1.5:9402/metrics",  # a pod IP inside its pod CIDR
        "node-00002": "http://169.254.169.254:9402/latest/meta-data",  # cloud metadata
        "node-00003": "http://10.0.0.7:9402/metrics",  # node-00000's address, not its own
    }
    for name, url in urls.items():
        view.node_reports[name] = NodeReport(metrics_url=url, gpu_count=8)
        view.node_addresses[name] = NodeAddresses(
            frozenset({f"10.0.0.{7 + int(name[-1])}"}), (f"10.244.{name[-1]}.0/24",)
        )
    loop = ControlLoop("row-a", replace(harness.deps, daemon_ports=frozenset({9402})),
                       harness.events)  # fmt: skip
    await loop.cycle(policy_body(), view)
    assert set(harness.reader.queries[-1].metrics_urls) == {"node-00000", "node-00001"}


async def test_run_loop_stops_and_forgets_the_policy(harness: Harness) -> None:
    class Flag:
        def __init__(self) -> None:
            self.event = asyncio.Event()

        def __bool__(self) -> bool:
            return self.event.is_set()

        async def wait(self, timeout: float | None = None) -> object:
            harness.clock.advance(timeout or 0)
            self.event.set()  # stop after the first cycle
            return self

    loop = harness.loop()
    harness.reader.power_w = 10_000
    await run_loop(loop, policy_body(), domain_view(1), Flag())
    assert harness.sink.patches  # it ran a cycle
    assert (
        harness.metrics.registry.get_sample_value("polca_domain_stage", {"policy": "row-a"}) is None
    )
    assert harness.health.problems() == []
