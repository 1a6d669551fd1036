"""The daemon's components on their own, wired by hand (no NodeDaemon, no API server): each does
its part with only what it is given."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import cast

import pytest

from polca.api.powerpolicy import PowerPolicy
from polca.power.model import PhaseDemand
from polca_node.exporter import NodeMetrics
from polca_node.gpu.fake_nvml import FakeNvml, ManualClock
from polca_node.gpu.load import ConstantLoad
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.guard_loop import GuardBank
from polca_node.kube_client import KubeClient
from polca_node.node_gpus import NodeGpus
from polca_node.node_inputs import NodeInputs
from polca_node.node_status import PreviousRecord
from polca_node.policies import Mode
from polca_node.reconciler import Reconciler
from polca_node.sampling import Sampler
from polca_node.status_reporting import StatusReporter
from polca_node.status_writer import NodeStateClient
from polca_testbed.default_clocks import applied_ceiling_mhz
from polca_testbed.stub_kube import StubKube

PolicyFactory = Callable[..., PowerPolicy]
NODE = "node-a"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
GUARD = {"nodeBudgetWatts": 1000, "triggerPercent": 120, "releasePercent": 110}
STAGE2_MHZ = applied_ceiling_mhz("stage2", "idle", "H100-SXM")  # the default's, on these GPUs


class Wired:
    """The components as NodeDaemon wires them, with every wake-up recorded."""

    def __init__(self, backend: NvmlBackend, kube: StubKube, clock: ManualClock) -> None:
        self.wakes: list[str] = []
        self.events: list[str] = []
        self.metrics = NodeMetrics(NODE)
        self.gpus = NodeGpus()
        self.gpus.adopt(backend.open(), backend, self.metrics, wall_clock=lambda: NOW)
        guards = GuardBank()
        self.inputs = NodeInputs(
            NODE, cast(KubeClient, kube), self.gpus, wake=lambda: self.wakes.append("reconcile"),
            fake_gpu_annotation="polca.dev/fake-gpus",
        )  # fmt: skip
        self.reconciler = Reconciler(
            NODE, self.gpus, self.inputs, self.metrics, guard_actions=guards.actions,
            post_event=lambda reason, _message, warning=False: self.events.append(reason),
            on_applied=lambda: self.wakes.append("status"), clock=clock.now,
        )  # fmt: skip
        self.sampler = Sampler(
            backend, self.gpus, self.reconciler, guards, self.metrics,
            on_read_errors_changed=lambda: self.wakes.append("status"),
            clock=clock.now, wall_clock=lambda: NOW,
        )  # fmt: skip
        client = NodeStateClient(cast(KubeClient, kube), NODE, event_namespace="default")
        self.status = StatusReporter(
            client, self.gpus, self.reconciler, self.sampler, clock=clock.now,
            wall_clock=lambda: NOW,
        )  # fmt: skip

    def observe(self, policy: PowerPolicy) -> None:
        observed = self.inputs.observed
        observed.replace_nodes([{"metadata": {"name": NODE, "labels": {"polca.dev/row": "a"}}}])
        observed.replace_policies([policy.to_wire()])
        observed.replace_pods([])


@pytest.fixture
def wired(h100_fake: FakeNvml, kube: StubKube, fake_clock: ManualClock) -> Iterator[Wired]:
    backend = NvmlBackend(h100_fake)
    yield Wired(backend, kube, fake_clock)
    backend.close()


def mode(reconciler: Reconciler) -> Mode:
    # A function, not the attribute: each reconcile changes it under mypy's narrowing.
    return reconciler.decision.mode


def ceilings(fake: FakeNvml) -> list[int | None]:
    return [gpu.clock_ceiling_mhz for gpu in fake.gpus]


async def test_the_reconciler_holds_until_it_knows_then_applies_and_asks_for_a_status(
    wired: Wired, make_policy: PolicyFactory, h100_fake: FakeNvml
) -> None:
    await wired.reconciler.reconcile()
    assert mode(wired.reconciler) is Mode.HOLD  # no record read, nothing listed
    wired.observe(make_policy(stage="stage2"))
    wired.reconciler.recall(PreviousRecord())
    await wired.reconciler.reconcile()
    assert mode(wired.reconciler) is Mode.ENFORCE
    assert ceilings(h100_fake) == [STAGE2_MHZ] * 4  # no pods: every GPU is in the idle tier
    assert [p.stage for p in wired.reconciler.record] == ["stage2"]
    assert wired.wakes == ["status", "status"]  # after each apply; the watches were not run


async def test_the_sampler_guards_from_the_reconcilers_decision_and_wakes_it(
    wired: Wired, make_policy: PolicyFactory, h100_fake: FakeNvml, fake_clock: ManualClock
) -> None:
    wired.observe(make_policy(stage="normal", guard=GUARD))
    wired.reconciler.recall(PreviousRecord())
    await wired.reconciler.reconcile()
    assert wired.reconciler.inputs().guard_actions == {}
    assert ceilings(h100_fake) == [None] * 4

    h100_fake.load = ConstantLoad(PhaseDemand(prefill_frac=1.0))
    fake_clock.advance(1.1)  # GPUs report power averaged over the last second
    stop = asyncio.Event()
    loop = asyncio.create_task(wired.reconciler.reconcile_loop(stop))
    try:
        await wired.sampler.sample()
        assert wired.sampler.guard_since == NOW
        assert set(wired.reconciler.inputs().guard_actions) == {"row-a"}
        # Woken by the guard's move, the reconcile loop applies the guard's ceilings.
        async with asyncio.timeout(5.0):
            while ceilings(h100_fake) != [STAGE2_MHZ] * 4:
                await asyncio.sleep(0.005)
    finally:
        stop.set()
        wired.reconciler.wake()
        await asyncio.wait_for(loop, timeout=5.0)


async def test_the_status_reporter_puts_every_components_part_together(
    wired: Wired, make_policy: PolicyFactory
) -> None:
    wired.observe(make_policy(stage="stage1"))
    wired.reconciler.recall(PreviousRecord())
    await wired.reconciler.reconcile()
    await wired.sampler.sample()
    inputs = wired.status.inputs()
    assert inputs.decision is wired.reconciler.decision
    assert inputs.policies == wired.reconciler.record
    assert inputs.readings == wired.sampler.readings
    assert set(inputs.gpus) == {0, 1, 2, 3}
    assert inputs.now == NOW
