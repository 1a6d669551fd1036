"""Backends for the GPU contract tests: the fake always, real NVML (read-only) where present."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from polca_node.gpu.errors import DriverNotLoaded, GpuError, LibraryNotFound
from polca_node.gpu.fake_nvml import FakeNvml, ManualClock
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_testbed.gpu_check import ReadOnlyNvml

# Three models, so per-GPU constraints are really read per GPU.
FAKE_FLEET = "A100-80GB:1,H100-SXM:1,H200:1"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> FakeNvml:
    return FakeNvml(FAKE_FLEET, clock=clock.now, sleep=clock.sleep)


@pytest.fixture
def fake_backend(fake: FakeNvml) -> Iterator[NvmlBackend]:
    backend = NvmlBackend(fake)
    backend.open()
    yield backend
    backend.close()


def _real_backend() -> NvmlBackend:
    import pynvml

    backend = NvmlBackend(ReadOnlyNvml(pynvml))
    try:
        backend.open()
    except (LibraryNotFound, DriverNotLoaded) as exc:
        pytest.skip(f"no NVIDIA GPU here: {exc}")
    except GpuError as exc:
        pytest.skip(f"NVML unusable here: {exc}")
    return backend


@pytest.fixture(params=["fake", pytest.param("nvml", marks=pytest.mark.gpu)])
def readonly_backend(request: pytest.FixtureRequest, fake: FakeNvml) -> Iterator[NvmlBackend]:
    """The read-only contract runs over both; nothing is ever set through this fixture."""
    if request.param == "fake":
        backend = NvmlBackend(fake)
        backend.open()
    else:
        backend = _real_backend()
    yield backend
    backend.close()
