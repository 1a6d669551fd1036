"""NodePowerState, pure: what is written, when (change or 30 s heartbeat), the restart record.

No API here: `build_status` and the schedule take plain inputs (the client is
`test_node_status_writer.py`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from polca.api.nodepowerstate import AppliedPolicy, NodePowerStateStatus
from polca.api.powerpolicy import PowerPolicy
from polca.control.plan import GpuLimits
from polca.control.tiers import PodFacts
from polca_node.actuator import ClockSource, GpuApplied, WriteFailure
from polca_node.gpu.backend import GpuInfo
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.node_status import (
    HEARTBEAT_S,
    StatusInputs,
    StatusSchedule,
    applied_policies,
    build_status,
    previous_record,
    status_fingerprint,
)
from polca_node.observed import UnreadablePolicy
from polca_node.policies import DecisionInputs, Mode, NodeDecision, decide_node
from polca_node.tiering import OwnerConflict
from polca_testbed.default_clocks import default_ceiling_mhz

PolicyFactory = Callable[..., PowerPolicy]
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
H100 = GpuLimits(1980, 345, 200.0, 700.0, 700.0)
LOW2 = default_ceiling_mhz("stage2", "low", H100)  # the default policy's stage 2 on these GPUs
TRAINING = PodFacts("ml", "train-0", {"training.kubeflow.org/job-name": "j"})


class TestSchedule:
    def test_heartbeat_at_most_every_30_s_when_nothing_changes(self) -> None:
        schedule = StatusSchedule()
        writes = []
        for second in range(121):
            if schedule.due(float(second), "same"):
                schedule.written(float(second), "same")
                writes.append(second)
        assert HEARTBEAT_S == 30.0
        assert writes == [0, 30, 60, 90, 120]

    def test_a_change_is_written_at_once_and_restarts_the_heartbeat(self) -> None:
        schedule = StatusSchedule()
        writes = []
        for second in range(100):
            fingerprint = "before" if second < 45 else "after"
            if schedule.due(float(second), fingerprint):
                schedule.written(float(second), fingerprint)
                writes.append(second)
        assert writes == [0, 30, 45, 75]
        assert schedule.next_heartbeat_s() == 105.0


def gpus(backend: NvmlBackend) -> dict[int, GpuInfo]:
    return backend.inventory().by_index()


def enforce_stage2(make_policy: PolicyFactory) -> NodeDecision:
    return decide_node(
        DecisionInputs(
            node_labels={"polca.dev/row": "a"},
            policies=[make_policy(stage="stage2")],
            gpu_limits=dict.fromkeys(range(4), H100),
            gpu_pods={0: (TRAINING,)},
            previously_managed=False,
        )
    )


def inputs(backend: NvmlBackend, decision: NodeDecision, **changes: Any) -> StatusInputs:
    applied = {
        i: GpuApplied(
            clock_ceiling_mhz=g.enforce.clock_ceiling_mhz,
            clock_source=ClockSource.SET,
            power_limit_w=700.0,
            enforced_limit_w=700.0,
            default_limit_w=700.0,
        )
        for i, g in decision.gpus.items()
    }
    readings = {i: backend.read(i) for i in range(4)}
    base: dict[str, Any] = {
        "gpus": gpus(backend),
        "decision": decision,
        "applied": applied,
        "readings": readings,
        "policies": applied_policies(decision, (), restore_complete=False),
        "guards": {},
        "guard_since": None,
        "previous_conditions": (),
        "now": NOW,
        "metrics_endpoint": "http://10.0.0.7:9402/metrics",
    }
    return StatusInputs(**{**base, **changes})


class TestBuildStatus:
    def test_inventory_assignment_and_applied_settings(
        self, make_policy: PolicyFactory, h100_backend: NvmlBackend
    ) -> None:
        status = build_status(inputs(h100_backend, enforce_stage2(make_policy)))
        assert status.gpu_count == 4
        assert status.throttled_gpu_count == 4  # the training GPU and three idle ones
        assert status.policy == "row-a"
        assert status.stage == "stage2"
        assert status.metrics_endpoint == "http://10.0.0.7:9402/metrics"
        assert status.heartbeat_time == NOW
        first = status.gpus[0] if status.gpus else None
        assert first is not None
        assert first.uuid.startswith("GPU-")
        assert (first.max_clock_mhz, first.min_clock_mhz) == (1980, 345)
        assert first.pod is not None
        assert (first.pod.namespace, first.pod.name) == ("ml", "train-0")
        assert (first.tier, first.policy, first.stage) == ("low", "row-a", "stage2")
        assert first.clock_ceiling_mhz == LOW2
        ready = status.condition("Ready")
        assert ready is not None
        assert (ready.status, ready.reason) == ("True", "Enforce")
        wire = status.to_wire()
        assert wire["metricsEndpoint"] == "http://10.0.0.7:9402/metrics"
        assert wire["gpus"][0]["clockCeilingMHz"] == LOW2
        NodePowerStateStatus.model_validate(wire)  # what we write is what the CRD accepts

    def test_unknown_ceiling_is_not_reported(
        self, make_policy: PolicyFactory, h100_backend: NvmlBackend
    ) -> None:
        decision = enforce_stage2(make_policy)
        unknown = {i: GpuApplied(1110, ClockSource.UNKNOWN) for i in range(4)}
        status = build_status(inputs(h100_backend, decision, applied=unknown))
        assert status.gpus is not None
        assert all(g.clock_ceiling_mhz is None for g in status.gpus)

    def test_hold_is_not_ready(self, h100_backend: NvmlBackend) -> None:
        hold = NodeDecision(Mode.HOLD, "PowerPolicies not listed yet")
        status = build_status(inputs(h100_backend, hold, applied={}))
        ready = status.condition("Ready")
        assert ready is not None
        assert (ready.status, ready.reason) == ("False", "Hold")

    def test_rejected_write_becomes_a_condition_and_gpu_error(
        self, make_policy: PolicyFactory, h100_backend: NvmlBackend
    ) -> None:
        decision = enforce_stage2(make_policy)
        failure = WriteFailure("clockCeiling", "NoPermission", "GPU 2: denied", NOW)
        applied = {i: GpuApplied(last_error=failure if i == 2 else None) for i in range(4)}
        status = build_status(inputs(h100_backend, decision, applied=applied))
        condition = status.condition("GpuWriteFailed")
        assert condition is not None
        assert (condition.status, condition.reason) == ("True", "WriteRejected")
        assert "GPU 2 clockCeiling: NoPermission" in condition.message
        assert status.gpus is not None
        error = status.gpus[2].last_error
        assert error is not None
        assert (error.knob, error.message) == ("clockCeiling", "GPU 2: denied")

        # Once the write succeeds the condition turns False (it is not dropped).
        later = build_status(
            inputs(h100_backend, decision, previous_conditions=status.conditions or ())
        )
        cleared = later.condition("GpuWriteFailed")
        assert cleared is not None
        assert cleared.status == "False"

    def test_dry_run_condition_says_what_would_be_set(
        self, make_policy: PolicyFactory, h100_backend: NvmlBackend
    ) -> None:
        decision = decide_node(
            DecisionInputs(
                node_labels={"polca.dev/row": "a"},
                policies=[make_policy(stage="stage2", dry_run=True)],
                gpu_limits=dict.fromkeys(range(4), H100),
                gpu_pods={},
                previously_managed=False,
            )
        )
        status = build_status(inputs(h100_backend, decision, applied={}))
        condition = status.condition("DryRun")
        assert condition is not None
        assert condition.status == "True"
        assert f"GPU 0: {LOW2} MHz" in condition.message
        assert status.policies is not None
        assert [(p.name, p.dry_run) for p in status.policies] == [("row-a", True)]

    def test_unreadable_gpu_is_a_condition(self, h100_backend: NvmlBackend) -> None:
        unmanaged = NodeDecision(Mode.UNMANAGED, "no PowerPolicy selects this node")
        lost = {3: "GPU 3 nvmlDeviceGetPowerUsage: GPU is lost (GpuLost)"}
        status = build_status(inputs(h100_backend, unmanaged, applied={}, read_errors=lost))
        condition = status.condition("GpuReadFailed")
        assert condition is not None
        assert (condition.status, condition.reason) == ("True", "GpuUnreadable")
        assert "GpuLost" in condition.message

    def test_unreadable_policy_is_a_condition(self, h100_backend: NvmlBackend) -> None:
        unknown = UnreadablePolicy("row-a", "1 validation error(s), first spec.x: bad")
        hold = NodeDecision(Mode.HOLD, "cannot read PowerPolicy row-a", unreadable=(unknown,))
        status = build_status(inputs(h100_backend, hold, applied={}))
        condition = status.condition("PolicyUnreadable")
        assert condition is not None
        assert (condition.status, condition.reason) == ("True", "UnreadablePolicy")
        assert "row-a: 1 validation error(s), first spec.x: bad" in condition.message
        readable = NodeDecision(Mode.UNMANAGED, "no PowerPolicy selects this node")
        later = build_status(
            inputs(h100_backend, readable, applied={}, previous_conditions=status.conditions)
        )
        cleared = later.condition("PolicyUnreadable")
        assert cleared is not None
        assert (cleared.status, cleared.reason) == ("False", "PoliciesReadable")

    def test_disagreeing_gpu_owners_are_a_condition(self, h100_backend: NvmlBackend) -> None:
        conflict = OwnerConflict(frozenset({0, 1}), (("ml", "train-0"),))
        held = NodeDecision(Mode.ENFORCE, "enforcing row-a/stage1", owner_conflict=conflict)
        status = build_status(inputs(h100_backend, held, applied={}))
        condition = status.condition("GpuOwnersUnknown")
        assert condition is not None
        assert (condition.status, condition.reason) == ("True", "SourcesDisagree")
        assert "ml/train-0" in condition.message
        assert "GPUs 0, 1" in condition.message

    def test_restored_defaults_are_recorded(self, h100_backend: NvmlBackend) -> None:
        unmanaged = NodeDecision(Mode.UNMANAGED, "no PowerPolicy selects this node")
        status = build_status(inputs(h100_backend, unmanaged, applied={}, restored=True))
        condition = status.condition("DefaultsRestored")
        assert condition is not None
        assert (condition.status, condition.reason) == ("True", "LeftEveryPolicy")

    def test_transition_time_kept_while_the_status_holds(
        self, make_policy: PolicyFactory, h100_backend: NvmlBackend
    ) -> None:
        decision = enforce_stage2(make_policy)
        first = build_status(inputs(h100_backend, decision))
        later = build_status(
            inputs(
                h100_backend,
                decision,
                now=NOW + timedelta(minutes=5),
                previous_conditions=first.conditions or (),
            )
        )
        assert later.condition("Ready") == first.condition("Ready")

    def test_fingerprint_ignores_readings_and_heartbeat_only(
        self, make_policy: PolicyFactory, h100_backend: NvmlBackend
    ) -> None:
        decision = enforce_stage2(make_policy)
        first = build_status(inputs(h100_backend, decision))
        busier = first.model_copy(
            update={
                "power_watts": 4321.0,
                "heartbeat_time": NOW + timedelta(seconds=29),
                "gpus": [g.model_copy(update={"power_watts": 650.0}) for g in first.gpus or ()],
            }
        )
        assert status_fingerprint(busier) == status_fingerprint(first)
        assert first.gpus is not None
        capped = first.model_copy(
            update={"gpus": [first.gpus[0].model_copy(update={"clock_ceiling_mhz": 900})]}
        )
        assert status_fingerprint(capped) != status_fingerprint(first)


class TestRecord:
    RECORD = (AppliedPolicy(name="row-a", stage="stage2"),)

    def test_hold_keeps_the_previous_record(self) -> None:
        hold = NodeDecision(Mode.HOLD, "starting")
        assert applied_policies(hold, self.RECORD, restore_complete=False) == self.RECORD

    def test_restore_forgets_only_once_complete(self) -> None:
        restore = NodeDecision(Mode.RESTORE, "left")
        assert applied_policies(restore, self.RECORD, restore_complete=False) == self.RECORD
        assert applied_policies(restore, self.RECORD, restore_complete=True) == ()

    def test_enforce_records_the_stages_applied(self, make_policy: PolicyFactory) -> None:
        recorded = applied_policies(enforce_stage2(make_policy), (), restore_complete=False)
        assert [(p.name, p.stage, p.observed_generation) for p in recorded] == [
            ("row-a", "stage2", 1)
        ]

    def test_previous_record_is_read_leniently(self) -> None:
        obj = {
            "metadata": {"uid": "u-1"},
            "status": {
                "policies": [{"name": "row-a", "stage": "stage2"}, {"bogus": True}],
                "gpus": [{"index": 0, "clockCeilingMHz": 1110}, {"index": 1}, "junk"],
                "conditions": [{"type": "Ready"}],
            },
        }
        record = previous_record(obj)
        assert record.managed
        assert record.policies == self.RECORD
        assert record.ceilings_mhz == {0: 1110, 1: None}
        assert record.conditions == ()
        assert record.uid == "u-1"
        assert not previous_record(None).managed
