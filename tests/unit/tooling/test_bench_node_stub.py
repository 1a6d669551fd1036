"""`make bench-node`'s production path: the daemon's real NvmlBackend over nvidia-ml-py over the
C stand-in for libnvidia-ml (benchmarks/stub_nvml), in a process where numpy, the simulator and
the Python fake cannot be imported. Kept working here so the benchmark does not rot; no timing
is asserted."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def _load() -> ModuleType:
    """benchmarks/bench_node.py, imported by name from its folder (not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("bench_node")
    finally:
        sys.path.remove(str(BENCHMARKS))


bench = _load()


def test_forbidden_modules_are_the_packages_and_their_submodules() -> None:
    loaded = ["numpy", "numpy.linalg", "polca.simulate", "polca.sim.engine", "pynvml", "rich"]
    assert bench.forbidden_modules(loaded) == ["numpy", "numpy.linalg", "polca.sim.engine", "rich"]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the NVML stand-in")
def test_the_production_loop_runs_over_the_stand_in_without_the_sim() -> None:
    with bench.production_runtime() as stub_dir:
        assert (stub_dir / "libnvidia-ml.so.1").is_file()
        # Raises SystemExit when the child fails or holds numpy, the simulator or the fake.
        cost_s = bench.production_loop_cost_s(stub_dir, 5)
    assert cost_s > 0


def test_a_child_that_imports_numpy_is_caught(tmp_path: Path) -> None:
    report = tmp_path / "modules.json"
    report.write_text('["pynvml", "numpy", "numpy.core"]', encoding="utf-8")
    with pytest.raises(SystemExit, match="numpy"):
        bench.read_modules_report(report)
