"""The `GpuBackend` protocol and the records it returns.

A backend owns every GPU of one node. Its methods block (NVML calls, a slow fake): async callers
run them with `asyncio.to_thread`. They raise only `polca_node.gpu.errors.GpuError` subclasses.

Units are in the names: watts (`_w`), joules (`_j`), MHz (`_mhz`), percent (`_pct`), degrees
Celsius (`_c`). NVML's own units (mW, mJ) never leave the backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from polca_node.gpu.errors import GpuError

__all__ = [
    "CLOCK_EVENT_REASONS",
    "ClockCeilingResult",
    "GpuBackend",
    "GpuInfo",
    "GpuReading",
    "GpuSettings",
    "Inventory",
    "PowerLimitResult",
    "decode_clock_event_reasons",
]

# NVML's clocks-event (formerly "throttle") reason bits → our label values. The bit values are
# nvmlClocksEventReason* in nvml.h / pynvml; a unit test checks them against pynvml.
CLOCK_EVENT_REASONS: Mapping[int, str] = MappingProxyType(
    {
        0x0001: "gpu_idle",
        0x0002: "applications_clocks_setting",
        0x0004: "sw_power_cap",
        0x0008: "hw_slowdown",
        0x0010: "sync_boost",
        0x0020: "sw_thermal_slowdown",
        0x0040: "hw_thermal_slowdown",
        0x0080: "hw_power_brake_slowdown",
        0x0100: "display_clock_setting",
    }
)


def decode_clock_event_reasons(bits: int) -> tuple[str, ...]:
    """Names of the reasons set in `bits`, lowest bit first; unknown bits as `bit_0x...`."""
    names: list[str] = []
    remaining = bits
    for bit, name in CLOCK_EVENT_REASONS.items():
        if bits & bit:
            names.append(name)
            remaining &= ~bit
    bit = 1
    while remaining:
        if remaining & bit:
            names.append(f"bit_{bit:#x}")
            remaining &= ~bit
        bit <<= 1
    return tuple(names)


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What one GPU is and accepts; static except the two limits, which are a snapshot."""

    index: int
    uuid: str  # "GPU-xxxxxxxx-...", as NVML and the device plugin spell it
    name: str  # nvmlDeviceGetName, e.g. "NVIDIA H100 80GB HBM3"
    min_limit_w: float  # power-limit constraints: the range set_power_limit clamps into
    max_limit_w: float
    default_limit_w: float  # what set_power_limit(index, None) restores
    power_limit_w: float  # management limit now in place (at inventory time)
    enforced_limit_w: float  # the limit the GPU obeys (may be lower: other limiters)
    max_sm_clock_mhz: int
    # Graphics clocks the GPU can be locked to at its highest memory clock, highest first.
    # Empty when NVML cannot list them; ceilings are then only capped at max_sm_clock_mhz.
    supported_clocks_mhz: tuple[int, ...]
    mig_uuids: tuple[str, ...] = ()  # "MIG-..." UUIDs of MIG devices on this GPU, if any


@dataclass(frozen=True, slots=True)
class Inventory:
    """Every GPU that answered, and why the others did not."""

    gpus: tuple[GpuInfo, ...]
    failures: Mapping[int, GpuError] = field(default_factory=dict)
    driver_version: str = ""

    def by_index(self) -> dict[int, GpuInfo]:
        return {gpu.index: gpu for gpu in self.gpus}

    def index_by_uuid(self) -> dict[str, int]:
        """GPU and MIG UUIDs → GPU index, for resolving PodResources device ids."""
        mapping: dict[str, int] = {}
        for gpu in self.gpus:
            mapping[gpu.uuid] = gpu.index
            for mig_uuid in gpu.mig_uuids:
                mapping[mig_uuid] = gpu.index
        return mapping


@dataclass(frozen=True, slots=True)
class GpuSettings:
    """The two knobs as they stand on one GPU.

    NVML has no getter for locked clocks, so a backend knows the ceiling only once it has set
    it itself (or reset it): `clock_ceiling_known` is False until then, e.g. after a restart.
    """

    index: int
    power_limit_w: float
    enforced_limit_w: float
    default_limit_w: float
    clock_ceiling_mhz: int | None  # None: no ceiling (or unknown, see clock_ceiling_known)
    clock_ceiling_known: bool


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One sample of one GPU. Optional fields are None where the GPU does not report them."""

    index: int
    power_w: float  # nvmlDeviceGetPowerUsage: the mean of the last ~1 s (measured on an H200)
    energy_j: float | None  # nvmlDeviceGetTotalEnergyConsumption, since driver load
    sm_clock_mhz: int
    gpu_utilization_pct: int | None
    memory_utilization_pct: int | None
    temperature_c: int | None
    clock_event_reasons: tuple[str, ...]  # decoded, see CLOCK_EVENT_REASONS
    settings: GpuSettings
    # NVML_FI_DEV_POWER_INSTANT: the last ~100 ms; None where the driver does not offer it.
    instant_power_w: float | None = None

    @property
    def fresh_power_w(self) -> float:
        """The freshest power this GPU offers: the instant field, else GetPowerUsage."""
        return self.power_w if self.instant_power_w is None else self.instant_power_w

    @property
    def power_source(self) -> str:
        """Which reading `fresh_power_w` is: "instant" or "average"."""
        return "average" if self.instant_power_w is None else "instant"


@dataclass(frozen=True, slots=True)
class ClockCeilingResult:
    """What `set_clock_ceiling` did. None as a clock means "no ceiling"."""

    index: int
    requested_mhz: int | None
    clamped_mhz: int | None  # the nearest supported clock at or below the request
    previous_mhz: int | None
    previous_known: bool  # False: the ceiling before was unknown, so we wrote regardless
    changed: bool  # True when NVML was called
    # NVML cannot read locked clocks back; this is the ceiling on record after a successful
    # call (equal to clamped_mhz), kept for symmetry with PowerLimitResult.
    read_back_mhz: int | None


@dataclass(frozen=True, slots=True)
class PowerLimitResult:
    """What `set_power_limit` did. A None request means "the default limit"."""

    index: int
    requested_w: float | None
    clamped_w: float  # within the GPU's constraints; the default limit for a None request
    previous_w: float  # management limit before
    changed: bool  # True when NVML was called
    read_back_w: float  # management limit read back after the call
    enforced_w: float  # enforced limit read back after the call

    @property
    def confirmed(self) -> bool:
        """The GPU reports the limit we asked for (to within NVML's milliwatt rounding)."""
        return abs(self.read_back_w - self.clamped_w) < 1.0


@runtime_checkable
class GpuBackend(Protocol):
    """All GPUs of one node. Every method blocks; every failure is a `GpuError`."""

    def open(self) -> Inventory:
        """Initialise the library and discover the GPUs. Raises LibraryNotFound & co."""
        ...

    def close(self) -> None:
        """Release the library. Settings stay on the GPUs (safety rule 1)."""
        ...

    def inventory(self) -> Inventory:
        """Query the GPUs again (limits are a fresh snapshot)."""
        ...

    def read(self, index: int, *, energy: bool = True) -> GpuReading:
        """Sample power, energy, clocks, utilisation and throttle reasons of one GPU.
        `energy` False skips the energy counter (3.9 ms a call on an H200): `energy_j` None."""
        ...

    def settings(self, index: int) -> GpuSettings:
        """The knobs of one GPU as they stand."""
        ...

    def set_clock_ceiling(self, index: int, clock_mhz: int | None) -> ClockCeilingResult:
        """Cap the SM clock at `clock_mhz` (clamped to a supported clock); None removes it."""
        ...

    def set_power_limit(self, index: int, limit_w: float | None) -> PowerLimitResult:
        """Set the power limit (clamped to the constraints); None restores the default."""
        ...
