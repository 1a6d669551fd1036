"""Load sources for the fake: constant, scripted timeline, a JSON file changed from outside."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from polca.power.model import PhaseDemand
from polca_node.gpu.fake_nvml import FakeNvml
from polca_node.gpu.load import (
    IDLE,
    ConstantLoad,
    FileLoad,
    LoadSource,
    ScriptedLoad,
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
        backend = NvmlBackend(FakeNvml("H100-SXM:2", load=FileLoad(path)))
        backend.open()
        idle_w = backend.read(1).power_w
        _write_json(path, {"gpus": {"1": {"prefill_frac": 1.0}}})
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

    @pytest.mark.parametrize("spec", ["busy", "constant:prefill", "file:", "idle:1"])
    def test_bad_specs(self, spec: str) -> None:
        with pytest.raises(ValueError, match=r"load spec"):
            parse_load_spec(spec)
