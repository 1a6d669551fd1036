"""Builders shared by the node daemon's behaviour tests (policies, fake GPUs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from polca.api.powerpolicy import PowerPolicy
from polca_node.gpu.fake_nvml import FakeNvml, ManualClock
from polca_node.gpu.nvml_backend import NvmlBackend

ROW_LABEL = "polca.dev/row"
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
