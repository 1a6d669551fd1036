"""Builders shared by the node daemon's behaviour tests (policies, fake GPUs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from polca.api.powerpolicy import PowerPolicy
from polca_node.daemon import DaemonConfig, NodeDaemon
from polca_node.exporter import NodeMetrics
from polca_node.gpu.fake_nvml import FakeNvml, ManualClock
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.kube_client import KubeClient
from polca_testbed.stub_kube import StubKube

ROW_LABEL = "polca.dev/row"
DAEMON_NODE = "node-a"
DAEMON_NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PolicyFactory = Callable[..., PowerPolicy]


def build_policy(
    name: str = "row-a",
    *,
    row: str = "a",
    stage: str | None = None,
    dry_run: bool = False,
    node_count: int | None = 1,
    budget_w: float = 10_000.0,
    stages: list[dict[str, Any]] | None = None,
    tiers: list[dict[str, Any]] | None = None,
    guard: Mapping[str, Any] | None = None,
    failsafe: str | None = None,
    node_power: Mapping[str, Any] | None = None,
    generation: int = 1,
) -> PowerPolicy:
    """A PowerPolicy as the API server would hand it out (defaults: POLCA's table)."""
    spec: dict[str, Any] = {
        "nodeSelector": {"matchLabels": {ROW_LABEL: row}},
        "budgetWatts": budget_w,
        "dryRun": dry_run,
    }
    if stages is not None:
        spec["stages"] = stages
    if tiers is not None:
        spec["tiers"] = tiers
        spec["defaultTier"] = tiers[-1]["name"]
    if guard is not None:
        spec["guard"] = dict(guard)
    if failsafe is not None:
        spec["failsafeStage"] = failsafe
    if node_power is not None:
        spec["nodePower"] = dict(node_power)
    body: dict[str, Any] = {
        "apiVersion": "polca.dev/v1alpha1",
        "kind": "PowerPolicy",
        "metadata": {"name": name, "generation": generation},
        "spec": spec,
    }
    if stage is not None:
        body["status"] = {"stage": stage, "nodeCount": node_count}
    return PowerPolicy.model_validate(body)


@pytest.fixture
def make_policy() -> PolicyFactory:
    return build_policy


@pytest.fixture
def fake_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def h100_fake(fake_clock: ManualClock) -> FakeNvml:
    """Four fake H100s on fake time."""
    return FakeNvml("H100-SXM:4", clock=fake_clock.now, sleep=fake_clock.sleep, seed="node-a")


@pytest.fixture
def h100_backend(h100_fake: FakeNvml) -> Iterator[NvmlBackend]:
    backend = NvmlBackend(h100_fake)
    backend.open()
    yield backend
    backend.close()


@pytest.fixture
def kube() -> StubKube:
    return StubKube()


DaemonFactory = Callable[..., NodeDaemon]


@pytest.fixture
def started(
    h100_fake: FakeNvml, fake_clock: ManualClock, kube: StubKube
) -> Iterator[DaemonFactory]:
    """`started(state_dir=None)`: a daemon process over the (persistent) fake GPUs, node-a,
    fake GPUs by annotation; call twice for a restart."""
    backends: list[NvmlBackend] = []

    def start(state_dir: Path | None = None) -> NodeDaemon:
        backend = NvmlBackend(h100_fake)
        backends.append(backend)
        config = DaemonConfig(
            DAEMON_NODE, fake_gpu_annotation="polca.dev/fake-gpus", state_dir=state_dir
        )
        daemon = NodeDaemon(
            config, backend, cast(KubeClient, kube), NodeMetrics(DAEMON_NODE),
            clock=fake_clock.now, wall_clock=lambda: DAEMON_NOW,
        )  # fmt: skip
        daemon.adopt(backend.open())
        return daemon

    yield start
    for backend in backends:
        backend.close()
