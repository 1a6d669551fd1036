"""Load sources for the fake: constant, scripted timeline, a JSON file changed from outside, a
request trace replayed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from polca.power.model import PhaseDemand
from polca.power.profiles import get_profile
from polca.sim.trace import read_trace
from polca_node.gpu.fake_nvml import FakeNvml, ManualClock
from polca_node.gpu.load import (
    IDLE,
    ConstantLoad,
    FileLoad,
    LoadSource,
    ScriptedLoad,
    TraceLoad,
    demand_from_mapping,
    parse_load_spec,
)
from polca_node.gpu.nvml_backend import NvmlBackend

DECODE = PhaseDemand(decode_frac=0.8)
PREFILL = PhaseDemand(prefill_frac=0.5)


def _write_json(path: Path, data: object) -> None:
    # Write then rename over, as the FileLoad docstring asks of writers.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


class TestConstantLoad:
    def test_default_and_per_gpu(self) -> None:
        load = ConstantLoad(DECODE, {2: PREFILL})
        assert isinstance(load, LoadSource)
        assert load.demand(0, 123.0) == DECODE
        assert load.demand(2, 0.0) == PREFILL

    def test_idle_by_default(self) -> None:
        assert ConstantLoad().demand(0, 0.0) == IDLE


class TestScriptedLoad:
    def test_steps_hold_until_the_next(self) -> None:
        load = ScriptedLoad([(10.0, PREFILL), (0.0, DECODE)])  # any order
        assert load.demand(0, 0.0) == DECODE
        assert load.demand(0, 9.99) == DECODE
        assert load.demand(0, 10.0) == PREFILL
        assert load.demand(0, 1e6) == PREFILL

    def test_idle_before_the_first_step(self) -> None:
        assert ScriptedLoad([(5.0, DECODE)]).demand(0, 1.0) == IDLE

    def test_period_repeats(self) -> None:
        load = ScriptedLoad([(0.0, DECODE), (2.0, PREFILL)], period_s=4.0)
        assert load.demand(0, 5.0) == DECODE
        assert load.demand(0, 7.0) == PREFILL

    def test_per_gpu_timeline(self) -> None:
        load = ScriptedLoad([(0.0, DECODE)], per_gpu={1: [(0.0, IDLE), (3.0, PREFILL)]})
        assert load.demand(0, 4.0) == DECODE
        assert load.demand(1, 1.0) == IDLE
        assert load.demand(1, 4.0) == PREFILL

    def test_bad_period(self) -> None:
        with pytest.raises(ValueError, match="period_s"):
            ScriptedLoad([(0.0, DECODE)], period_s=0)


class TestFileLoad:
    def test_reads_and_follows_changes(self, tmp_path: Path) -> None:
        path = tmp_path / "load.json"
        _write_json(path, {"default": {"decode_frac": 0.8}, "gpus": {"3": {"prefill_frac": 0.5}}})
        load = FileLoad(path)
        assert load.demand(0, 0.0) == DECODE
        assert load.demand(3, 0.0) == PREFILL
        _write_json(path, {"default": {"prefill": 0.5}})
        assert load.demand(0, 0.0) == PREFILL
        assert load.demand(3, 0.0) == PREFILL

    def test_missing_file_is_idle(self, tmp_path: Path) -> None:
        assert FileLoad(tmp_path / "absent.json").demand(0, 0.0) == IDLE

    @pytest.mark.parametrize(
        "bad",
        [
            "{not json",
            json.dumps([1, 2]),
            json.dumps({"default": {"decode_frac": 2.0}}),
            json.dumps({"default": {"decod_frac": 0.5}}),
            json.dumps({"defaults": {}}),
            json.dumps({"gpus": [1]}),
        ],
    )
    def test_bad_content_keeps_last_good(
        self, tmp_path: Path, bad: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "load.json"
        _write_json(path, {"default": {"decode_frac": 0.8}})
        load = FileLoad(path)
        assert load.demand(0, 0.0) == DECODE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(bad, encoding="utf-8")
        os.replace(tmp, path)
        assert load.demand(0, 0.0) == DECODE
        assert "keeping the previous fake load" in caplog.text

    def test_drives_a_running_fake(self, tmp_path: Path) -> None:
        path = tmp_path / "load.json"
        _write_json(path, {})
        clock = ManualClock()
        backend = NvmlBackend(FakeNvml("H100-SXM:2", load=FileLoad(path), clock=clock.now))
        backend.open()
        idle_w = backend.read(1).power_w
        _write_json(path, {"gpus": {"1": {"prefill_frac": 1.0}}})
        clock.advance(1.0)  # the reading is the mean of the last second
        assert backend.read(1).power_w > 5 * idle_w
        assert backend.read(0).power_w == pytest.approx(idle_w)


class TestSpecs:
    def test_demand_from_mapping_short_and_long_keys(self) -> None:
        demand = demand_from_mapping({"prefill": 0.1, "decode_frac": 0.7, "train": "0.2"})
        assert demand == PhaseDemand(prefill_frac=0.1, decode_frac=0.7, train_frac=0.2)

    def test_parse_load_spec(self, tmp_path: Path) -> None:
        assert parse_load_spec("idle").demand(0, 0.0) == IDLE
        constant = parse_load_spec("constant:prefill=0.1,decode=0.8")
        assert constant.demand(5, 0.0) == PhaseDemand(prefill_frac=0.1, decode_frac=0.8)
        file_load = parse_load_spec(f"file:{tmp_path / 'x.json'}")
        assert isinstance(file_load, FileLoad)
        assert file_load.path == tmp_path / "x.json"

    @pytest.mark.parametrize("spec", ["busy", "constant:prefill", "file:", "idle:1", "trace"])
    def test_bad_specs(self, spec: str) -> None:
        with pytest.raises(ValueError, match=r"load spec"):
            parse_load_spec(spec)


def _write_trace(path: Path, busy_s: float, quiet_s: float) -> Path:
    """A trace busy (10 requests a second) for `busy_s`, then quiet (one per 5 s) for `quiet_s`."""
    rng = np.random.default_rng(11)
    busy = np.sort(rng.random(int(10 * busy_s)) * busy_s)
    quiet = busy_s + np.arange(0.0, quiet_s, 5.0)
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rows += [f"{t:.3f},{rng.integers(500, 4000)},{rng.integers(50, 300)}" for t in busy]
    rows += [f"{t:.3f},1000,100" for t in quiet]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _busy(demand: PhaseDemand) -> float:
    return demand.prefill_frac + demand.decode_frac + demand.train_frac


class TestTraceLoad:
    @pytest.fixture
    def trace_path(self, tmp_path: Path) -> Path:
        # 3 busy trace minutes, then 3 quiet ones; at speedup 60 a wall second is a trace minute.
        return _write_trace(tmp_path / "trace.csv", 180.0, 180.0)

    def test_spec_parses(self, trace_path: Path) -> None:
        load = parse_load_spec(
            f"trace:{trace_path},server=1,servers=3,speedup=60,profile=A100-80GB,seed=4"
        )
        assert isinstance(load, TraceLoad)
        assert load.server == 1
        assert load.timeline.kinds == ("high",) * 3
        assert load.timeline.bin_s == pytest.approx(1.0)
        assert load.period_s == pytest.approx(read_trace(trace_path).duration_s / 60.0, abs=1.0)

    def test_synthetic_trace(self) -> None:
        load = parse_load_spec("trace:synthetic,server=0,servers=2,speedup=120")
        assert isinstance(load, TraceLoad)
        assert load.period_s == pytest.approx(TraceLoad.SYNTHETIC_SPAN_S / 120.0)
        assert max(_busy(load.demand(0, t)) for t in range(30)) > 0.5

    @pytest.mark.parametrize(
        ("argument", "names"),
        [
            ("", "PATH"),
            ("server=0,servers=2,speedup=1", "PATH"),
            ("synthetic,servers=2,speedup=1", "server="),
            ("synthetic,server=0,servers=2", "speedup="),
            ("synthetic,server=0,servers=2,speedup=1,speed=3", "'speed'"),
            ("synthetic,server=0,servers=2,speedup=1,seed", "'seed'"),
            ("synthetic,server=one,servers=2,speedup=1", "server='one'"),
            ("synthetic,server=0,servers=2,speedup=fast", "speedup='fast'"),
            ("synthetic,server=2,servers=2,speedup=1", "server=2"),
            ("synthetic,server=0,servers=2,speedup=0", "speedup=0"),
            ("synthetic,server=0,servers=2,speedup=1,profile=B200", "B200"),
            ("/no/such/trace.csv,server=0,servers=2,speedup=1", "/no/such/trace.csv"),
        ],
    )
    def test_bad_specs_name_the_bad_part(self, argument: str, names: str) -> None:
        with pytest.raises(ValueError, match="trace load spec") as caught:
            parse_load_spec(f"trace:{argument}")
        assert names in str(caught.value)

    def test_a_malformed_trace_file_is_named(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.csv"
        path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,many,3\n", encoding="utf-8")
        with pytest.raises(ValueError, match="trace load spec") as caught:
            parse_load_spec(f"trace:{path},server=0,servers=1,speedup=1")
        assert "bad.csv" in str(caught.value)

    def test_demand_follows_the_servers_row_of_the_timeline(self, trace_path: Path) -> None:
        load = TraceLoad(
            read_trace(trace_path),
            server=1,
            servers=3,
            speedup=60.0,
            profile=get_profile("H100-SXM"),
        )
        timeline = load.timeline
        for t in np.arange(0.05, timeline.duration_s, 0.25):
            expected = timeline.at(float(t))[1]
            assert load.demand(0, float(t)) == expected
            assert load.demand(7, float(t)) == expected  # every GPU alike
            # After the end the replay starts over.
            assert load.demand(0, float(t) + load.period_s) == expected
        # The server's own row: another server's differs somewhere.
        assert any(timeline.at(b + 0.5)[1] != timeline.at(b + 0.5)[0] for b in range(4))

    def test_busy_trace_minutes_are_busy_at_any_speedup(self, trace_path: Path) -> None:
        trace, profile = read_trace(trace_path), get_profile("H100-SXM")
        for speedup in (30.0, 60.0):
            load = TraceLoad(trace, server=0, servers=2, speedup=speedup, profile=profile)
            busy = _busy(load.demand(0, 120.0 / speedup))  # trace minute 2: busy
            quiet = _busy(load.demand(0, 330.0 / speedup))  # trace minute 5.5: quiet
            assert busy > 0.9
            assert quiet < 0.5 * busy

    def test_deterministic_for_a_seed(self) -> None:
        def row(seed: int) -> list[PhaseDemand]:
            load = parse_load_spec(f"trace:synthetic,server=1,servers=2,speedup=120,seed={seed}")
            return [load.demand(0, t + 0.5) for t in range(30)]

        assert row(3) == row(3)
        assert row(3) != row(4)

    def test_drives_a_fake_gpu_harder_in_busy_minutes(self, trace_path: Path) -> None:
        clock = ManualClock()
        load = parse_load_spec(f"trace:{trace_path},server=0,servers=2,speedup=60")
        backend = NvmlBackend(FakeNvml("H100-SXM:2", load=load, clock=clock.now))
        backend.open()
        power_w: list[float] = []
        for _ in range(6):  # one wall second per trace minute
            # At a bin's end the 1 s average holds exactly that bin.
            clock.advance(1.0)
            power_w.append(backend.read(1).power_w)
        busy_w, quiet_w = power_w[1:3], power_w[4:]
        assert min(busy_w) > 1.5 * max(quiet_w)
        assert backend.read(0).power_w == pytest.approx(backend.read(1).power_w)
        backend.close()
