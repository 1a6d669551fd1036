"""The fake NVML reports power as the measured H200 does, seen through the production backend:
the 1 s averaged GetPowerUsage, the instant and average fields, the limiter's clock drop and
its reason bit, the burst transient, the energy read's cost, knobs kept across a restart."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pynvml
import pytest

from polca.power.model import PhaseDemand
from polca.power.sensor import OVERSHOOT_RATIO
from polca_node.fake_gpus import PersistentFakeNvml, energy_read_s
from polca_node.gpu.backend import GpuReading
from polca_node.gpu.fake_nvml import MEASURED_ENERGY_READ_S, FakeNvml, ManualClock
from polca_node.gpu.load import ConstantLoad, ScriptedLoad
from polca_node.gpu.nvml_backend import NvmlBackend

GEMM = PhaseDemand(train_frac=1.0)  # compute-bound: the limiter holds it at the limit
DECODE = PhaseDemand(decode_frac=1.0)
IDLE_WITH_CONTEXT = PhaseDemand(context=True)


def _open(fake: FakeNvml) -> NvmlBackend:
    backend = NvmlBackend(fake)
    backend.open()
    return backend


def _stepped(clock: ManualClock, after: PhaseDemand, at_s: float = 2.0) -> NvmlBackend:
    """One H200, idle with a context, stepping to `after` at `at_s`."""
    load = ScriptedLoad([(0.0, IDLE_WITH_CONTEXT), (at_s, after)])
    return _open(FakeNvml("H200:1", load=load, clock=clock.now, sleep=clock.sleep))


class TestAveragedReading:
    def test_step_shows_as_a_one_second_ramp_in_get_power_usage(self) -> None:
        clock = ManualClock()
        backend = _stepped(clock, DECODE)
        clock.advance(2.0)
        start = backend.read(0, energy=False)
        assert start.power_w == pytest.approx(120.0)  # H200 idle with a context
        averages, instants = [], []
        for _ in range(12):
            clock.advance(0.1)
            reading = backend.read(0, energy=False)
            averages.append(reading.power_w)
            instants.append(reading.instant_power_w)
        # The instant field has the new level after one refresh; the average takes 1 s, in
        # ten equal steps of a tenth of the step.
        assert instants[0] == pytest.approx(406.0)
        step_w = 406.0 - 120.0
        for k, average_w in enumerate(averages[:10], start=1):
            assert average_w == pytest.approx(120.0 + k * step_w / 10, abs=0.01)
        assert averages[-1] == pytest.approx(406.0)

    def test_average_field_equals_get_power_usage(self) -> None:
        clock = ManualClock()
        fake = FakeNvml("H200:1", load=ConstantLoad(DECODE), clock=clock.now)
        fake.nvmlInit()
        handle = fake.nvmlDeviceGetHandleByIndex(0)
        clock.advance(0.35)
        values = fake.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_POWER_AVERAGE])
        assert values[0].value.uiVal == fake.nvmlDeviceGetPowerUsage(handle)


class TestFieldValues:
    def test_pynvml_structure(self) -> None:
        clock = ManualClock()
        fake = FakeNvml("H100-SXM:1", load=ConstantLoad(DECODE), clock=clock.now)
        fake.nvmlInit()
        handle = fake.nvmlDeviceGetHandleByIndex(0)
        wanted = [pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_FI_DEV_POWER_AVERAGE, 1]
        values = fake.nvmlDeviceGetFieldValues(handle, wanted)
        assert len(values) == 3
        assert all(isinstance(v, pynvml.c_nvmlFieldValue_t) for v in values)
        assert [v.fieldId for v in values] == wanted
        for value in values[:2]:
            assert value.nvmlReturn == pynvml.NVML_SUCCESS
            assert value.valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            assert value.value.uiVal == 380_000  # mW, the H100's decode
            assert value.timestamp == round(clock.now() * 1e6)
        assert values[2].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED

    def test_scoped_field_ids_as_pynvml_accepts(self) -> None:
        fake = FakeNvml("H200:1", load=ConstantLoad(DECODE))
        fake.nvmlInit()
        handle = fake.nvmlDeviceGetHandleByIndex(0)
        (value,) = fake.nvmlDeviceGetFieldValues(handle, [(pynvml.NVML_FI_DEV_POWER_INSTANT, 0)])
        assert (value.fieldId, value.scopeId, value.nvmlReturn) == (186, 0, pynvml.NVML_SUCCESS)

    def test_backend_reads_the_instant_field(self) -> None:
        reading = _open(FakeNvml("H200:1", load=ConstantLoad(DECODE))).read(0)
        assert reading.instant_power_w == pytest.approx(406.0)
        assert reading.power_source == "instant"
        assert reading.fresh_power_w == reading.instant_power_w

    def test_driver_without_power_fields_falls_back_to_the_average(self) -> None:
        fake = FakeNvml("H200:1", load=ConstantLoad(DECODE), power_fields=False)
        reading = _open(fake).read(0)
        assert reading.instant_power_w is None
        assert reading.power_source == "average"
        assert reading.fresh_power_w == reading.power_w

    def test_binding_without_field_values_falls_back_to_the_average(self) -> None:
        fake = FakeNvml("H200:1", load=ConstantLoad(DECODE))
        fake.make_unsupported("nvmlDeviceGetFieldValues")
        reading = _open(fake).read(0)
        assert reading.instant_power_w is None
        assert reading.power_w == pytest.approx(406.0)


class TestLimiter:
    def test_burst_overshoots_one_period_then_the_clock_drops_with_its_reason(self) -> None:
        clock = ManualClock()
        backend = _stepped(clock, GEMM)
        clock.advance(2.0)  # the burst starts: the limiter has not acted yet
        first = backend.read(0, energy=False)
        assert first.sm_clock_mhz == 1980
        assert "sw_power_cap" not in first.clock_event_reasons
        clock.advance(0.1)  # the first period ran at the unlimited demand, bounded
        second = backend.read(0, energy=False)
        assert second.instant_power_w == pytest.approx(OVERSHOOT_RATIO * 700.0)
        assert 1470 <= second.sm_clock_mhz <= 1515  # measured: 1470-1515 MHz
        assert "sw_power_cap" in second.clock_event_reasons
        clock.advance(0.1)
        assert backend.read(0, energy=False).instant_power_w == pytest.approx(700.0)
        clock.advance(1.0)
        settled = backend.read(0, energy=False)
        assert settled.power_w == pytest.approx(700.0)  # never above the limit after that
        assert settled.instant_power_w == pytest.approx(700.0)

    def test_ceiling_above_the_limiter_clock_sheds_nothing(self) -> None:
        clock = ManualClock()
        backend = _open(FakeNvml("H200:1", load=ConstantLoad(GEMM), clock=clock.now))
        clock.advance(1.1)
        before = backend.read(0, energy=False)
        backend.set_clock_ceiling(0, 1800)
        clock.advance(1.1)
        after = backend.read(0, energy=False)
        assert after.power_w == pytest.approx(before.power_w)
        assert after.sm_clock_mhz == before.sm_clock_mhz
        assert "sw_power_cap" in after.clock_event_reasons
        backend.set_clock_ceiling(0, 1200)  # below it: the ceiling bites
        clock.advance(1.1)
        below = backend.read(0, energy=False)
        assert below.power_w < 650
        assert below.sm_clock_mhz == 1200
        assert "sw_power_cap" not in below.clock_event_reasons


MEASURED_BURST = (
    Path(__file__).parents[4] / "docs" / "measurements" / "h200-2026-11-30-fields" / "step.json"
)


def test_burst_matches_the_measured_h200_through_the_instant_field() -> None:
    # docs/measurements/h200-2026-11-30-fields: [t_s, phase, instant_mw, average_mw, sm_mhz, bits]
    samples = json.loads(MEASURED_BURST.read_text(encoding="utf-8"))
    limit_w = 700.0
    over = next(i for i, s in enumerate(samples) if s[1] == "gemm" and s[2] / 1e3 > limit_w)
    capped = next(i for i in range(over, len(samples)) if samples[i][5] & 0x4)
    measured_lag_s = samples[capped][0] - samples[over][0]
    # Measured: over the limit with the clock still high and no reason bit, for one refresh.
    assert samples[over][5] == 0
    assert samples[over][4] > 1515
    assert limit_w < samples[over][2] / 1e3 <= OVERSHOOT_RATIO * limit_w
    assert 1470 <= samples[capped][4] <= 1515
    burst_start_s = next(s[0] for s in samples if s[1] == "gemm")
    settled = [s[3] / 1e3 for s in samples if s[1] == "gemm" and s[0] > burst_start_s + 1.3]
    # The fake, sampled every 20 ms the same way.
    clock = ManualClock()
    backend = _stepped(clock, GEMM)
    clock.advance(2.0)
    fake: list[tuple[float, GpuReading]] = []
    for _ in range(100):
        fake.append((clock.now(), backend.read(0, energy=False)))
        clock.advance(0.02)
    fake_over = next(i for i, (_, r) in enumerate(fake) if (r.instant_power_w or 0) > limit_w)
    fake_capped = next(
        i for i, (_, r) in enumerate(fake) if "sw_power_cap" in r.clock_event_reasons
    )
    # The fake's clock drops and its bit is set at the refresh that shows the overshoot; the
    # measured reading of the clock trails the field by one refresh. Both within 0.15 s.
    assert measured_lag_s <= 0.15
    assert fake[fake_capped][0] - fake[fake_over][0] <= 0.15
    assert fake[fake_over][1].instant_power_w == pytest.approx(OVERSHOOT_RATIO * limit_w)
    assert statistics.median(settled) == pytest.approx(fake[-1][1].power_w, rel=0.02)


class TestEnergyReadCost:
    def test_costs_the_measured_time_on_the_fake_clock(self) -> None:
        clock = ManualClock()
        fake = FakeNvml("H200:2", load=ConstantLoad(DECODE), clock=clock.now, sleep=clock.sleep)
        backend = _open(fake)
        start_s = clock.now()
        backend.read(0, energy=False)
        assert clock.now() == start_s  # the other reads cost microseconds: nothing here
        backend.read(0)
        assert clock.now() - start_s == pytest.approx(MEASURED_ENERGY_READ_S)

    def test_zero_cost_for_fast_tests(self) -> None:
        clock = ManualClock()
        fake = FakeNvml("H200:1", clock=clock.now, sleep=clock.sleep, energy_read_s=0.0)
        start_s = clock.now()
        assert _open(fake).read(0).energy_j is not None
        assert clock.now() == start_s

    def test_negative_cost_rejected(self) -> None:
        with pytest.raises(ValueError, match="energy_read_s"):
            FakeNvml("H200:1", energy_read_s=-1.0)


def test_gpu_keeps_its_settings_across_a_daemon_restart(tmp_path: Path) -> None:
    state = tmp_path / "gpus.json"
    clock = ManualClock()

    def daemon() -> NvmlBackend:
        fake = FakeNvml("H200:2", load=ConstantLoad(GEMM), clock=clock.now, seed="node-a")
        backend = NvmlBackend(PersistentFakeNvml(fake, state))
        backend.open()
        return backend

    first = daemon()
    first.set_power_limit(0, 400)
    first.set_clock_ceiling(1, 1200)
    first.close()  # the daemon exits; the GPUs keep what was set
    second = daemon()
    assert second.settings(0).enforced_limit_w == 400
    # The GPUs ran capped all along: no ramp, no transient at the daemon's restart.
    assert second.read(0).power_w == pytest.approx(400.0, abs=0.01)
    assert second.read(0).instant_power_w == pytest.approx(400.0, abs=0.01)
    clock.advance(1.1)
    assert second.read(0).power_w == pytest.approx(400.0, abs=0.01)
    assert second.read(1).sm_clock_mhz == 1200
    assert second.read(1).power_w < 650


class TestDaemonFakeEnergyCost:
    def test_measured_by_default(self) -> None:
        assert energy_read_s({}) == MEASURED_ENERGY_READ_S

    def test_zero_from_the_environment(self) -> None:
        assert energy_read_s({"POLCA_FAKE_ENERGY_READ_S": "0"}) == 0.0

    @pytest.mark.parametrize("bad", ["fast", "-0.1", "2"])
    def test_bad_values_name_the_variable(self, bad: str) -> None:
        with pytest.raises(ValueError, match="POLCA_FAKE_ENERGY_READ_S"):
            energy_read_s({"POLCA_FAKE_ENERGY_READ_S": bad})
