"""The production `GpuBackend`: nvidia-ml-py calls, idempotent setters, clamped values.

The backend talks to an injected NVML module: the real `pynvml`, or a
`polca_node.gpu.fake_nvml.FakeNvml` instance with the same names, constants, units and
exceptions. Nothing here knows which one it has, so the code under test is the code in
production.

Every NVML call goes through `_call`: it is the single place that times calls (for the
latency histogram, via `on_call`) and translates NVML errors into ours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from polca_node.gpu.backend import (
    ClockCeilingResult,
    GpuInfo,
    GpuReading,
    GpuSettings,
    Inventory,
    PowerLimitResult,
    decode_clock_event_reasons,
)
from polca_node.gpu.clamping import clamp_clock_mhz, clamp_limit_w, lowest_lock_clock_mhz
from polca_node.gpu.errors import (
    GpuError,
    InvalidArgument,
    NotFound,
    NotInitialized,
    NotSupported,
    translate_nvml_errors,
)

__all__ = ["CallObserver", "NvmlBackend"]

# (NVML function name, seconds it took, whether it raised) — e.g. feeds a latency histogram.
CallObserver = Callable[[str, float, bool], None]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mw_to_w(milliwatts: int) -> float:
    return milliwatts / 1000.0


class NvmlBackend:
    """All GPUs of this node through NVML. Thread-safe; each setter is atomic per GPU."""

    def __init__(self, nvml: Any | None = None, *, on_call: CallObserver | None = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml: Any = nvml
        self._on_call = on_call
        self._handles: dict[int, Any] = {}
        self._info: dict[int, GpuInfo] = {}
        self._device_count = 0
        self._open = False
        self._state_lock = threading.Lock()
        self._gpu_locks: dict[int, threading.Lock] = {}
        # NVML cannot read locked clocks back, so we remember what we set. Absent: unknown.
        self._ceilings_mhz: dict[int, int | None] = {}

    # -- the one NVML boundary ---------------------------------------------------------------

    def _call(self, function: str, *args: Any, gpu_index: int | None = None) -> Any:
        started = time.perf_counter()
        failed = True
        try:
            with translate_nvml_errors(function, gpu_index):
                result = getattr(self._nvml, function)(*args)
            failed = False
            return result
        finally:
            if self._on_call is not None:
                self._on_call(function, time.perf_counter() - started, failed)

    def _optional(self, function: str, *args: Any, gpu_index: int | None = None) -> Any:
        """A call whose absence on this GPU is normal: None when it is not supported."""
        try:
            return self._call(function, *args, gpu_index=gpu_index)
        except NotSupported:
            return None

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> Inventory:
        self._call("nvmlInit")
        self._open = True
        self._device_count = int(self._call("nvmlDeviceGetCount"))
        return self.inventory()

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._handles.clear()
        self._call("nvmlShutdown")

    def __enter__(self) -> NvmlBackend:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- discovery ---------------------------------------------------------------------------

    def inventory(self) -> Inventory:
        self._require_open()
        gpus: list[GpuInfo] = []
        failures: dict[int, GpuError] = {}
        for index in range(self._device_count):
            try:
                gpus.append(self._discover(index))
            except GpuError as exc:
                failures[index] = exc
        version = self._optional("nvmlSystemGetDriverVersion")
        return Inventory(gpus=tuple(gpus), failures=failures, driver_version=_text(version or ""))

    def _require_open(self) -> None:
        if not self._open:
            raise NotInitialized("the backend is not open", operation="open")

    def _handle(self, index: int) -> Any:
        self._require_open()
        if not 0 <= index < self._device_count:
            raise InvalidArgument(f"no GPU with index {index}", gpu_index=index)
        handle = self._handles.get(index)
        if handle is None:
            handle = self._call("nvmlDeviceGetHandleByIndex", index, gpu_index=index)
            self._handles[index] = handle
        return handle

    def _discover(self, index: int) -> GpuInfo:
        handle = self._handle(index)

        def call(function: str, *args: Any) -> Any:
            return self._call(function, handle, *args, gpu_index=index)

        min_mw, max_mw = call("nvmlDeviceGetPowerManagementLimitConstraints")
        info = GpuInfo(
            index=index,
            uuid=_text(call("nvmlDeviceGetUUID")),
            name=_text(call("nvmlDeviceGetName")),
            min_limit_w=_mw_to_w(min_mw),
            max_limit_w=_mw_to_w(max_mw),
            default_limit_w=_mw_to_w(call("nvmlDeviceGetPowerManagementDefaultLimit")),
            power_limit_w=_mw_to_w(call("nvmlDeviceGetPowerManagementLimit")),
            enforced_limit_w=_mw_to_w(call("nvmlDeviceGetEnforcedPowerLimit")),
            max_sm_clock_mhz=int(call("nvmlDeviceGetMaxClockInfo", self._nvml.NVML_CLOCK_SM)),
            supported_clocks_mhz=self._supported_clocks(handle, index),
            mig_uuids=self._mig_uuids(handle, index),
        )
        with self._state_lock:
            self._info[index] = info
        return info

    def _supported_clocks(self, handle: Any, index: int) -> tuple[int, ...]:
        memory_clocks = self._optional(
            "nvmlDeviceGetSupportedMemoryClocks", handle, gpu_index=index
        )
        if not memory_clocks:
            return ()
        graphics = self._optional(
            "nvmlDeviceGetSupportedGraphicsClocks", handle, max(memory_clocks), gpu_index=index
        )
        return tuple(sorted({int(clock) for clock in graphics or ()}, reverse=True))

    def _mig_uuids(self, handle: Any, index: int) -> tuple[str, ...]:
        modes = self._optional("nvmlDeviceGetMigMode", handle, gpu_index=index)
        if modes is None or modes[0] != self._nvml.NVML_DEVICE_MIG_ENABLE:
            return ()
        slots = int(self._call("nvmlDeviceGetMaxMigDeviceCount", handle, gpu_index=index))
        uuids: list[str] = []
        for slot in range(slots):
            try:
                mig = self._call(
                    "nvmlDeviceGetMigDeviceHandleByIndex", handle, slot, gpu_index=index
                )
            except NotFound:  # an empty slot
                continue
            uuids.append(_text(self._call("nvmlDeviceGetUUID", mig, gpu_index=index)))
        return tuple(uuids)

    def _gpu_info(self, index: int) -> GpuInfo:
        with self._state_lock:
            info = self._info.get(index)
        # A GPU that failed discovery earlier is retried on first use.
        return info if info is not None else self._discover(index)

    def _gpu_lock(self, index: int) -> threading.Lock:
        with self._state_lock:
            return self._gpu_locks.setdefault(index, threading.Lock())

    # -- readings ----------------------------------------------------------------------------

    def settings(self, index: int) -> GpuSettings:
        handle = self._handle(index)
        info = self._gpu_info(index)
        with self._state_lock:
            known = index in self._ceilings_mhz
            ceiling_mhz = self._ceilings_mhz.get(index)
        return GpuSettings(
            index=index,
            power_limit_w=_mw_to_w(
                self._call("nvmlDeviceGetPowerManagementLimit", handle, gpu_index=index)
            ),
            enforced_limit_w=_mw_to_w(
                self._call("nvmlDeviceGetEnforcedPowerLimit", handle, gpu_index=index)
            ),
            default_limit_w=info.default_limit_w,
            clock_ceiling_mhz=ceiling_mhz,
            clock_ceiling_known=known,
        )

    def read(self, index: int, *, energy: bool = True) -> GpuReading:
        handle = self._handle(index)

        def call(function: str, *args: Any) -> Any:
            return self._call(function, handle, *args, gpu_index=index)

        def optional(function: str, *args: Any) -> Any:
            return self._optional(function, handle, *args, gpu_index=index)

        power_mw = call("nvmlDeviceGetPowerUsage")
        energy_mj = optional("nvmlDeviceGetTotalEnergyConsumption") if energy else None
        utilization = optional("nvmlDeviceGetUtilizationRates")
        temperature_c = optional("nvmlDeviceGetTemperature", self._nvml.NVML_TEMPERATURE_GPU)
        return GpuReading(
            index=index,
            power_w=_mw_to_w(power_mw),
            energy_j=None if energy_mj is None else energy_mj / 1000.0,
            sm_clock_mhz=int(call("nvmlDeviceGetClockInfo", self._nvml.NVML_CLOCK_SM)),
            gpu_utilization_pct=None if utilization is None else int(utilization.gpu),
            memory_utilization_pct=None if utilization is None else int(utilization.memory),
            temperature_c=None if temperature_c is None else int(temperature_c),
            clock_event_reasons=decode_clock_event_reasons(self._clock_event_bits(handle, index)),
            settings=self.settings(index),
            instant_power_w=self._instant_power_w(handle, index),
        )

    def _instant_power_w(self, handle: Any, index: int) -> float | None:
        """NVML_FI_DEV_POWER_INSTANT in W, or None where the driver (or binding) lacks it: the
        field answers within one 100 ms refresh, GetPowerUsage averages over ~1 s."""
        field_id = getattr(self._nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if field_id is None:
            return None
        values = self._optional("nvmlDeviceGetFieldValues", handle, [field_id], gpu_index=index)
        if not values or values[0].nvmlReturn != self._nvml.NVML_SUCCESS:
            return None
        return _mw_to_w(int(values[0].value.uiVal))

    def _clock_event_bits(self, handle: Any, index: int) -> int:
        # ...ClocksEventReasons needs driver >= 535; older drivers only have the
        # ...ClocksThrottleReasons name for the same bits.
        for function in (
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        ):
            bits = self._optional(function, handle, gpu_index=index)
            if bits is not None:
                return int(bits)
        return 0

    # -- actions -----------------------------------------------------------------------------

    def set_clock_ceiling(self, index: int, clock_mhz: int | None) -> ClockCeilingResult:
        handle = self._handle(index)
        info = self._gpu_info(index)
        try:
            target_mhz = (
                None
                if clock_mhz is None
                else clamp_clock_mhz(clock_mhz, info.supported_clocks_mhz, info.max_sm_clock_mhz)
            )
        except ValueError as exc:
            raise InvalidArgument(str(exc), operation="set_clock_ceiling", gpu_index=index) from exc
        with self._gpu_lock(index):
            with self._state_lock:
                previous_known = index in self._ceilings_mhz
                previous_mhz = self._ceilings_mhz.get(index)
            changed = not previous_known or previous_mhz != target_mhz
            if changed:
                if target_mhz is None:
                    self._call("nvmlDeviceResetGpuLockedClocks", handle, gpu_index=index)
                else:
                    low_mhz = lowest_lock_clock_mhz(info.supported_clocks_mhz, target_mhz)
                    self._call(
                        "nvmlDeviceSetGpuLockedClocks", handle, low_mhz, target_mhz, gpu_index=index
                    )
                with self._state_lock:
                    self._ceilings_mhz[index] = target_mhz
        return ClockCeilingResult(
            index=index,
            requested_mhz=clock_mhz,
            clamped_mhz=target_mhz,
            previous_mhz=previous_mhz,
            previous_known=previous_known,
            changed=changed,
            read_back_mhz=target_mhz,
        )

    def set_power_limit(self, index: int, limit_w: float | None) -> PowerLimitResult:
        handle = self._handle(index)
        info = self._gpu_info(index)
        try:
            target_w = (
                info.default_limit_w
                if limit_w is None
                else clamp_limit_w(limit_w, info.min_limit_w, info.max_limit_w)
            )
        except ValueError as exc:
            raise InvalidArgument(str(exc), operation="set_power_limit", gpu_index=index) from exc
        target_mw = round(target_w * 1000)

        def call(function: str, *args: Any) -> Any:
            return self._call(function, handle, *args, gpu_index=index)

        with self._gpu_lock(index):
            previous_mw = int(call("nvmlDeviceGetPowerManagementLimit"))
            changed = previous_mw != target_mw
            if changed:
                # Not nvmlDeviceSetPowerManagementLimit_v2: in nvidia-ml-py 13.615.71 (pynvml.py,
                # def nvmlDeviceSetPowerManagementLimit_v2) the binding stores the C return code
                # in `ret` and then returns NVML_SUCCESS without _nvmlCheckReturn(ret), so a
                # rejected write would look like success. This binding checks the return code.
                call("nvmlDeviceSetPowerManagementLimit", target_mw)
            read_back_mw = int(call("nvmlDeviceGetPowerManagementLimit"))
            enforced_mw = int(call("nvmlDeviceGetEnforcedPowerLimit"))
        return PowerLimitResult(
            index=index,
            requested_w=limit_w,
            clamped_w=target_mw / 1000.0,
            previous_w=_mw_to_w(previous_mw),
            changed=changed,
            read_back_w=_mw_to_w(read_back_mw),
            enforced_w=_mw_to_w(enforced_mw),
        )
