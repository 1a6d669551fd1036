"""A fake NVML: pynvml's function names, constants, units and exceptions over modelled GPUs.

`FakeNvml` stands in for the `pynvml` module wherever the backend takes one, so the production
`NvmlBackend` runs unchanged over it. What is the same as pynvml:
- function names and signatures (the subset the backend uses, plus a few neighbours);
- constants, copied from pynvml (NVML_SUCCESS, NVML_CLOCK_*, NVML_TEMPERATURE_GPU,
  nvmlClocksEventReason* bits, NVML_ERROR_*);
- units: power and limits in mW, energy in mJ, clocks in MHz;
- errors: pynvml's own `NVMLError` classes, so `except pynvml.NVMLError_NoPermission` catches
  the fake's errors too; and NVML's rules (limit outside the constraints → InvalidArgument,
  calls before nvmlInit → Uninitialized).

What is modelled: each GPU has a profile (`polca.power.profiles`) and a load source
(`polca_node.gpu.load`); its power and SM clock follow `polca.power.model.operating_point`
under its clock ceiling and power limit, and NVML reports them as the measured H200 does
(`polca.power.sensor`): the board's power is evaluated once per 100 ms refresh period on the
injectable clock; `nvmlDeviceGetPowerUsage` and the `NVML_FI_DEV_POWER_AVERAGE` field are the
mean of the last second, `NVML_FI_DEV_POWER_INSTANT` the last period; in the first period after
the limiter has to pull the clock down the board overshoots (up to 1.39x the limit), the SM
clock is still the unlimited one and the "SW power cap" reason bit is not yet set. Energy counts
the completed periods. Reading it costs `energy_read_s` (3.9 ms measured) on the injected sleep:
free under a `ManualClock`, real time otherwise; pass 0 for a fake that must not wait.

Fault injection (all thread-safe, may change while a backend runs): `lose_gpu`, `deny_setters`,
`make_unsupported`, `slow_calls`, `library_missing`, `set_external_limit`, or a general `Fault`.
Inspection for tests: `gpus[i]` (state), `calls` (a Counter of NVML calls by name).
"""

# ruff: noqa: N802, N815 - methods and constants carry pynvml's camelCase names on purpose

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

import pynvml

from polca.power.model import OperatingPoint, PhaseDemand, operating_point
from polca.power.profiles import GpuProfile, get_profile
from polca.power.sensor import MEASURED, PowerSensor, SensorSpec
from polca_node.gpu.load import IDLE, ConstantLoad, LoadSource

__all__ = [
    "MEASURED_ENERGY_READ_S",
    "SETTER_FUNCTIONS",
    "FakeGpu",
    "FakeHandle",
    "FakeNvml",
    "Fault",
    "ManualClock",
    "parse_fleet_spec",
]

SETTER_FUNCTIONS: Final = frozenset(
    {
        "nvmlDeviceSetGpuLockedClocks",
        "nvmlDeviceResetGpuLockedClocks",
        "nvmlDeviceSetPowerManagementLimit",
    }
)
_MAX_MIG_DEVICES = 7  # A100 and H100/H200 have seven MIG slices
_UUID_NAMESPACE = uuid.UUID("6f1c5e0a-6d0c-4f43-9a51-2f0a2b6c9d11")  # ours, for stable fake UUIDs
# Measured on the H200 (docs/measurements/h200-2026-11-30): 3,880 µs per call.
MEASURED_ENERGY_READ_S: Final = 0.0039
# A fake left alone longer than this many refresh periods jumps ahead instead of replaying each
# period (an hour under a ManualClock would be 36,000 load evaluations).
_REPLAY_PERIODS = 50


def parse_fleet_spec(spec: str) -> tuple[GpuProfile, ...]:
    """GPU profiles from "H100-SXM:8" or "A100-80GB:4,H100-SXM:4" (count defaults to 1)."""
    profiles: list[GpuProfile] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count_text = part.partition(":")
        count = int(count_text) if count_text else 1
        if count < 1:
            raise ValueError(f"GPU count must be at least 1 in {part!r}")
        profiles.extend([get_profile(name.strip())] * count)
    if not profiles:
        raise ValueError(f"empty fake GPU spec {spec!r}; e.g. 'H100-SXM:8'")
    return tuple(profiles)


class ManualClock:
    """Fake time for tests and benchmarks: `now()` stands still until `advance()` or `sleep()`."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self._now_s = start_s
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now_s

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._now_s += seconds

    sleep = advance


@dataclass(frozen=True, slots=True)
class Fault:
    """Make matching calls slow (`delay_s`) and/or fail (`error_code`, an NVML_ERROR_*).

    `functions` None matches every function; `gpu_index` None matches every GPU and the calls
    that have none (nvmlInit, nvmlDeviceGetCount). `times` None lasts until cleared.
    """

    error_code: int | None = None
    delay_s: float = 0.0
    functions: frozenset[str] | None = None
    gpu_index: int | None = None
    times: int | None = None


@dataclass(frozen=True, slots=True)
class FakeHandle:
    """What nvmlDeviceGetHandleByIndex returns: a GPU, or one MIG device on it."""

    gpu_index: int
    mig_slot: int | None = None


@dataclass(slots=True)
class FakeGpu:
    """The state of one fake GPU. Tests may read it; change it through FakeNvml's methods."""

    index: int
    profile: GpuProfile
    uuid: str
    power_limit_mw: int
    locked_clocks_mhz: tuple[int, int] | None = None  # (min, max) as last set
    external_limit_mw: int | None = None  # an out-of-band limit below ours (BMC, PSU)
    lost: bool = False
    mig_uuids: tuple[str, ...] = ()
    sensor: PowerSensor = field(default_factory=lambda: PowerSensor(0.0))
    next_refresh_s: float = 0.0  # when the period now running ends
    point: OperatingPoint | None = None  # the settled point under the current load and knobs
    demand: PhaseDemand = IDLE
    limiter_caught_up: bool = True  # False in the period after the limiter has to act

    @property
    def energy_mj(self) -> float:
        return self.sensor.energy_j * 1000.0

    @property
    def enforced_limit_mw(self) -> int:
        if self.external_limit_mw is None:
            return self.power_limit_mw
        return min(self.power_limit_mw, self.external_limit_mw)

    @property
    def clock_ceiling_mhz(self) -> int | None:
        return None if self.locked_clocks_mhz is None else self.locked_clocks_mhz[1]


@lru_cache(maxsize=4096)
def _cached_operating_point(
    profile: GpuProfile, demand: PhaseDemand, ceiling_mhz: int | None, limit_w: float
) -> OperatingPoint:
    # The model is NumPy-based; the same inputs recur on every call, so memoise.
    return operating_point(profile, demand, clock_ceiling_mhz=ceiling_mhz, power_limit_w=limit_w)


class FakeNvml:
    """Drop-in for the `pynvml` module over `len(profiles)` modelled GPUs."""

    # Constants, from pynvml so the values cannot drift.
    NVML_SUCCESS = pynvml.NVML_SUCCESS
    NVML_CLOCK_GRAPHICS = pynvml.NVML_CLOCK_GRAPHICS
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
    NVML_CLOCK_VIDEO = pynvml.NVML_CLOCK_VIDEO
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_DEVICE_MIG_DISABLE = pynvml.NVML_DEVICE_MIG_DISABLE
    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
    NVML_ERROR_UNINITIALIZED = pynvml.NVML_ERROR_UNINITIALIZED
    NVML_ERROR_INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
    NVML_ERROR_NOT_FOUND = pynvml.NVML_ERROR_NOT_FOUND
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_UNKNOWN = pynvml.NVML_ERROR_UNKNOWN
    nvmlClocksEventReasonGpuIdle = pynvml.nvmlClocksEventReasonGpuIdle
    nvmlClocksEventReasonApplicationsClocksSetting = (
        pynvml.nvmlClocksEventReasonApplicationsClocksSetting
    )
    nvmlClocksEventReasonSwPowerCap = pynvml.nvmlClocksEventReasonSwPowerCap
    nvmlClocksEventReasonNone = pynvml.nvmlClocksEventReasonNone
    NVML_FI_DEV_POWER_AVERAGE = pynvml.NVML_FI_DEV_POWER_AVERAGE
    NVML_FI_DEV_POWER_INSTANT = pynvml.NVML_FI_DEV_POWER_INSTANT
    NVML_VALUE_TYPE_UNSIGNED_INT = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    # pynvml's exception classes themselves.
    NVMLError = pynvml.NVMLError
    NVMLError_Uninitialized = pynvml.NVMLError_Uninitialized
    NVMLError_InvalidArgument = pynvml.NVMLError_InvalidArgument
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_NoPermission = pynvml.NVMLError_NoPermission
    NVMLError_NotFound = pynvml.NVMLError_NotFound
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVMLError_Unknown = pynvml.NVMLError_Unknown

    def __init__(
        self,
        profiles: Sequence[GpuProfile] | str,
        *,
        load: LoadSource | None = None,
        seed: str = "polca-fake-node",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        mig_devices: Mapping[int, int] | None = None,
        driver_version: str = "550.0-fake",
        energy_read_s: float = MEASURED_ENERGY_READ_S,
        power_fields: bool = True,
        sensor: SensorSpec = MEASURED,
    ) -> None:
        """`profiles`: GpuProfiles or a spec like "H100-SXM:8". `seed` makes the UUIDs (use the
        node name, so fake nodes differ). `mig_devices`: GPU index → MIG devices on it.
        `energy_read_s`: what one energy read costs on `sleep`. `power_fields` False: a driver
        without the power fields (nvmlDeviceGetFieldValues answers NOT_SUPPORTED per field)."""
        if energy_read_s < 0:
            raise ValueError("energy_read_s must not be negative")
        fleet = parse_fleet_spec(profiles) if isinstance(profiles, str) else tuple(profiles)
        self.load: LoadSource = load if load is not None else ConstantLoad()
        self.calls: Counter[str] = Counter()
        self._clock = clock
        self._sleep = sleep
        self._driver_version = driver_version
        self.energy_read_s = energy_read_s
        self._power_fields = power_fields
        self._spec = sensor
        self._lock = threading.RLock()
        self._init_count = 0
        self._faults: list[Fault] = []
        self._remaining: dict[int, int] = {}  # id(fault) → calls left, for faults with `times`
        self._started_s = clock()
        mig_devices = mig_devices or {}
        self.gpus: tuple[FakeGpu, ...] = tuple(
            FakeGpu(
                index=index,
                profile=profile,
                uuid=f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{seed}/{index}')}",
                power_limit_mw=round(profile.default_limit_w * 1000),
                mig_uuids=tuple(
                    f"MIG-{uuid.uuid5(_UUID_NAMESPACE, f'{seed}/{index}/mig{slot}')}"
                    for slot in range(min(mig_devices.get(index, 0), _MAX_MIG_DEVICES))
                ),
            )
            for index, profile in enumerate(fleet)
        )
        self.settle()

    def settle(self) -> None:
        """As if every GPU had run a while with its knobs and its load of now: the readings start
        settled, without a ramp or a transient (a fake starts, or restores its knobs, on GPUs
        that did not just start)."""
        with self._lock:
            now_s = self._clock()
            for gpu in self.gpus:
                self._period_point(gpu, now_s)
                point = self._point(gpu)
                gpu.sensor = PowerSensor(point.power_w, self._spec)
                gpu.sensor.hold(
                    point.power_w, 0.0, capped=point.power_capped, limit_w=self._limit_w(gpu)
                )
                gpu.next_refresh_s = now_s + self._spec.refresh_s
                self._refresh(gpu)

    # -- fault injection ---------------------------------------------------------------------

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
            if fault.times is not None:
                self._remaining[id(fault)] = fault.times
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            self._faults = [f for f in self._faults if f is not fault]
            self._remaining.pop(id(fault), None)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._remaining.clear()

    def lose_gpu(self, index: int, lost: bool = True) -> None:
        """Every call on GPU `index` fails with GpuIsLost until `lose_gpu(index, False)`."""
        with self._lock:
            self.gpus[index].lost = lost

    def deny_setters(self, gpu_index: int | None = None) -> Fault:
        """Setters fail with NoPermission (a daemon without CAP_SYS_ADMIN)."""
        return self.inject(
            Fault(pynvml.NVML_ERROR_NO_PERMISSION, functions=SETTER_FUNCTIONS, gpu_index=gpu_index)
        )

    def make_unsupported(self, *functions: str, gpu_index: int | None = None) -> Fault:
        return self.inject(
            Fault(
                pynvml.NVML_ERROR_NOT_SUPPORTED, functions=frozenset(functions), gpu_index=gpu_index
            )
        )

    def slow_calls(self, delay_s: float, *functions: str, gpu_index: int | None = None) -> Fault:
        """Matching calls (all, without `functions`) take `delay_s` longer, on the sleep clock."""
        return self.inject(
            Fault(delay_s=delay_s, functions=frozenset(functions) or None, gpu_index=gpu_index)
        )

    def library_missing(self) -> Fault:
        """nvmlInit fails as on a node without the driver's libnvidia-ml.so."""
        return self.inject(
            Fault(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, functions=frozenset({"nvmlInit"}))
        )

    def set_external_limit(self, index: int, limit_w: float | None) -> None:
        """An out-of-band limit (BMC, power brake): the enforced limit drops below ours."""
        with self._lock:
            gpu = self.gpus[index]
            self._advance(gpu)
            gpu.external_limit_mw = None if limit_w is None else round(limit_w * 1000)
            self._refresh(gpu)

    # -- plumbing ----------------------------------------------------------------------------

    def _enter(self, function: str, gpu_index: int | None = None) -> None:
        """Count, delay and fail a call as the faults say; then check NVML's own rules."""
        delay_s = 0.0
        error_code: int | None = None
        with self._lock:
            self.calls[function] += 1
            for fault in list(self._faults):
                if fault.functions is not None and function not in fault.functions:
                    continue
                if fault.gpu_index is not None and fault.gpu_index != gpu_index:
                    continue
                delay_s += fault.delay_s
                if fault.error_code is not None and error_code is None:
                    error_code = fault.error_code
                if fault.times is not None:
                    self._remaining[id(fault)] -= 1
                    if self._remaining[id(fault)] <= 0:
                        self.remove(fault)
        if delay_s > 0:
            self._sleep(delay_s)
        if error_code is not None:
            raise pynvml.NVMLError(error_code)
        if function != "nvmlInit" and self._init_count == 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if gpu_index is not None:
            if not 0 <= gpu_index < len(self.gpus):
                raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if self.gpus[gpu_index].lost:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    def _gpu(self, function: str, handle: object, *, allow_mig: bool = False) -> FakeGpu:
        if not isinstance(handle, FakeHandle):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._enter(function, handle.gpu_index)
        if handle.mig_slot is not None and not allow_mig:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        gpu = self.gpus[handle.gpu_index]
        with self._lock:
            self._advance(gpu)
        return gpu

    def _advance(self, gpu: FakeGpu) -> None:
        """Run the refresh periods that ended by now (each at the load of its start and the
        knobs as they stood), then take the load and settled point of the period now running."""
        now_s = self._clock()
        refresh_s = self._spec.refresh_s
        # The epsilon keeps float steps of 0.1 s from losing a period that ended just now.
        due = math.floor((now_s - gpu.next_refresh_s) / refresh_s + 1e-6) + 1
        if due > _REPLAY_PERIODS:
            self._run_period(gpu)  # the first keeps the transient a knob change may cause
            skipped = due - 1 - self._spec.window_periods
            self._period_point(gpu, gpu.next_refresh_s - refresh_s)
            point = self._point(gpu)
            gpu.sensor.hold(
                point.power_w,
                skipped * refresh_s,
                capped=point.power_capped,
                limit_w=self._limit_w(gpu),
            )
            gpu.next_refresh_s += skipped * refresh_s
            due = self._spec.window_periods
        for _ in range(max(due, 0)):
            self._run_period(gpu)
        self._period_point(gpu, now_s)

    def _run_period(self, gpu: FakeGpu) -> None:
        refresh_s = self._spec.refresh_s
        self._period_point(gpu, gpu.next_refresh_s - refresh_s)
        point = self._point(gpu)
        gpu.sensor.step(
            settled_w=point.power_w,
            demand_w=point.demand_w,
            limit_w=self._limit_w(gpu),
            capped=point.power_capped,
        )
        gpu.next_refresh_s += refresh_s

    def _period_point(self, gpu: FakeGpu, at_s: float) -> None:
        gpu.demand = self.load.demand(gpu.index, at_s - self._started_s)
        self._refresh(gpu)

    @staticmethod
    def _limit_w(gpu: FakeGpu) -> float:
        return gpu.enforced_limit_mw / 1000.0

    def _refresh(self, gpu: FakeGpu) -> None:
        """The settled point under the current load and knobs; whether the limiter has caught
        up with it in the period now running."""
        gpu.point = _cached_operating_point(
            gpu.profile, gpu.demand, gpu.clock_ceiling_mhz, self._limit_w(gpu)
        )
        gpu.limiter_caught_up = gpu.sensor.limiter_caught_up(
            capped=gpu.point.power_capped, limit_w=self._limit_w(gpu)
        )

    @staticmethod
    def _point(gpu: FakeGpu) -> OperatingPoint:
        assert gpu.point is not None  # set by _advance on every call
        return gpu.point

    # -- library -----------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        with self._lock:
            self._init_count += 1

    def nvmlInitWithFlags(self, flags: int) -> None:  # noqa: ARG002 - flags change nothing here
        self.nvmlInit()

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        with self._lock:
            self._init_count = max(0, self._init_count - 1)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self._driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByIndex", index)
        return FakeHandle(index)

    def nvmlDeviceGetHandleByUUID(self, device_uuid: str | bytes) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByUUID")
        wanted = device_uuid.decode() if isinstance(device_uuid, bytes) else device_uuid
        for gpu in self.gpus:
            if gpu.uuid == wanted:
                return FakeHandle(gpu.index)
            if wanted in gpu.mig_uuids:
                return FakeHandle(gpu.index, gpu.mig_uuids.index(wanted))
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    # -- identity ----------------------------------------------------------------------------

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetIndex", handle, allow_mig=True).index

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        gpu = self._gpu("nvmlDeviceGetUUID", handle, allow_mig=True)
        return gpu.uuid if handle.mig_slot is None else gpu.mig_uuids[handle.mig_slot]

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._gpu("nvmlDeviceGetName", handle).profile.nvml_name

    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:
        gpu = self._gpu("nvmlDeviceGetMigMode", handle)
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.mig_uuids else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeHandle) -> int:
        gpu = self._gpu("nvmlDeviceGetMaxMigDeviceCount", handle)
        return _MAX_MIG_DEVICES if gpu.mig_uuids else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeHandle, index: int) -> FakeHandle:
        gpu = self._gpu("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if not gpu.mig_uuids:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= index < _MAX_MIG_DEVICES:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(gpu.mig_uuids):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return FakeHandle(gpu.index, index)

    # -- power -------------------------------------------------------------------------------

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        """Milliwatts: the mean of the last second, as the measured H200 reports it."""
        return round(self._gpu("nvmlDeviceGetPowerUsage", handle).sensor.average_w * 1000)

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, fieldIds: Sequence[Any]) -> Any:  # noqa: N803 - pynvml's name
        """A ctypes array of c_nvmlFieldValue_t, as pynvml returns: per field `nvmlReturn`,
        `valueType` and `value.uiVal` (mW for the power fields); unknown fields answer
        NOT_SUPPORTED in their own `nvmlReturn`, as NVML does."""
        gpu = self._gpu("nvmlDeviceGetFieldValues", handle)
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        now_us = round(self._clock() * 1e6)
        readings_w = {
            pynvml.NVML_FI_DEV_POWER_AVERAGE: gpu.sensor.average_w,
            pynvml.NVML_FI_DEV_POWER_INSTANT: gpu.sensor.instant_w,
        }
        for value, requested in zip(values, fieldIds, strict=True):
            field_id, scope_id = requested if isinstance(requested, tuple) else (requested, 0)
            value.fieldId, value.scopeId, value.timestamp = field_id, scope_id, now_us
            reading_w = readings_w.get(field_id) if self._power_fields else None
            if reading_w is None:
                value.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            value.nvmlReturn = pynvml.NVML_SUCCESS
            value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            value.value.uiVal = round(reading_w * 1000)
        return values

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        """Millijoules since the fake started; the call costs `energy_read_s`."""
        energy_mj = int(self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj)
        if self.energy_read_s > 0:
            self._sleep(self.energy_read_s)
        return energy_mj

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: FakeHandle) -> list[int]:
        profile = self._gpu("nvmlDeviceGetPowerManagementLimitConstraints", handle).profile
        return [round(profile.min_limit_w * 1000), round(profile.max_limit_w * 1000)]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: FakeHandle) -> int:
        profile = self._gpu("nvmlDeviceGetPowerManagementDefaultLimit", handle).profile
        return round(profile.default_limit_w * 1000)

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetPowerManagementLimit", handle).power_limit_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle).enforced_limit_mw

    def nvmlDeviceSetPowerManagementLimit(self, handle: FakeHandle, limit: int) -> None:
        """`limit` in mW; outside the constraints NVML answers InvalidArgument."""
        gpu = self._gpu("nvmlDeviceSetPowerManagementLimit", handle)
        profile = gpu.profile
        if not round(profile.min_limit_w * 1000) <= limit <= round(profile.max_limit_w * 1000):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        with self._lock:
            gpu.power_limit_mw = int(limit)
            self._refresh(gpu)

    # -- clocks ------------------------------------------------------------------------------

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, type: int) -> int:  # noqa: A002
        gpu = self._gpu("nvmlDeviceGetClockInfo", handle)
        if type == pynvml.NVML_CLOCK_MEM:
            return gpu.profile.memory_clock_mhz
        if not gpu.limiter_caught_up:  # the clock the board ran at before the limiter acts
            return min(
                gpu.clock_ceiling_mhz or gpu.profile.max_sm_clock_mhz, gpu.profile.max_sm_clock_mhz
            )
        return self._point(gpu).sm_clock_mhz

    def nvmlDeviceGetMaxClockInfo(self, handle: FakeHandle, type: int) -> int:  # noqa: A002
        profile = self._gpu("nvmlDeviceGetMaxClockInfo", handle).profile
        return (
            profile.memory_clock_mhz if type == pynvml.NVML_CLOCK_MEM else profile.max_sm_clock_mhz
        )

    def nvmlDeviceGetSupportedMemoryClocks(self, handle: FakeHandle) -> list[int]:
        return [self._gpu("nvmlDeviceGetSupportedMemoryClocks", handle).profile.memory_clock_mhz]

    def nvmlDeviceGetSupportedGraphicsClocks(
        self,
        handle: FakeHandle,
        memoryClockMHz: int,  # noqa: N803 - pynvml's parameter name
    ) -> list[int]:
        profile = self._gpu("nvmlDeviceGetSupportedGraphicsClocks", handle).profile
        if memoryClockMHz != profile.memory_clock_mhz:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return list(profile.supported_sm_clocks_mhz)

    def nvmlDeviceSetGpuLockedClocks(
        self,
        handle: FakeHandle,
        minGpuClockMHz: int,  # noqa: N803 - pynvml's parameter names
        maxGpuClockMHz: int,  # noqa: N803
    ) -> None:
        gpu = self._gpu("nvmlDeviceSetGpuLockedClocks", handle)
        if not 0 <= minGpuClockMHz <= maxGpuClockMHz:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        with self._lock:
            gpu.locked_clocks_mhz = (int(minGpuClockMHz), int(maxGpuClockMHz))
            self._refresh(gpu)

    def nvmlDeviceResetGpuLockedClocks(self, handle: FakeHandle) -> None:
        gpu = self._gpu("nvmlDeviceResetGpuLockedClocks", handle)
        with self._lock:
            gpu.locked_clocks_mhz = None
            self._refresh(gpu)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return self._event_bits(self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        return self._event_bits(self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", handle))

    def _event_bits(self, gpu: FakeGpu) -> int:
        point = self._point(gpu)
        bits = pynvml.nvmlClocksEventReasonNone
        if gpu.demand.idle_frac >= 1.0:
            bits |= pynvml.nvmlClocksEventReasonGpuIdle
        elif point.clock_capped and point.sm_clock_mhz >= (gpu.clock_ceiling_mhz or 0) - 15:
            # Held at the locked ceiling: the fake reports the user-clock-setting reason bit.
            bits |= pynvml.nvmlClocksEventReasonApplicationsClocksSetting
        if point.power_capped and gpu.limiter_caught_up:
            bits |= pynvml.nvmlClocksEventReasonSwPowerCap
        return int(bits)

    # -- utilisation and temperature ---------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> Any:
        """A c_nvmlUtilization_t like pynvml's. Memory utilisation is a fake-only heuristic:
        decode streams weights (high), prefill and training reuse them (lower)."""
        demand = self._gpu("nvmlDeviceGetUtilizationRates", handle).demand
        busy = 1.0 - demand.idle_frac
        memory = 0.9 * demand.decode_frac + 0.4 * demand.prefill_frac + 0.5 * demand.train_frac
        return pynvml.c_nvmlUtilization_t(gpu=round(100 * busy), memory=round(100 * memory))

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        """Degrees C; a fake-only linear heuristic from 30 C idle to 80 C at the max limit."""
        gpu = self._gpu("nvmlDeviceGetTemperature", handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return round(30 + 50 * gpu.sensor.average_w / gpu.profile.max_limit_w)
