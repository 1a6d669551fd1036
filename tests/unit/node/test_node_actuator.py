"""Applying decisions to GPUs: idempotent, tighten-only when unsure, restore, rejected writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest

from polca.control.plan import ResolvedAction
from polca_node.actuator import (
    ActuationObserver,
    Actuator,
    ClockSource,
    GpuApplied,
    Knob,
    plan_targets,
)
from polca_node.gpu.fake_nvml import SETTER_FUNCTIONS, FakeHandle, FakeNvml
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.policies import GpuDecision, Mode, NodeDecision
from polca_node.tiering import OwnerConflict


class RecordingObserver:
    def __init__(self) -> None:
        self.writes: list[tuple[int, Knob]] = []
        self.failures: list[tuple[int, Knob, str]] = []

    def on_write(self, index: int, knob: Knob) -> None:
        self.writes.append((index, knob))

    def on_failure(self, index: int, knob: Knob, reason: str) -> None:
        self.failures.append((index, knob, reason))


def decision(mode: Mode, actions: Mapping[int, ResolvedAction]) -> NodeDecision:
    gpus = {i: GpuDecision(index=i, enforce=a, report=a) for i, a in actions.items()}
    return NodeDecision(mode, "test", (), gpus)


def everywhere(action: ResolvedAction, count: int = 4) -> dict[int, ResolvedAction]:
    return dict.fromkeys(range(count), action)


def setter_calls(fake: FakeNvml) -> dict[str, int]:
    return {name: fake.calls[name] for name in SETTER_FUNCTIONS if fake.calls[name]}


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
def actuator(h100_backend: NvmlBackend, observer: RecordingObserver) -> Actuator:
    return Actuator(h100_backend, h100_backend.inventory().by_index(), observer)


def test_observer_protocol_is_met() -> None:
    observer: ActuationObserver = RecordingObserver()
    assert observer is not None


class TestEnforce:
    def test_sets_ceilings_and_limits_and_reads_them_back(
        self, actuator: Actuator, h100_fake: FakeNvml, observer: RecordingObserver
    ) -> None:
        wanted = {0: ResolvedAction(1110, 500.0), 1: ResolvedAction(), 2: ResolvedAction(1305)}
        result = actuator.apply(decision(Mode.ENFORCE, wanted))
        assert result.complete
        assert h100_fake.gpus[0].clock_ceiling_mhz == 1110
        assert h100_fake.gpus[0].power_limit_mw == 500_000
        assert h100_fake.gpus[1].clock_ceiling_mhz is None
        assert h100_fake.gpus[2].clock_ceiling_mhz == 1305
        assert h100_fake.gpus[2].power_limit_mw == 700_000
        applied = actuator.applied
        assert applied[0].clock_ceiling_mhz == 1110
        assert applied[0].clock_source is ClockSource.SET
        assert applied[0].power_limit_w == 500.0
        assert applied[0].enforced_limit_w == 500.0
        assert (0, "clockCeiling") in observer.writes
        assert (0, "powerLimit") in observer.writes

    def test_second_apply_writes_nothing(
        self, actuator: Actuator, h100_fake: FakeNvml, observer: RecordingObserver
    ) -> None:
        wanted = decision(Mode.ENFORCE, everywhere(ResolvedAction(1110, 450.0)))
        actuator.apply(wanted)
        before = setter_calls(h100_fake)
        writes_before = len(observer.writes)
        result = actuator.apply(wanted)
        assert result.changed == ()
        assert setter_calls(h100_fake) == before
        assert len(observer.writes) == writes_before

    def test_lifting_a_ceiling_resets_locked_clocks(
        self, actuator: Actuator, h100_fake: FakeNvml
    ) -> None:
        actuator.apply(decision(Mode.ENFORCE, everywhere(ResolvedAction(1110))))
        actuator.apply(decision(Mode.ENFORCE, everywhere(ResolvedAction())))
        assert all(gpu.clock_ceiling_mhz is None for gpu in h100_fake.gpus)
        assert h100_fake.calls["nvmlDeviceResetGpuLockedClocks"] == 4

    @pytest.mark.parametrize("mode", [Mode.HOLD, Mode.UNMANAGED])
    def test_hold_and_unmanaged_write_nothing(
        self, actuator: Actuator, h100_fake: FakeNvml, mode: Mode
    ) -> None:
        result = actuator.apply(decision(mode, everywhere(ResolvedAction(800, 300.0))))
        assert result.changed == ()
        assert setter_calls(h100_fake) == {}


class TestTightenOnly:
    def test_unknown_clock_ceiling_is_left_alone(
        self, actuator: Actuator, h100_fake: FakeNvml
    ) -> None:
        # After a restart NVML cannot tell the ceiling: tightening must not touch it.
        actuator.apply(decision(Mode.TIGHTEN, everywhere(ResolvedAction(1110))))
        assert setter_calls(h100_fake) == {}

    def test_known_limits_only_go_down(self, actuator: Actuator, h100_fake: FakeNvml) -> None:
        actuator.apply(decision(Mode.ENFORCE, everywhere(ResolvedAction(1305, 500.0))))
        actuator.apply(
            decision(Mode.TIGHTEN, {0: ResolvedAction(), 1: ResolvedAction(1110, 600.0)})
        )
        assert h100_fake.gpus[0].clock_ceiling_mhz == 1305  # not lifted
        assert h100_fake.gpus[0].power_limit_mw == 500_000
        assert h100_fake.gpus[1].clock_ceiling_mhz == 1110  # lowered
        assert h100_fake.gpus[1].power_limit_mw == 500_000  # 600 W would be higher: kept

    def test_recorded_ceiling_counts_as_known(
        self, actuator: Actuator, h100_fake: FakeNvml
    ) -> None:
        actuator.recall({0: 1305, 1: None})
        assert actuator.applied[0].clock_source is ClockSource.RECORDED
        actuator.apply(decision(Mode.TIGHTEN, {0: ResolvedAction(1110), 1: ResolvedAction(1500)}))
        assert h100_fake.gpus[0].clock_ceiling_mhz == 1110
        assert h100_fake.gpus[1].clock_ceiling_mhz == 1500

    def test_unconfirmed_gpus_are_only_tightened_under_enforce(
        self, actuator: Actuator, h100_fake: FakeNvml
    ) -> None:
        # The kubelet and the pod watch disagree about GPUs 0 and 1 (issue 12, finding 4).
        actuator.apply(decision(Mode.ENFORCE, everywhere(ResolvedAction(1110, 500.0))))
        lifted = replace(
            decision(Mode.ENFORCE, {**everywhere(ResolvedAction()), 1: ResolvedAction(900)}),
            owner_conflict=OwnerConflict(frozenset({0, 1}), (("ns", "train-0"),)),
        )
        actuator.apply(lifted)
        assert [g.clock_ceiling_mhz for g in h100_fake.gpus] == [1110, 900, None, None]
        assert [g.power_limit_mw for g in h100_fake.gpus] == [500_000, 500_000, 700_000, 700_000]

    def test_plan_targets_is_pure(self) -> None:
        applied = {0: GpuApplied(1305, ClockSource.SET, 500.0, 500.0, 700.0)}
        targets = plan_targets(decision(Mode.TIGHTEN, {0: ResolvedAction(1500, 300.0)}), applied)
        assert (targets[0].clock_ceiling_mhz, targets[0].power_limit_w) == (1305, 300.0)


class TestRestore:
    def test_restore_resets_every_gpu(self, actuator: Actuator, h100_fake: FakeNvml) -> None:
        actuator.apply(decision(Mode.ENFORCE, everywhere(ResolvedAction(1110, 300.0))))
        result = actuator.apply(NodeDecision(Mode.RESTORE, "left"))
        assert result.complete
        assert all(gpu.clock_ceiling_mhz is None for gpu in h100_fake.gpus)
        assert all(gpu.power_limit_mw == 700_000 for gpu in h100_fake.gpus)


class TestRejectedWrites:
    def test_rejected_write_is_recorded_and_counted_not_raised(
        self, actuator: Actuator, h100_fake: FakeNvml, observer: RecordingObserver
    ) -> None:
        fault = h100_fake.deny_setters(gpu_index=1)
        result = actuator.apply(decision(Mode.ENFORCE, everywhere(ResolvedAction(1110, 400.0))))
        assert not result.complete
        assert {(i, f.knob, f.reason) for i, f in result.failures} == {
            (1, "clockCeiling", "NoPermission"),
            (1, "powerLimit", "NoPermission"),
        }
        assert sorted(observer.failures) == [
            (1, "clockCeiling", "NoPermission"),
            (1, "powerLimit", "NoPermission"),
        ]
        error = actuator.applied[1].last_error
        assert error is not None
        assert error.reason == "NoPermission"
        assert h100_fake.gpus[0].clock_ceiling_mhz == 1110  # the other GPUs still got theirs

        h100_fake.remove(fault)
        retry = actuator.apply(decision(Mode.ENFORCE, everywhere(ResolvedAction(1110, 400.0))))
        assert retry.complete
        assert actuator.applied[1].last_error is None
        assert h100_fake.gpus[1].clock_ceiling_mhz == 1110

    def test_lost_gpu_does_not_stop_the_others(
        self, actuator: Actuator, h100_fake: FakeNvml, observer: RecordingObserver
    ) -> None:
        h100_fake.lose_gpu(3)
        actuator.apply(decision(Mode.ENFORCE, everywhere(ResolvedAction(1110))))
        assert [g.clock_ceiling_mhz for g in h100_fake.gpus[:3]] == [1110] * 3
        assert observer.failures == [(3, "clockCeiling", "GpuLost"), (3, "powerLimit", "GpuLost")]


def test_observe_refreshes_power_limits_from_readings(
    actuator: Actuator, h100_backend: NvmlBackend, h100_fake: FakeNvml
) -> None:
    # Someone else (an admin with nvidia-smi) lowered the limit: the actuator sees it.
    h100_fake.nvmlDeviceSetPowerManagementLimit(FakeHandle(0), 350_000)
    actuator.observe({0: h100_backend.read(0)})
    assert actuator.applied[0].power_limit_w == 350.0
    assert actuator.applied[0].power_cap_w == 350.0
