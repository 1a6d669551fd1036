"""The fake NVML: pynvml's surface, NVML's units and rules, the power model, fault injection."""

from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor

import pynvml
import pytest

from polca.power.model import PhaseDemand, operating_point
from polca.power.profiles import get_profile
from polca.power.sensor import OVERSHOOT_RATIO
from polca_node.gpu import errors
from polca_node.gpu.fake_nvml import (
    SETTER_FUNCTIONS,
    FakeHandle,
    FakeNvml,
    Fault,
    ManualClock,
    parse_fleet_spec,
)
from polca_node.gpu.load import ConstantLoad, ScriptedLoad
from polca_node.gpu.nvml_backend import NvmlBackend

BUSY = PhaseDemand(prefill_frac=0.2, decode_frac=0.7)
SETTLE_S = 1.1  # a change shows fully in GetPowerUsage after its 1 s window and one refresh


def _backend(fake: FakeNvml) -> NvmlBackend:
    backend = NvmlBackend(fake)
    backend.open()
    return backend


class TestFleetSpec:
    def test_count(self) -> None:
        assert [p.name for p in parse_fleet_spec("H100-SXM:8")] == ["H100-SXM"] * 8

    def test_mixed_and_default_count(self) -> None:
        names = [p.name for p in parse_fleet_spec("A100-80GB:2, H200")]
        assert names == ["A100-80GB", "A100-80GB", "H200"]

    @pytest.mark.parametrize("spec", ["", "H100-SXM:0", "B200:2", "H100-SXM:x"])
    def test_bad_specs(self, spec: str) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
            parse_fleet_spec(spec)

    def test_profiles_drive_the_gpus(self) -> None:
        fake = FakeNvml("A100-80GB:1,H100-SXM:1")
        assert [gpu.profile.name for gpu in fake.gpus] == ["A100-80GB", "H100-SXM"]


class TestSameSurfaceAsPynvml:
    def test_every_nvml_function_exists_in_pynvml_with_its_parameters(self) -> None:
        functions = [name for name in dir(FakeNvml) if name.startswith("nvml")]
        functions = [name for name in functions if callable(getattr(FakeNvml, name))]
        assert "nvmlDeviceSetPowerManagementLimit" in functions
        for name in functions:
            real = getattr(pynvml, name)
            ours = getattr(FakeNvml, name)
            real_params = list(inspect.signature(real).parameters)
            our_params = list(inspect.signature(ours).parameters)[1:]  # without self
            assert len(our_params) == len(real_params), name

    def test_constants_equal_pynvml(self) -> None:
        constants = [n for n in dir(FakeNvml) if n.startswith(("NVML_", "nvmlClocksEvent"))]
        assert len(constants) > 10
        for name in constants:
            assert getattr(FakeNvml, name) == getattr(pynvml, name), name

    def test_exceptions_are_pynvmls_own(self) -> None:
        assert FakeNvml.NVMLError is pynvml.NVMLError
        assert FakeNvml.NVMLError_NoPermission is pynvml.NVMLError_NoPermission
        fake = FakeNvml("H100-SXM:1")
        fake.nvmlInit()
        fake.deny_setters()
        with pytest.raises(pynvml.NVMLError_NoPermission):
            fake.nvmlDeviceSetPowerManagementLimit(fake.nvmlDeviceGetHandleByIndex(0), 300_000)


class TestNvmlRulesAndUnits:
    def test_calls_before_init_are_uninitialized(self) -> None:
        fake = FakeNvml("H100-SXM:1")
        with pytest.raises(pynvml.NVMLError_Uninitialized):
            fake.nvmlDeviceGetCount()

    def test_limits_in_milliwatts(self) -> None:
        fake = FakeNvml("H100-SXM:1")
        fake.nvmlInit()
        handle = fake.nvmlDeviceGetHandleByIndex(0)
        assert fake.nvmlDeviceGetPowerManagementLimitConstraints(handle) == [200_000, 700_000]
        assert fake.nvmlDeviceGetPowerManagementDefaultLimit(handle) == 700_000

    def test_limit_outside_constraints_is_invalid(self) -> None:
        fake = FakeNvml("H100-SXM:1")
        fake.nvmlInit()
        handle = fake.nvmlDeviceGetHandleByIndex(0)
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            fake.nvmlDeviceSetPowerManagementLimit(handle, 150_000)
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            fake.nvmlDeviceSetGpuLockedClocks(handle, 1500, 1000)

    def test_power_follows_the_shared_model(self) -> None:
        clock = ManualClock()
        fake = FakeNvml("H100-SXM:1", load=ConstantLoad(BUSY), clock=clock.now)
        backend = _backend(fake)
        backend.set_power_limit(0, 400)
        backend.set_clock_ceiling(0, 1500)
        expected = operating_point(
            get_profile("H100-SXM"), BUSY, clock_ceiling_mhz=1500, power_limit_w=400
        )
        clock.advance(SETTLE_S)
        reading = backend.read(0)
        assert reading.power_w == pytest.approx(expected.power_w, abs=1e-3)
        assert reading.sm_clock_mhz == expected.sm_clock_mhz

    def test_locked_range_starts_at_the_lowest_clock(self) -> None:
        fake = FakeNvml("A100-80GB:1")
        _backend(fake).set_clock_ceiling(0, 1275)
        assert fake.gpus[0].locked_clocks_mhz == (210, 1275)

    def test_utilisation_and_idle_reason(self) -> None:
        fake = FakeNvml("H200:2", load=ConstantLoad(per_gpu={1: BUSY}))
        backend = _backend(fake)
        idle, busy = backend.read(0), backend.read(1)
        assert idle.gpu_utilization_pct == 0
        assert "gpu_idle" in idle.clock_event_reasons
        assert busy.gpu_utilization_pct == 90
        assert "gpu_idle" not in busy.clock_event_reasons
        assert busy.power_w > idle.power_w


class TestEnergy:
    def test_energy_integrates_power_over_fake_time(self) -> None:
        clock = ManualClock()
        fake = FakeNvml("H100-SXM:1", load=ConstantLoad(BUSY), clock=clock.now)
        backend = _backend(fake)
        first = backend.read(0)
        clock.advance(10.0)
        second = backend.read(0)
        assert first.energy_j is not None
        assert second.energy_j is not None
        assert second.energy_j - first.energy_j == pytest.approx(first.power_w * 10.0, abs=0.01)

    def test_a_setter_splits_the_interval(self) -> None:
        clock = ManualClock()
        fake = FakeNvml(
            "H100-SXM:1", load=ConstantLoad(PhaseDemand(prefill_frac=1.0)), clock=clock.now
        )
        backend = _backend(fake)
        start = backend.read(0)
        clock.advance(4.0)
        backend.set_power_limit(0, 300)
        clock.advance(6.0)
        end = backend.read(0)
        assert start.energy_j is not None
        assert end.energy_j is not None
        # One 100 ms period overshoots (1.39x the new limit) before the limiter catches up.
        expected_j = start.power_w * 4.0 + 0.1 * OVERSHOOT_RATIO * 300 + 300 * 5.9
        assert end.energy_j - start.energy_j == pytest.approx(expected_j, abs=0.01)

    def test_scripted_load_under_fake_time(self) -> None:
        clock = ManualClock()
        load = ScriptedLoad([(0.0, PhaseDemand()), (5.0, PhaseDemand(prefill_frac=1.0))])
        backend = _backend(FakeNvml("A100-80GB:1", load=load, clock=clock.now))
        idle_w = backend.read(0).power_w
        clock.advance(5.0 + SETTLE_S)
        assert backend.read(0).power_w > 5 * idle_w


class TestFaults:
    def test_library_missing(self) -> None:
        fake = FakeNvml("H100-SXM:1")
        fake.library_missing()
        with pytest.raises(errors.LibraryNotFound):
            NvmlBackend(fake).open()

    def test_lost_gpu_fails_every_call_until_restored(self) -> None:
        fake = FakeNvml("H100-SXM:2")
        backend = _backend(fake)
        fake.lose_gpu(1)
        with pytest.raises(errors.GpuLost) as caught:
            backend.read(1)
        assert caught.value.gpu_index == 1
        with pytest.raises(errors.GpuLost):
            backend.set_power_limit(1, 300)
        assert backend.read(0).power_w > 0  # the other GPU is unaffected
        fake.lose_gpu(1, lost=False)
        assert backend.set_power_limit(1, 300).confirmed

    def test_gpu_lost_at_start_is_reported_and_retried_later(self) -> None:
        fake = FakeNvml("H100-SXM:3")
        fake.lose_gpu(2)
        inventory = NvmlBackend(fake).open()
        assert [gpu.index for gpu in inventory.gpus] == [0, 1]
        assert isinstance(inventory.failures[2], errors.GpuLost)

    def test_lost_gpu_rediscovered_on_first_use(self) -> None:
        fake = FakeNvml("H100-SXM:2")
        fake.lose_gpu(1)
        backend = NvmlBackend(fake)
        backend.open()
        fake.lose_gpu(1, lost=False)
        assert backend.set_clock_ceiling(1, 1410).clamped_mhz == 1410

    def test_permission_denied_on_setters_only(self) -> None:
        fake = FakeNvml("H100-SXM:1")
        backend = _backend(fake)
        fake.deny_setters()
        with pytest.raises(errors.NoPermission):
            backend.set_power_limit(0, 300)
        with pytest.raises(errors.NoPermission):
            backend.set_clock_ceiling(0, 1000)
        assert fake.gpus[0].power_limit_mw == 700_000
        assert fake.gpus[0].locked_clocks_mhz is None
        assert not backend.settings(0).clock_ceiling_known  # a failed write records nothing
        assert backend.read(0).power_w > 0

    def test_permission_denied_on_one_gpu(self) -> None:
        fake = FakeNvml("H100-SXM:2")
        backend = _backend(fake)
        fake.deny_setters(gpu_index=0)
        with pytest.raises(errors.NoPermission):
            backend.set_power_limit(0, 300)
        assert backend.set_power_limit(1, 300).changed

    def test_optional_readings_may_be_unsupported(self) -> None:
        fake = FakeNvml("A100-80GB:1")
        backend = _backend(fake)
        fake.make_unsupported(
            "nvmlDeviceGetTotalEnergyConsumption",
            "nvmlDeviceGetTemperature",
            "nvmlDeviceGetUtilizationRates",
        )
        reading = backend.read(0)
        assert reading.energy_j is None
        assert reading.temperature_c is None
        assert reading.gpu_utilization_pct is None
        assert reading.power_w > 0

    def test_old_driver_falls_back_to_throttle_reasons(self) -> None:
        fake = FakeNvml("A100-80GB:1")
        backend = _backend(fake)
        fake.inject(
            Fault(
                pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                functions=frozenset({"nvmlDeviceGetCurrentClocksEventReasons"}),
            )
        )
        assert backend.read(0).clock_event_reasons == ("gpu_idle",)
        assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1
        fake.make_unsupported("nvmlDeviceGetCurrentClocksThrottleReasons")
        assert backend.read(0).clock_event_reasons == ()

    def test_required_reading_unsupported_raises(self) -> None:
        fake = FakeNvml("A100-80GB:1")
        backend = _backend(fake)
        fake.make_unsupported("nvmlDeviceGetPowerUsage")
        with pytest.raises(errors.NotSupported):
            backend.read(0)

    def test_slow_calls_take_time_on_the_sleep_clock(self) -> None:
        clock = ManualClock()
        fake = FakeNvml("H100-SXM:1", clock=clock.now, sleep=clock.sleep)
        backend = _backend(fake)
        fake.slow_calls(2.0, "nvmlDeviceSetPowerManagementLimit")
        before_s = clock.now()
        backend.set_power_limit(0, 300)
        assert clock.now() - before_s == pytest.approx(2.0)

    def test_fault_with_times_wears_off(self) -> None:
        fake = FakeNvml("H100-SXM:1")
        backend = _backend(fake)
        fake.inject(Fault(pynvml.NVML_ERROR_TIMEOUT, functions=SETTER_FUNCTIONS, times=1))
        with pytest.raises(errors.GpuTimeout):
            backend.set_power_limit(0, 300)
        assert backend.set_power_limit(0, 300).changed

    def test_clear_faults(self) -> None:
        fake = FakeNvml("H100-SXM:1")
        backend = _backend(fake)
        fake.deny_setters()
        fake.clear_faults()
        assert backend.set_power_limit(0, 300).changed

    def test_external_limit_lowers_enforced(self) -> None:
        clock = ManualClock()
        load = ConstantLoad(PhaseDemand(prefill_frac=1.0))
        fake = FakeNvml("H100-SXM:1", load=load, clock=clock.now)
        backend = _backend(fake)
        fake.set_external_limit(0, 250)
        result = backend.set_power_limit(0, 500)
        assert result.confirmed  # our limit is in place ...
        assert result.enforced_w == 250  # ... but a lower one is enforced
        clock.advance(2 * SETTLE_S)
        assert backend.read(0).power_w <= 250 + 0.01


class TestNvmlCallsAndIdentity:
    def test_identical_sets_reach_nvml_once(self) -> None:
        fake = FakeNvml("H100-SXM:1")
        backend = _backend(fake)
        for _ in range(3):
            backend.set_power_limit(0, 450)
            backend.set_clock_ceiling(0, 1500)
        assert fake.calls["nvmlDeviceSetPowerManagementLimit"] == 1
        assert fake.calls["nvmlDeviceSetGpuLockedClocks"] == 1

    def test_uuids_stable_per_seed_and_distinct_across_nodes(self) -> None:
        a1 = FakeNvml("H100-SXM:2", seed="node-a").gpus
        a2 = FakeNvml("H100-SXM:2", seed="node-a").gpus
        b = FakeNvml("H100-SXM:2", seed="node-b").gpus
        assert [g.uuid for g in a1] == [g.uuid for g in a2]
        assert not {g.uuid for g in a1} & {g.uuid for g in b}

    def test_mig_devices_in_inventory(self) -> None:
        fake = FakeNvml("A100-80GB:2", mig_devices={0: 3})
        inventory = NvmlBackend(fake).open()
        gpu0, gpu1 = inventory.gpus
        assert len(gpu0.mig_uuids) == 3
        assert all(uuid.startswith("MIG-") for uuid in gpu0.mig_uuids)
        assert gpu1.mig_uuids == ()
        assert {inventory.index_by_uuid()[uuid] for uuid in gpu0.mig_uuids} == {0}

    def test_handle_by_uuid(self) -> None:
        fake = FakeNvml("A100-80GB:2", mig_devices={1: 1})
        fake.nvmlInit()
        assert fake.nvmlDeviceGetHandleByUUID(fake.gpus[1].uuid) == FakeHandle(1)
        assert fake.nvmlDeviceGetHandleByUUID(fake.gpus[1].mig_uuids[0]) == FakeHandle(1, 0)
        with pytest.raises(pynvml.NVMLError_NotFound):
            fake.nvmlDeviceGetHandleByUUID("GPU-nope")

    def test_call_observer_sees_every_call(self) -> None:
        seen: list[tuple[str, bool]] = []
        fake = FakeNvml("H100-SXM:1")
        backend = NvmlBackend(
            fake, on_call=lambda name, seconds, failed: seen.append((name, failed))
        )
        backend.open()
        fake.deny_setters()
        with pytest.raises(errors.NoPermission):
            backend.set_power_limit(0, 300)
        assert ("nvmlInit", False) in seen
        assert ("nvmlDeviceSetPowerManagementLimit", True) in seen
        assert sum(count for count in fake.calls.values()) == len(seen)

    def test_concurrent_setters_on_all_gpus(self) -> None:
        fake = FakeNvml("H100-SXM:8")
        backend = _backend(fake)
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda i: backend.set_power_limit(i, 300 + 10 * i), range(8)))
        assert all(result.confirmed for result in results)
        assert [gpu.power_limit_mw for gpu in fake.gpus] == [300_000 + 10_000 * i for i in range(8)]
