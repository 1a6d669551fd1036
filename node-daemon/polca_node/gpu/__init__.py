"""The GPU layer: one `GpuBackend` per node over NVML (real `pynvml` or `fake_nvml.FakeNvml`).

Import the backend from `polca_node.gpu.nvml_backend`, the fake from `polca_node.gpu.fake_nvml`
and load sources from `polca_node.gpu.load`; this package exports the records and errors.
"""

from polca_node.gpu.backend import (
    CLOCK_EVENT_REASONS,
    ClockCeilingResult,
    GpuBackend,
    GpuInfo,
    GpuReading,
    GpuSettings,
    Inventory,
    PowerLimitResult,
)
from polca_node.gpu.errors import (
    DriverNotLoaded,
    GpuError,
    GpuLost,
    GpuTimeout,
    InvalidArgument,
    LibraryNotFound,
    NoPermission,
    NotFound,
    NotInitialized,
    NotSupported,
    UnknownGpuError,
)

__all__ = [
    "CLOCK_EVENT_REASONS",
    "ClockCeilingResult",
    "DriverNotLoaded",
    "GpuBackend",
    "GpuError",
    "GpuInfo",
    "GpuLost",
    "GpuReading",
    "GpuSettings",
    "GpuTimeout",
    "InvalidArgument",
    "Inventory",
    "LibraryNotFound",
    "NoPermission",
    "NotFound",
    "NotInitialized",
    "NotSupported",
    "PowerLimitResult",
    "UnknownGpuError",
]
