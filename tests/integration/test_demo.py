"""`make demo` in small: a short real run (control plane, operator, daemons, replayed trace).

One run serves every test (module fixture): it takes about a minute on two cores.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from rich.console import Console

from polca_testbed.cluster import REPO_ROOT
from polca_testbed.default_clocks import applied_ceiling_mhz
from polca_testbed.demo.run import DemoResult, DemoSettings, run_demo
from polca_testbed.demo.tracking import process_start_ticks

pytestmark = pytest.mark.slow

PROFILE = "A100-80GB"
TRACE = REPO_ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, Path]:
    out = tmp_path_factory.mktemp("demo")
    settings = DemoSettings(
        nodes=3,  # one node per workload: high, low, training
        gpus=2,
        profile=PROFILE,
        speedup=40.0,
        duration_s=30.0,
        trace=TRACE if TRACE.exists() else None,
        out_dir=out,
        live=False,
    )
    with (out / "console.log").open("w") as log:
        return run_demo(settings, Console(file=log, width=120)), out


def test_the_stage_rises_above_normal(demo: tuple[DemoResult, Path]) -> None:
    result, _ = demo
    stages = [s.stage_index for s in result.recording.samples if s.stage_index is not None]
    assert stages, "the operator never wrote a stage"
    assert max(stages) > 0
    assert result.summary.highest_stage not in (None, "normal")


def test_low_tier_gpus_get_ceilings_before_high_tier_ones(demo: tuple[DemoResult, Path]) -> None:
    result, _ = demo
    samples = result.recording.samples
    first = dict(result.summary.throttling)
    low_first = min(t for w in ("low", "train") if (t := first[w].first_throttled_s) is not None)
    high_first = first["high"].first_throttled_s
    assert high_first is None or low_first < high_first
    # Never high without low: whenever a high-priority GPU is limited, the low ones are too.
    for sample in samples:
        if sample.throttled["high"]:
            assert sample.throttled["low"] == sample.throttled["train"] == 2
    stage1 = applied_ceiling_mhz("stage1", "low", PROFILE)
    # The daemons resolved the tiers as the policy says: training and low priority are "low".
    assert any(s.tier_throttled.get("low", 0) == 4 for s in samples)
    for sample in samples:
        if sample.throttled["low"]:
            assert sample.lowest_ceiling_mhz["low"] <= stage1  # stage 1's ceiling or lower


def test_summary_and_plot_are_written(demo: tuple[DemoResult, Path]) -> None:
    result, out = demo
    assert result.summary_path == out / "summary.txt"
    text = result.summary_path.read_text()
    assert "brake-level excursions with POLCA" in text
    assert "throttled GPU-s, training" in text
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    view = (out / "view.txt").read_text()  # the live view's last frame
    assert view.count("recent Kubernetes events") == 1
    assert "kubectl get pp,nps -o wide" in view
    assert result.recording_path.stat().st_size > 1000
    assert result.summary.samples >= 20


def test_nothing_is_left_running(demo: tuple[DemoResult, Path]) -> None:
    result, out = demo
    leftovers = result.leftovers
    assert leftovers.clean, leftovers
    # The demo's own check, checked: etcd, apiserver, 3 kubelets, 3 daemons, operator at least.
    assert len(leftovers.started_processes) >= 9
    for pid, start_ticks in leftovers.started_processes:
        assert start_ticks is not None
        assert process_start_ticks(pid) != start_ticks, f"pid {pid} still runs"
    for port in leftovers.started_ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    # No process anywhere still refers to the run's directory (kubeconfig, certificates).
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert str(out) not in cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
