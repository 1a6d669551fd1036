"""The one NVML boundary: pynvml errors become ours, with reason, operation and GPU."""

from __future__ import annotations

import pynvml
import pytest

from polca_node.gpu import errors
from polca_node.gpu.errors import GpuError, error_for_code, translate_nvml_errors

CASES = [
    (pynvml.NVML_ERROR_NO_PERMISSION, errors.NoPermission, "NoPermission"),
    (pynvml.NVML_ERROR_NOT_SUPPORTED, errors.NotSupported, "NotSupported"),
    (pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, errors.NotSupported, "NotSupported"),
    (pynvml.NVML_ERROR_GPU_IS_LOST, errors.GpuLost, "GpuLost"),
    (pynvml.NVML_ERROR_RESET_REQUIRED, errors.GpuLost, "GpuLost"),
    (pynvml.NVML_ERROR_INVALID_ARGUMENT, errors.InvalidArgument, "InvalidArgument"),
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, errors.LibraryNotFound, "LibraryNotFound"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, errors.DriverNotLoaded, "DriverNotLoaded"),
    (pynvml.NVML_ERROR_TIMEOUT, errors.GpuTimeout, "Timeout"),
    (pynvml.NVML_ERROR_NOT_FOUND, errors.NotFound, "NotFound"),
    (pynvml.NVML_ERROR_UNINITIALIZED, errors.NotInitialized, "NotInitialized"),
    (pynvml.NVML_ERROR_INSUFFICIENT_POWER, errors.UnknownGpuError, "Unknown"),
    (pynvml.NVML_ERROR_UNKNOWN, errors.UnknownGpuError, "Unknown"),
]


@pytest.mark.parametrize(("code", "cls", "reason"), CASES)
def test_each_nvml_error_becomes_ours(code: int, cls: type[GpuError], reason: str) -> None:
    with pytest.raises(cls) as caught, translate_nvml_errors("nvmlDeviceSomething", 3):
        raise pynvml.NVMLError(code)
    error = caught.value
    assert error.reason == reason
    assert error.nvml_code == code
    assert error.operation == "nvmlDeviceSomething"
    assert error.gpu_index == 3
    assert isinstance(error.__cause__, pynvml.NVMLError)
    assert "GPU 3 nvmlDeviceSomething" in str(error)
    assert reason in str(error)


def test_pynvml_subclasses_are_caught_too() -> None:
    with pytest.raises(errors.NoPermission), translate_nvml_errors("set"):
        raise pynvml.NVMLError_NoPermission(pynvml.NVML_ERROR_NO_PERMISSION)


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), translate_nvml_errors("x"):
        raise KeyError("not NVML")


def test_unknown_code_message_does_not_need_the_library() -> None:
    # NVMLError.__str__ asks libnvidia-ml for unknown codes; without it formatting must not fail.
    error = error_for_code(12345, "raw", operation="op")
    assert isinstance(error, errors.UnknownGpuError)
    with pytest.raises(errors.UnknownGpuError) as caught, translate_nvml_errors("op"):
        raise pynvml.NVMLError(12345)
    assert caught.value.nvml_code == 12345
    assert "NVML op" in str(caught.value)


def test_reasons_are_distinct_per_class() -> None:
    classes = {cls for _, cls, _ in CASES}
    reasons = [cls.reason for cls in classes]
    assert len(reasons) == len(set(reasons))
