"""The demo's load files: what the demo writes is what the fake NVML reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polca.power.model import PhaseDemand
from polca_node.gpu.load import FileLoad
from polca_testbed.demo.load import load_file_payload, write_load_file


class TestLoadFiles:
    def test_payload_is_what_the_fake_nvml_reads(self, tmp_path: Path) -> None:
        demand = PhaseDemand(prefill_frac=1 / 3, decode_frac=2 / 3)
        path = tmp_path / "node-1.json"
        write_load_file(path, load_file_payload(demand))
        read = FileLoad(path).demand(5, 0.0)
        assert read.prefill_frac == pytest.approx(1 / 3, abs=1e-4)
        assert read.decode_frac == pytest.approx(2 / 3, abs=1e-4)
        assert read.prefill_frac + read.decode_frac <= 1.0

    def test_write_replaces_the_file_and_leaves_no_temp_file(self, tmp_path: Path) -> None:
        path = tmp_path / "load.json"
        write_load_file(path, load_file_payload(PhaseDemand(decode_frac=0.5)))
        write_load_file(path, load_file_payload(PhaseDemand(train_frac=1.0)))
        assert json.loads(path.read_text())["default"]["train_frac"] == 1.0
        assert [p.name for p in tmp_path.iterdir()] == ["load.json"]
