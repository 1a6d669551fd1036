"""The GpuBackend contract: units, ranges, idempotency and read-back.

Read-only tests run over the fake NVML and, where a GPU is present, over real NVML (marker
`gpu`; the real module is wrapped so no setter can be reached). Tests that set knobs run over the
fake only: a test never sets anything on a real GPU.
"""

from __future__ import annotations

import pytest

from polca.power.sensor import OVERSHOOT_RATIO
from polca_node.gpu.backend import CLOCK_EVENT_REASONS, GpuBackend, GpuInfo
from polca_node.gpu.errors import InvalidArgument, NotInitialized
from polca_node.gpu.fake_nvml import FakeNvml, ManualClock
from polca_node.gpu.nvml_backend import NvmlBackend

KNOWN_REASONS = set(CLOCK_EVENT_REASONS.values())
# A change shows fully in GetPowerUsage after its 1 s window and one 100 ms refresh.
SETTLE_S = 1.1


def _gpus(backend: GpuBackend) -> tuple[GpuInfo, ...]:
    gpus = backend.inventory().gpus
    assert gpus, "the contract needs at least one GPU"
    return gpus


class TestReadOnlyContract:
    def test_is_a_gpu_backend(self, readonly_backend: NvmlBackend) -> None:
        assert isinstance(readonly_backend, GpuBackend)

    def test_inventory_identities(self, readonly_backend: NvmlBackend) -> None:
        inventory = readonly_backend.inventory()
        gpus = _gpus(readonly_backend)
        assert [gpu.index for gpu in gpus] == sorted({gpu.index for gpu in gpus})
        assert all(gpu.uuid.startswith("GPU-") for gpu in gpus)
        assert len({gpu.uuid for gpu in gpus}) == len(gpus)
        assert all(gpu.name for gpu in gpus)
        assert inventory.failures == {}
        for gpu in gpus:
            assert inventory.index_by_uuid()[gpu.uuid] == gpu.index

    def test_power_limit_constraints_in_watts(self, readonly_backend: NvmlBackend) -> None:
        for gpu in _gpus(readonly_backend):
            # Watts, not milliwatts: datacenter GPUs accept limits between tens and ~1500 W.
            assert 10 <= gpu.min_limit_w <= gpu.default_limit_w <= gpu.max_limit_w <= 1500
            assert gpu.min_limit_w <= gpu.power_limit_w <= gpu.max_limit_w
            assert 0 < gpu.enforced_limit_w <= gpu.max_limit_w

    def test_clock_table(self, readonly_backend: NvmlBackend) -> None:
        for gpu in _gpus(readonly_backend):
            assert 100 <= gpu.max_sm_clock_mhz <= 5000  # MHz, not Hz or kHz
            clocks = gpu.supported_clocks_mhz
            assert list(clocks) == sorted(set(clocks), reverse=True)
            if clocks:
                assert clocks[0] <= gpu.max_sm_clock_mhz
                assert clocks[-1] > 0

    def test_reading_units_and_ranges(self, readonly_backend: NvmlBackend) -> None:
        for gpu in _gpus(readonly_backend):
            reading = readonly_backend.read(gpu.index)
            assert reading.index == gpu.index
            assert 0 < reading.power_w < 1.5 * gpu.max_limit_w  # W, not mW
            assert reading.energy_j is None or reading.energy_j >= 0
            assert 0 < reading.sm_clock_mhz <= gpu.max_sm_clock_mhz
            for pct in (reading.gpu_utilization_pct, reading.memory_utilization_pct):
                assert pct is None or 0 <= pct <= 100
            assert reading.temperature_c is None or 0 <= reading.temperature_c <= 120
            unknown = {r for r in reading.clock_event_reasons if not r.startswith("bit_")}
            assert unknown <= KNOWN_REASONS

    def test_instant_power_field_in_watts(self, readonly_backend: NvmlBackend) -> None:
        # NVML_FI_DEV_POWER_INSTANT where the driver has it (the measured H200 does).
        for gpu in _gpus(readonly_backend):
            reading = readonly_backend.read(gpu.index)
            if reading.instant_power_w is None:
                assert reading.power_source == "average"
                continue
            assert 0 < reading.instant_power_w < 1.5 * gpu.max_limit_w  # W, not mW
            assert reading.power_source == "instant"

    def test_energy_never_decreases(self, readonly_backend: NvmlBackend) -> None:
        for gpu in _gpus(readonly_backend):
            first = readonly_backend.read(gpu.index).energy_j
            second = readonly_backend.read(gpu.index).energy_j
            if first is not None and second is not None:
                assert second >= first

    def test_settings_agree_with_inventory(self, readonly_backend: NvmlBackend) -> None:
        for gpu in _gpus(readonly_backend):
            settings = readonly_backend.settings(gpu.index)
            assert settings.default_limit_w == gpu.default_limit_w
            assert gpu.min_limit_w <= settings.power_limit_w <= gpu.max_limit_w
            assert settings.enforced_limit_w <= settings.power_limit_w + 1.0
            # NVML cannot read locked clocks: a fresh backend does not claim to know them.
            assert settings.clock_ceiling_known is False
            assert settings.clock_ceiling_mhz is None

    def test_reading_carries_settings(self, readonly_backend: NvmlBackend) -> None:
        gpu = _gpus(readonly_backend)[0]
        reading = readonly_backend.read(gpu.index)
        assert reading.settings.index == gpu.index
        assert reading.settings.default_limit_w == gpu.default_limit_w

    def test_unknown_index_is_invalid_argument(self, readonly_backend: NvmlBackend) -> None:
        count = len(_gpus(readonly_backend))
        with pytest.raises(InvalidArgument) as caught:
            readonly_backend.read(count + 7)
        assert caught.value.gpu_index == count + 7

    def test_calls_after_close_are_not_initialized(self, readonly_backend: NvmlBackend) -> None:
        readonly_backend.close()
        with pytest.raises(NotInitialized):
            readonly_backend.read(0)
        readonly_backend.open()  # the fixture closes it again


class TestPowerLimitContract:
    """Over the fake only: these set power limits."""

    def test_set_then_read_back(self, fake_backend: NvmlBackend) -> None:
        for gpu in _gpus(fake_backend):
            target_w = (gpu.min_limit_w + gpu.max_limit_w) / 2
            result = fake_backend.set_power_limit(gpu.index, target_w)
            assert result.changed
            assert result.clamped_w == pytest.approx(target_w)
            assert result.read_back_w == pytest.approx(target_w)
            assert result.previous_w == gpu.power_limit_w
            assert result.confirmed
            assert fake_backend.settings(gpu.index).power_limit_w == pytest.approx(target_w)

    def test_second_identical_set_changes_nothing(self, fake_backend: NvmlBackend) -> None:
        gpu = _gpus(fake_backend)[1]
        first = fake_backend.set_power_limit(gpu.index, gpu.min_limit_w + 50)
        second = fake_backend.set_power_limit(gpu.index, gpu.min_limit_w + 50)
        assert first.changed
        assert not second.changed
        assert second.previous_w == second.read_back_w == first.read_back_w

    @pytest.mark.parametrize(
        ("offset_w", "expect"), [(-1000.0, "min"), (+1000.0, "max"), (-0.001, "min")]
    )
    def test_clamped_into_constraints(
        self, fake_backend: NvmlBackend, offset_w: float, expect: str
    ) -> None:
        for gpu in _gpus(fake_backend):
            edge_w = gpu.min_limit_w if expect == "min" else gpu.max_limit_w
            result = fake_backend.set_power_limit(gpu.index, edge_w + offset_w)
            assert result.clamped_w == edge_w
            assert result.read_back_w == edge_w

    def test_none_restores_default(self, fake_backend: NvmlBackend) -> None:
        gpu = _gpus(fake_backend)[0]
        fake_backend.set_power_limit(gpu.index, gpu.min_limit_w)
        result = fake_backend.set_power_limit(gpu.index, None)
        assert result.requested_w is None
        assert result.clamped_w == gpu.default_limit_w
        assert result.read_back_w == gpu.default_limit_w
        assert result.changed

    def test_none_when_at_default_changes_nothing(self, fake_backend: NvmlBackend) -> None:
        gpu = _gpus(fake_backend)[0]
        assert not fake_backend.set_power_limit(gpu.index, None).changed

    @pytest.mark.parametrize("bad_w", [float("nan"), float("inf")])
    def test_non_finite_limit_is_invalid(self, fake_backend: NvmlBackend, bad_w: float) -> None:
        with pytest.raises(InvalidArgument):
            fake_backend.set_power_limit(0, bad_w)


class TestClockCeilingContract:
    """Over the fake only: these lock clocks."""

    def test_supported_clock_is_taken_as_is(self, fake_backend: NvmlBackend) -> None:
        for gpu in _gpus(fake_backend):
            clock_mhz = gpu.supported_clocks_mhz[len(gpu.supported_clocks_mhz) // 2]
            result = fake_backend.set_clock_ceiling(gpu.index, clock_mhz)
            assert result.clamped_mhz == clock_mhz
            assert result.read_back_mhz == clock_mhz
            assert result.changed

    def test_between_clocks_rounds_down(self, fake_backend: NvmlBackend) -> None:
        for gpu in _gpus(fake_backend):
            upper, lower = gpu.supported_clocks_mhz[3], gpu.supported_clocks_mhz[4]
            result = fake_backend.set_clock_ceiling(gpu.index, (upper + lower) // 2)
            assert result.clamped_mhz == lower

    def test_out_of_range_clamps(self, fake_backend: NvmlBackend) -> None:
        gpu = _gpus(fake_backend)[0]
        low = fake_backend.set_clock_ceiling(gpu.index, 1)
        assert low.clamped_mhz == min(gpu.supported_clocks_mhz)
        high = fake_backend.set_clock_ceiling(gpu.index, 100_000)
        assert high.clamped_mhz == gpu.max_sm_clock_mhz

    def test_first_set_writes_even_when_unknown(self, fake_backend: NvmlBackend) -> None:
        result = fake_backend.set_clock_ceiling(0, None)
        assert not result.previous_known
        assert result.changed  # unknown before: reset anyway, so the state is known
        assert fake_backend.settings(0).clock_ceiling_known

    def test_second_identical_set_changes_nothing(self, fake_backend: NvmlBackend) -> None:
        first = fake_backend.set_clock_ceiling(1, 1305)
        second = fake_backend.set_clock_ceiling(1, 1305)
        assert first.changed
        assert not second.changed
        assert second.previous_known
        assert second.previous_mhz == first.clamped_mhz

    def test_requests_that_clamp_alike_are_idempotent(self, fake_backend: NvmlBackend) -> None:
        gpu = _gpus(fake_backend)[1]
        upper, lower = gpu.supported_clocks_mhz[5], gpu.supported_clocks_mhz[6]
        fake_backend.set_clock_ceiling(gpu.index, lower)
        assert not fake_backend.set_clock_ceiling(gpu.index, upper - 1).changed

    def test_settings_and_none_remove_the_ceiling(self, fake_backend: NvmlBackend) -> None:
        fake_backend.set_clock_ceiling(2, 1110)
        assert fake_backend.settings(2).clock_ceiling_mhz == 1110
        result = fake_backend.set_clock_ceiling(2, None)
        assert result.changed
        assert result.clamped_mhz is None
        settings = fake_backend.settings(2)
        assert settings.clock_ceiling_known
        assert settings.clock_ceiling_mhz is None

    @pytest.mark.parametrize("bad_mhz", [0, -100])
    def test_non_positive_clock_is_invalid(self, fake_backend: NvmlBackend, bad_mhz: int) -> None:
        with pytest.raises(InvalidArgument):
            fake_backend.set_clock_ceiling(0, bad_mhz)


class TestEffectsOnTheFake:
    """The knobs act on the modelled GPU, so the daemon's loops see their effect."""

    def test_ceiling_lowers_clock_and_power(
        self, fake: FakeNvml, fake_backend: NvmlBackend, clock: ManualClock
    ) -> None:
        from polca.power.model import PhaseDemand
        from polca_node.gpu.load import ConstantLoad

        fake.load = ConstantLoad(PhaseDemand(prefill_frac=0.3, decode_frac=0.6))
        clock.advance(SETTLE_S)
        before = fake_backend.read(1)
        fake_backend.set_clock_ceiling(1, 1110)
        clock.advance(SETTLE_S)
        after = fake_backend.read(1)
        assert after.sm_clock_mhz <= 1110 < before.sm_clock_mhz
        assert after.power_w < before.power_w

    def test_power_limit_caps_power(
        self, fake: FakeNvml, fake_backend: NvmlBackend, clock: ManualClock
    ) -> None:
        from polca.power.model import PhaseDemand
        from polca_node.gpu.load import ConstantLoad

        fake.load = ConstantLoad(PhaseDemand(prefill_frac=1.0))
        clock.advance(SETTLE_S)
        assert fake_backend.read(1).power_w > 600
        fake_backend.set_power_limit(1, 350)
        clock.advance(SETTLE_S)
        reading = fake_backend.read(1)
        # The 1 s average still holds the one overshooting period after the limit dropped.
        assert reading.power_w <= 350 + 0.1 * (OVERSHOOT_RATIO - 1) * 350 + 0.01
        assert "sw_power_cap" in reading.clock_event_reasons
        clock.advance(SETTLE_S)
        assert fake_backend.read(1).power_w <= 350 + 0.01
