"""The daemon end to end in one process (fake GPUs, no API server): restart, restore, rejected
writes, the guard, dry run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from polca.api.powerpolicy import PowerPolicy
from polca.power.model import PhaseDemand
from polca_node.daemon import DaemonConfig, NodeDaemon
from polca_node.exporter import NodeMetrics
from polca_node.gpu.fake_nvml import SETTER_FUNCTIONS, FakeHandle, FakeNvml, ManualClock
from polca_node.gpu.load import ConstantLoad
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.kube_client import KubeClient
from polca_node.node_status import PreviousRecord, build_status, previous_record
from polca_node.policies import Mode
from polca_testbed.default_clocks import applied_ceiling_mhz
from polca_testbed.stub_kube import StubKube

PolicyFactory = Callable[..., PowerPolicy]
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
NODE = "node-a"
# What the default (GPU-relative) policy's stages lock the fake H100s at.
LOW1 = applied_ceiling_mhz("stage1", "low", "H100-SXM")
LOW2 = applied_ceiling_mhz("stage2", "low", "H100-SXM")
TRAINING_POD = {
    "metadata": {
        "namespace": "ml", "name": "train-0", "creationTimestamp": "2025-01-01T00:00:00Z",
        "labels": {"training.kubeflow.org/job-name": "j"},
        "annotations": {"polca.dev/fake-gpus": "1"},
    },
    "spec": {"nodeName": NODE},
}  # fmt: skip


def observe(daemon: NodeDaemon, *policies: PowerPolicy, row: str = "a") -> None:
    daemon.observed.replace_nodes([{"metadata": {"name": NODE, "labels": {"polca.dev/row": row}}}])
    daemon.observed.replace_policies([p.to_wire() for p in policies])
    daemon.observed.replace_pods([TRAINING_POD])


def mode(daemon: NodeDaemon) -> Mode:
    # A function, not the attribute: each reconcile changes it under mypy's narrowing.
    return daemon.decision.mode


def ceilings(fake: FakeNvml) -> list[int | None]:
    return [gpu.clock_ceiling_mhz for gpu in fake.gpus]


def setter_calls(fake: FakeNvml) -> dict[str, int]:
    return {name: fake.calls[name] for name in SETTER_FUNCTIONS}


def counter(daemon: NodeDaemon, name: str, **labels: str) -> float:
    text = daemon.metrics.exposition().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def record_of(daemon: NodeDaemon) -> PreviousRecord:
    """What the daemon's NodePowerState holds (as a restarted daemon reads it back)."""
    status = build_status(daemon.build_status_inputs())
    return previous_record({"metadata": {"uid": "u"}, "status": status.to_wire()})


async def test_restart_holds_settings_until_the_policies_are_known(
    started: Callable[[], NodeDaemon], h100_fake: FakeNvml, make_policy: PolicyFactory
) -> None:
    first = started()
    observe(first, make_policy(stage="stage2"))
    first.recall(PreviousRecord())
    await first.reconcile()
    assert mode(first) is Mode.ENFORCE
    assert ceilings(h100_fake) == [LOW2] * 4  # GPU 0: training (low); 1-3: idle
    record = record_of(first)
    assert record.managed
    assert record.ceilings_mhz == dict.fromkeys(range(4), LOW2)

    # The process exits and a new one starts over the same GPUs.
    before = setter_calls(h100_fake)
    second = started()
    await second.reconcile()
    assert mode(second) is Mode.HOLD
    observe(second, make_policy(stage="stage2"))
    await second.reconcile()
    assert mode(second) is Mode.HOLD  # our previous NodePowerState is not read yet
    assert setter_calls(h100_fake) == before
    second.recall(record)
    await second.reconcile()
    assert mode(second) is Mode.ENFORCE
    assert ceilings(h100_fake) == [LOW2] * 4
    assert (
        h100_fake.calls["nvmlDeviceResetGpuLockedClocks"]
        == before["nvmlDeviceResetGpuLockedClocks"]
    )
    status = build_status(second.build_status_inputs())
    assert [g.clock_ceiling_mhz for g in status.gpus or ()] == [LOW2] * 4


async def test_restart_while_the_policy_has_no_decision_only_tightens(
    started: Callable[[], NodeDaemon], h100_fake: FakeNvml, make_policy: PolicyFactory
) -> None:
    first = started()
    observe(first, make_policy(stage="stage2"))
    first.recall(PreviousRecord())
    await first.reconcile()
    record = record_of(first)
    second = started()
    observe(second, make_policy(stage=None))  # e.g. the status was wiped
    second.recall(record)
    await second.reconcile()
    assert mode(second) is Mode.TIGHTEN
    assert ceilings(h100_fake) == [LOW2] * 4
    assert record_of(second).managed  # still remembered as managed


@pytest.mark.parametrize("how", ["label removed", "policy deleted"])
async def test_defaults_restored_only_on_leaving_every_policy(
    started: Callable[[], NodeDaemon],
    h100_fake: FakeNvml,
    kube: StubKube,
    make_policy: PolicyFactory,
    how: str,
) -> None:
    daemon = started()
    row_a, hall = make_policy("row-a", stage="stage2"), make_policy("hall", stage="stage1")
    observe(daemon, row_a, hall)
    daemon.recall(PreviousRecord())
    h100_fake.nvmlDeviceSetPowerManagementLimit(FakeHandle(0), 400_000)
    await daemon.reconcile()
    assert ceilings(h100_fake) == [LOW2] * 4

    # Leaving one of two policies is no restore: the other one still applies.
    daemon.observed.apply_policy("DELETED", row_a.to_wire())
    await daemon.reconcile()
    assert mode(daemon) is Mode.ENFORCE
    assert ceilings(h100_fake) == [LOW1] * 4
    assert kube.events() == []

    if how == "label removed":
        daemon.observed.apply_node("MODIFIED", {"metadata": {"name": NODE, "labels": {}}})
    else:
        daemon.observed.apply_policy("DELETED", hall.to_wire())
    result = await daemon.reconcile()
    await daemon.flush_background()
    assert mode(daemon) is Mode.RESTORE
    assert result.complete
    assert ceilings(h100_fake) == [None] * 4
    assert [g.power_limit_mw for g in h100_fake.gpus] == [700_000] * 4
    assert kube.events() == [("DefaultsRestored", "Normal")]
    status = build_status(daemon.build_status_inputs())
    restored = status.condition("DefaultsRestored")
    assert restored is not None
    assert restored.status == "True"
    assert not status.policies

    await daemon.reconcile()
    assert mode(daemon) is Mode.UNMANAGED
    assert kube.events() == [("DefaultsRestored", "Normal")]


async def test_rejected_write_is_a_condition_a_metric_and_one_event(
    started: Callable[[], NodeDaemon],
    h100_fake: FakeNvml,
    kube: StubKube,
    make_policy: PolicyFactory,
) -> None:
    daemon = started()
    observe(daemon, make_policy(stage="stage2"))
    daemon.recall(PreviousRecord())
    h100_fake.deny_setters(gpu_index=2)
    await daemon.reconcile()
    await daemon.reconcile()  # retried, still rejected
    await daemon.flush_background()
    assert ceilings(h100_fake) == [LOW2, LOW2, None, LOW2]
    failures = counter(daemon, "polca_gpu_write_failures_total", gpu="2", reason="NoPermission")
    assert failures == 2.0
    status = build_status(daemon.build_status_inputs())
    condition = status.condition("GpuWriteFailed")
    assert condition is not None
    assert condition.status == "True"
    assert kube.events() == [("GpuWriteFailed", "Warning")]


# A guard that acts at 1200 W and lets go below 1100 W.
GUARD = {"nodeBudgetWatts": 1000, "triggerPercent": 120, "releasePercent": 110}


async def running(daemon: NodeDaemon, policy: PowerPolicy) -> NodeDaemon:
    """`daemon` (with no previous record) after its first reconcile under `policy`."""
    observe(daemon, policy)
    daemon.recall(PreviousRecord())
    await daemon.reconcile()
    return daemon


async def test_guard_throttles_in_tier_order_and_lets_go_with_hysteresis(
    started: Callable[[], NodeDaemon],
    h100_fake: FakeNvml,
    fake_clock: ManualClock,
    make_policy: PolicyFactory,
) -> None:
    daemon = await running(started(), make_policy(stage="normal", guard=GUARD))
    assert ceilings(h100_fake) == [None] * 4

    # Prefill: 4 x 700 W; with the idle-tier GPUs at stage 2's ceiling still well over 1200 W.
    h100_fake.load = ConstantLoad(PhaseDemand(prefill_frac=1.0))
    fake_clock.advance(1.1)  # GPUs report power averaged over the last second
    await daemon.sample()
    await daemon.reconcile()
    assert ceilings(h100_fake) == [None, LOW2, LOW2, LOW2]  # idle GPUs first
    fake_clock.advance(0.5)
    await daemon.sample()
    await daemon.reconcile()
    assert ceilings(h100_fake) == [LOW2] * 4  # then the training GPU
    assert counter(daemon, "polca_guard_activations_total", policy="row-a") == 1.0

    h100_fake.load = ConstantLoad()  # idle: far below the 1100 W release level
    levels = []
    for _ in range(12):
        fake_clock.advance(1.0)
        await daemon.sample()
        await daemon.reconcile()
        levels.append(daemon.guard_outcomes()["row-a"].level)
    assert levels[:4] == [2, 2, 2, 2]  # held for the hysteresis period
    assert levels[-1] == 0
    assert ceilings(h100_fake) == [None] * 4


def unreadable(policy: PowerPolicy) -> dict[str, Any]:
    """`policy` as a newer CRD may store it: a budget beyond this version's bound."""
    wire = policy.to_wire()
    wire["spec"]["budgetWatts"] = 5e12
    return wire


async def test_an_unreadable_version_keeps_the_guard_and_a_restart_holds(
    started: Callable[[], NodeDaemon],
    h100_fake: FakeNvml,
    fake_clock: ManualClock,
    make_policy: PolicyFactory,
    kube: StubKube,
) -> None:
    # Safety rule 6 (issue 12, finding 1): unknown, never absent.
    good = make_policy(stage="normal", guard=GUARD)
    daemon = await running(started(), good)
    daemon.observed.apply_policy("MODIFIED", unreadable(good))
    await daemon.reconcile()
    assert mode(daemon) is Mode.TIGHTEN  # its last good version still counts
    assert counter(daemon, "polca_unreadable_policies") == 1.0

    # The guard of the last good version keeps working.
    h100_fake.load = ConstantLoad(PhaseDemand(prefill_frac=1.0))
    fake_clock.advance(0.2)  # the instant power field the guard reads refreshes every 100 ms
    await daemon.sample()
    await daemon.reconcile()
    assert ceilings(h100_fake) == [None, LOW2, LOW2, LOW2]
    record = record_of(daemon)

    # A restart with only the unreadable version: hold everything, never restore.
    before = setter_calls(h100_fake)
    second = started()
    second.observed.replace_nodes([{"metadata": {"name": NODE, "labels": {"polca.dev/row": "a"}}}])
    second.observed.replace_policies([unreadable(good)])
    second.observed.replace_pods([TRAINING_POD])
    second.recall(record)
    await second.reconcile()
    await second.flush_background()
    assert mode(second) is Mode.HOLD
    assert setter_calls(h100_fake) == before
    assert ceilings(h100_fake) == [None, LOW2, LOW2, LOW2]
    assert ("PolicyUnreadable", "Warning") in kube.events()
    assert record_of(second).managed  # the record survives for a later restore
    condition = build_status(second.build_status_inputs()).condition("PolicyUnreadable")
    assert condition is not None
    assert condition.status == "True"


async def test_dry_run_counts_what_it_would_do_and_writes_nothing(
    started: Callable[[], NodeDaemon], h100_fake: FakeNvml, make_policy: PolicyFactory
) -> None:
    daemon = started()
    observe(daemon, make_policy(stage="stage2", dry_run=True))
    daemon.recall(PreviousRecord())
    await daemon.reconcile()
    await daemon.reconcile()
    assert mode(daemon) is Mode.UNMANAGED
    assert setter_calls(h100_fake) == dict.fromkeys(SETTER_FUNCTIONS, 0)
    assert counter(daemon, "polca_gpu_actions_total", dry_run="true") == 4.0
    assert counter(daemon, "polca_gpu_actions_total", dry_run="false") == 0.0


async def test_missing_nvml_is_reported_and_retried_not_a_crash(
    h100_fake: FakeNvml, kube: StubKube, fake_clock: ManualClock
) -> None:
    h100_fake.library_missing()
    daemon = NodeDaemon(
        DaemonConfig(NODE), NvmlBackend(h100_fake), cast(KubeClient, kube), NodeMetrics(NODE),
        clock=fake_clock.now, wall_clock=lambda: NOW,
    )  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(daemon.run(stop))

    def patched() -> list[Any]:
        return [body for method, path, body in kube.requests if method == "PATCH"]

    for _ in range(200):
        if patched():
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(running, timeout=10)
    status = patched()[0]["status"]
    assert set(status) == {"conditions", "heartbeatTime", "metricsEndpoint"}  # record kept
    assert status["conditions"][0]["type"] == "Ready"
    assert status["conditions"][0]["status"] == "False"
    assert status["conditions"][0]["reason"] == "LibraryNotFound"
    healthy, detail = daemon.healthy()
    assert healthy
    assert "LibraryNotFound" in detail


# -- power readings (issue 11): the instant field, energy at the heartbeat cadence ----------


async def test_guard_and_published_power_use_the_instant_field(
    started: Callable[[], NodeDaemon], h100_fake: FakeNvml, fake_clock: ManualClock
) -> None:
    daemon = started()
    h100_fake.load = ConstantLoad(PhaseDemand(decode_frac=1.0))
    fake_clock.advance(0.1)  # one refresh: the instant field has it, the 1 s average a tenth
    await daemon.sample()
    # 4 H100s decoding at 380 W; GetPowerUsage would still say ~4 x 102 W.
    assert counter(daemon, "polca_gpu_power_watts", source="instant") == pytest.approx(1520.0)
    assert counter(daemon, "polca_gpu_power_watts", source="average") == 0.0
    status = build_status(daemon.build_status_inputs())
    assert status.power_watts == pytest.approx(1520.0)


async def test_without_the_instant_field_the_average_is_published_and_labelled(
    kube: StubKube, fake_clock: ManualClock
) -> None:
    fake = FakeNvml("H100-SXM:2", clock=fake_clock.now, sleep=fake_clock.sleep, power_fields=False)
    backend = NvmlBackend(fake)
    daemon = NodeDaemon(
        DaemonConfig(NODE), backend, cast(KubeClient, kube), NodeMetrics(NODE),
        clock=fake_clock.now, wall_clock=lambda: NOW,
    )  # fmt: skip
    daemon.adopt(backend.open())
    await daemon.sample()
    assert counter(daemon, "polca_gpu_power_watts", source="average") > 0
    assert counter(daemon, "polca_gpu_power_watts", source="instant") == 0.0
    backend.close()


async def test_energy_is_read_at_the_heartbeat_cadence_not_every_tick(
    started: Callable[[], NodeDaemon], h100_fake: FakeNvml, fake_clock: ManualClock
) -> None:
    daemon = started()  # heartbeat 30 s, ticks every 0.5 s
    energy_calls = "nvmlDeviceGetTotalEnergyConsumption"
    for _ in range(60 * 2):  # one minute of ticks
        await daemon.sample()
        fake_clock.advance(0.5)
    assert h100_fake.calls[energy_calls] == 4 * 2  # 4 GPUs at t = 0 and t = 30 s
    # The counter is exported on every scrape, carried between reads.
    assert counter(daemon, "polca_gpu_energy_joules_total") > 0
