"""Our GPU exceptions, and the one place that turns NVML's errors into them.

Everything above the backend (actuator, guard, exporter, status writer) sees only `GpuError` and
its subclasses. Each carries a stable CamelCase `reason` that ends up verbatim in status
conditions and metric labels, the NVML operation that failed and the GPU it failed on.

`translate_nvml_errors` is the boundary: every NVML call in `nvml_backend` runs inside it. The
fake NVML raises pynvml's own exception classes, so the boundary is the same for both.
"""

# ruff: noqa: N818 - the names mirror NVML's own (NVMLError_NoPermission, ...), see issue 4

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import pynvml

__all__ = [
    "DriverNotLoaded",
    "GpuError",
    "GpuLost",
    "GpuTimeout",
    "InvalidArgument",
    "LibraryNotFound",
    "NoPermission",
    "NotFound",
    "NotInitialized",
    "NotSupported",
    "UnknownGpuError",
    "error_for_code",
    "translate_nvml_errors",
]


class GpuError(Exception):
    """A GPU operation failed. `reason` is stable and safe to use as a label value."""

    reason: ClassVar[str] = "GpuError"

    def __init__(
        self,
        message: str,
        *,
        operation: str = "",
        gpu_index: int | None = None,
        nvml_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation
        self.gpu_index = gpu_index
        self.nvml_code = nvml_code

    def __str__(self) -> str:
        where = f"GPU {self.gpu_index}" if self.gpu_index is not None else "NVML"
        what = f" {self.operation}" if self.operation else ""
        return f"{where}{what}: {self.message} ({self.reason})"


class LibraryNotFound(GpuError):
    """libnvidia-ml.so could not be loaded (no driver installed, or not mounted in)."""

    reason = "LibraryNotFound"


class DriverNotLoaded(GpuError):
    """The library loaded but the kernel driver is not running."""

    reason = "DriverNotLoaded"


class NoPermission(GpuError):
    """The call needs privileges we lack (setting clocks and limits needs root/CAP_SYS_ADMIN)."""

    reason = "NoPermission"


class NotSupported(GpuError):
    """This GPU, driver or virtualisation mode does not offer the operation."""

    reason = "NotSupported"


class GpuLost(GpuError):
    """The GPU fell off the bus or needs a reset; it stays unusable until then."""

    reason = "GpuLost"


class InvalidArgument(GpuError):
    """NVML rejected a value (out of range, wrong handle)."""

    reason = "InvalidArgument"


class GpuTimeout(GpuError):
    """NVML gave up waiting for the GPU."""

    reason = "Timeout"


class NotFound(GpuError):
    """The object asked for does not exist (e.g. an empty MIG slot)."""

    reason = "NotFound"


class NotInitialized(GpuError):
    """A call came before `open()` or after `close()`."""

    reason = "NotInitialized"


class UnknownGpuError(GpuError):
    """Any other NVML error; `nvml_code` keeps the original code."""

    reason = "Unknown"


# NVML return codes → our classes. Codes not listed become UnknownGpuError. The values are
# read from pynvml itself so they cannot drift from the library.
_CODE_TO_ERROR: dict[int, type[GpuError]] = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: LibraryNotFound,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: NotSupported,  # driver older than the binding
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: DriverNotLoaded,
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: DriverNotLoaded,
    pynvml.NVML_ERROR_NO_PERMISSION: NoPermission,
    pynvml.NVML_ERROR_OPERATING_SYSTEM: NoPermission,  # "the OS has blocked the request"
    pynvml.NVML_ERROR_NOT_SUPPORTED: NotSupported,
    pynvml.NVML_ERROR_GPU_IS_LOST: GpuLost,
    pynvml.NVML_ERROR_RESET_REQUIRED: GpuLost,
    pynvml.NVML_ERROR_GPU_NOT_FOUND: GpuLost,
    pynvml.NVML_ERROR_INVALID_ARGUMENT: InvalidArgument,
    pynvml.NVML_ERROR_TIMEOUT: GpuTimeout,
    pynvml.NVML_ERROR_NOT_FOUND: NotFound,
    pynvml.NVML_ERROR_UNINITIALIZED: NotInitialized,
}


def error_for_code(
    code: int, message: str, *, operation: str = "", gpu_index: int | None = None
) -> GpuError:
    """Our exception for NVML return code `code`."""
    cls = _CODE_TO_ERROR.get(code, UnknownGpuError)
    return cls(message, operation=operation, gpu_index=gpu_index, nvml_code=code)


def _nvml_message(exc: pynvml.NVMLError) -> str:
    # NVMLError.__str__ calls back into the library for codes it does not know, which fails
    # when the library is missing; never let formatting raise at the boundary.
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - any failure here must not hide the original error
        return f"NVML error code {getattr(exc, 'value', '?')}"


@contextmanager
def translate_nvml_errors(operation: str, gpu_index: int | None = None) -> Iterator[None]:
    """Run NVML calls; turn any `pynvml.NVMLError` into the matching `GpuError`."""
    try:
        yield
    except pynvml.NVMLError as exc:
        code = int(getattr(exc, "value", pynvml.NVML_ERROR_UNKNOWN))
        raise error_for_code(
            code, _nvml_message(exc), operation=operation, gpu_index=gpu_index
        ) from exc
