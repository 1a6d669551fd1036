"""The node-local checkpoint (safety rule 8; issue 12, finding 2): the file (atomic, versioned,
tolerant), deciding from it (only tightening), and a daemon restarted with no API server at all
resuming its guard and its holds from it, in one process over fake GPUs."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from polca.api.nodepowerstate import AppliedPolicy
from polca.api.powerpolicy import PowerPolicy
from polca.control.tiers import PodFacts
from polca.power.model import PhaseDemand
from polca_node.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_VERSION,
    Checkpoint,
    CheckpointError,
    from_document,
    read_checkpoint,
    resume_inputs,
    resumed_decision,
    to_document,
    write_checkpoint,
)
from polca_node.daemon import NodeDaemon
from polca_node.gpu.fake_nvml import FakeNvml, ManualClock
from polca_node.gpu.load import ConstantLoad
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.node_status import PreviousRecord
from polca_node.policies import DecisionInputs, Mode, NodeDecision, decide_node
from polca_testbed.default_clocks import applied_ceiling_mhz, default_ceiling_mhz

PolicyFactory = Callable[..., PowerPolicy]
DaemonFactory = Callable[..., NodeDaemon]  # the `started` fixture (conftest)
NODE = "node-a"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ROW = {"polca.dev/row": "a"}
TRAINER = PodFacts("ml", "train-0", {"training.kubeflow.org/job-name": "j"}, None)
GUARD = {"nodeBudgetWatts": 1000, "triggerPercent": 120, "releasePercent": 110}


def checkpoint_of(policy: PowerPolicy, **changes: Any) -> Checkpoint:
    fields: dict[str, Any] = {
        "node_name": NODE,
        "node_labels": ROW,
        "policies": (policy,),
        "applied": (
            AppliedPolicy(name="row-a", stage=policy.status.stage if policy.status else None),
        ),
        "gpu_pods": {0: (TRAINER,)},
        "ceilings_mhz": {0: 1275, 1: 1275, 2: None},
    }
    fields.update(changes)
    return Checkpoint(**fields)


# -- the file --------------------------------------------------------------------------------


def test_round_trip_and_versioned(tmp_path: Path, make_policy: PolicyFactory) -> None:
    checkpoint = checkpoint_of(make_policy(stage="stage1", guard=GUARD))
    path = tmp_path / "state" / CHECKPOINT_FILE
    write_checkpoint(path, checkpoint)
    document = json.loads(path.read_text())
    assert document["version"] == CHECKPOINT_VERSION
    assert document["kind"] == "PolcaNodeCheckpoint"
    assert read_checkpoint(path, NODE) == checkpoint
    assert [p.name for p in tmp_path.joinpath("state").iterdir()] == [CHECKPOINT_FILE]  # no tmp
    assert path.stat().st_mode & 0o777 == 0o600


def test_missing_file_is_no_checkpoint(tmp_path: Path) -> None:
    assert read_checkpoint(tmp_path / CHECKPOINT_FILE, NODE) is None


def test_a_failed_write_leaves_the_old_file_whole(
    tmp_path: Path, make_policy: PolicyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / CHECKPOINT_FILE
    old = checkpoint_of(make_policy(stage="stage1"))
    write_checkpoint(path, old)

    def power_cut(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("polca_node.checkpoint.os.fsync", power_cut)
    with pytest.raises(OSError, match="Input/output"):
        write_checkpoint(path, checkpoint_of(make_policy(stage="brake")))
    monkeypatch.undo()
    assert read_checkpoint(path, NODE) == old
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"kind": "PolcaNodeCheckpoint", "version": 1, "node": "node-a", "polic', "Corrupt"),
        (b"\x00\xff\xfe binary", "Corrupt"),
        (b"[1, 2, 3]", "Corrupt"),
        (b'{"kind": "PolcaNodeCheckpoint", "version": 2, "node": "node-a"}', "UnknownVersion"),
        (b'{"kind": "PolcaNodeCheckpoint", "version": 1, "node": "node-b"}', "OtherNode"),
        (
            b'{"kind": "PolcaNodeCheckpoint", "version": 1, "node": "node-a", '
            b'"policies": [{"spec": {"budgetWatts": -5}}]}',
            "Unreadable",
        ),
        (
            b'{"kind": "PolcaNodeCheckpoint", "version": 1, "node": "node-a", '
            b'"clockCeilingsMHz": {"zero": 1110}}',
            "Corrupt",
        ),
    ],
)
def test_unusable_files_are_refused_with_a_reason(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as raised:
        read_checkpoint(path, NODE)
    assert raised.value.reason == reason


def test_the_document_has_no_timestamp_so_unchanged_means_equal(
    make_policy: PolicyFactory,
) -> None:
    policy = make_policy(stage="stage1")
    assert to_document(checkpoint_of(policy)) == to_document(checkpoint_of(policy))
    assert from_document(to_document(checkpoint_of(policy)), NODE) == checkpoint_of(policy)


# -- deciding from it ------------------------------------------------------------------------


def api_inputs(limits: Any, **known: Any) -> DecisionInputs:
    fields: dict[str, Any] = {
        "node_labels": None, "policies": None, "gpu_limits": limits, "gpu_pods": None,
        "previously_managed": None,
    }  # fmt: skip
    fields.update(known)
    return DecisionInputs(**fields)


def test_what_the_api_has_not_told_comes_from_the_checkpoint_and_only_tightens(
    make_policy: PolicyFactory, h100_backend: NvmlBackend
) -> None:
    from polca_node.daemon import gpu_limits

    limits = {i.index: gpu_limits(i) for i in h100_backend.inventory().gpus}
    checkpoint = checkpoint_of(make_policy(stage="stage2"))
    inputs, resumed = resume_inputs(api_inputs(limits), checkpoint)
    assert resumed == ("gpu_pods", "node_labels", "policies", "previously_managed")
    decision = resumed_decision(decide_node(inputs), resumed)
    assert decision.mode is Mode.TIGHTEN
    assert "checkpoint" in decision.reason
    assert {i: g.enforce.clock_ceiling_mhz for i, g in decision.gpus.items()} == dict.fromkeys(
        range(4), default_ceiling_mhz("stage2", "low", "H100-SXM")
    )
    assert decision.gpus[0].tier == "low"  # the training pod, from the checkpoint

    # Everything from the API: the checkpoint is out of the decision.
    everything = api_inputs(
        limits, node_labels=ROW, policies=[make_policy(stage="stage1")],
        gpu_pods=dict.fromkeys(limits, ()), previously_managed=True,
    )  # fmt: skip
    assert resume_inputs(everything, checkpoint) == (everything, ())
    assert resumed_decision(decide_node(everything), ()).mode is Mode.ENFORCE


def test_a_resumed_restore_holds_instead() -> None:
    restore = NodeDecision(Mode.RESTORE, "the node left every enforcing policy")
    assert resumed_decision(restore, ("node_labels",)).mode is Mode.HOLD
    assert resumed_decision(restore, ()).mode is Mode.RESTORE


# -- a daemon restarted without any API server -----------------------------------------------

# What the first daemon saw of the cluster (its Node, its one pod).
NODE_OBJECT = {"metadata": {"name": NODE, "labels": ROW}}
POD = {"metadata": {"namespace": "ml", "name": "train-0", "labels": dict(TRAINER.labels),
                    "annotations": {"polca.dev/fake-gpus": "1"},
                    "creationTimestamp": "2025-01-01T00:00:00Z"},
       "spec": {"nodeName": NODE}}  # fmt: skip


def ceilings(fake: FakeNvml) -> list[int | None]:
    return [gpu.clock_ceiling_mhz for gpu in fake.gpus]


# What the default (GPU-relative) policy's stages lock the fake H100s at.
LOW1 = applied_ceiling_mhz("stage1", "low", "H100-SXM")
LOW2 = applied_ceiling_mhz("stage2", "low", "H100-SXM")


def metric(daemon: NodeDaemon, name: str, **labels: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name, {"node": NODE, **labels})


async def test_restart_during_an_outage_resumes_the_guard_and_lifts_nothing(
    started: DaemonFactory,
    h100_fake: FakeNvml,
    fake_clock: ManualClock,
    make_policy: PolicyFactory,
    tmp_path: Path,
) -> None:
    first = started(state_dir=tmp_path)
    first.observed.replace_nodes([NODE_OBJECT])
    first.observed.replace_policies([make_policy(stage="stage1", guard=GUARD).to_wire()])
    first.observed.replace_pods([POD])
    first.recall(PreviousRecord())
    await first.reconcile()
    assert first.decision.mode is Mode.ENFORCE
    assert ceilings(h100_fake) == [LOW1] * 4  # stage 1: the low tier and idle GPUs
    assert (tmp_path / CHECKPOINT_FILE).exists()

    # The process dies with the API server down; the node's load rises above the guard trigger.
    # No API input at all in this process: everything comes from the checkpoint.
    second = started(state_dir=tmp_path)
    assert second.resume() is not None
    h100_fake.load = ConstantLoad(PhaseDemand(prefill_frac=1.0))
    fake_clock.advance(0.2)  # the instant power field the guard reads refreshes every 100 ms
    await second.reconcile()
    assert second.decision.mode is Mode.TIGHTEN
    assert "checkpoint" in second.decision.reason
    assert ceilings(h100_fake) == [LOW1] * 4  # held

    history = [ceilings(h100_fake)]
    for _ in range(4):  # the guard climbs one level a sample, from the checkpoint's policy
        await second.sample()
        await second.reconcile()
        history.append(ceilings(h100_fake))
        fake_clock.advance(0.5)
    assert second.guard_outcomes()["row-a"].active
    assert history[1] == [LOW1, LOW2, LOW2, LOW2]  # idle GPUs first, at the first sample
    assert metric(second, "polca_guard_activations_total", policy="row-a") == 1.0
    for before, after in itertools.pairwise(history):
        for was, now in zip(before, after, strict=True):
            assert was is None or (now is not None and now <= was), history

    # A second restart in the same outage knows the guard's ceilings too (rewritten checkpoint).
    third = started(state_dir=tmp_path)
    resumed = third.resume()
    assert resumed is not None
    guarded = ceilings(h100_fake)[1]
    assert guarded is not None
    assert guarded < LOW1  # the guard's ceiling, not stage 1's
    assert resumed.ceilings_mhz[1] == guarded


async def test_a_corrupt_checkpoint_is_counted_and_ignored_holding_everything(
    started: DaemonFactory, h100_fake: FakeNvml, tmp_path: Path
) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"\x00garbage")
    daemon = started(state_dir=tmp_path)
    daemon.backend.set_clock_ceiling(0, 1110)  # what a previous process left
    assert daemon.resume() is None
    await daemon.reconcile()
    assert daemon.decision.mode is Mode.HOLD
    assert ceilings(h100_fake)[0] == 1110
    assert metric(daemon, "polca_node_checkpoint_errors_total", reason="Corrupt") == 1.0
