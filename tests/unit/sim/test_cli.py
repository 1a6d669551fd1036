"""``polca simulate`` end to end on tiny rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from polca.cli import main
from polca.sim.synthetic import CONV_PARAMS, generate


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    trace = generate(CONV_PARAMS, 90.0, np.random.default_rng(4))
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [
        f"{t:.4f},{c},{g}"
        for t, c, g in zip(
            trace.arrival_s, trace.context_tokens, trace.generated_tokens, strict=True
        )
    ]
    path = tmp_path / "trace.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


TINY = ["--servers", "4", "--duration", "60", "--load-scale", "2.5", "--no-progress"]


def test_help_documents_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--trace",
        "--oversubscription",
        "--policy",
        "--search",
        "--json",
        "--plot",
        "--seed",
    ):
        assert option in out


def test_json_run_and_plot(
    trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "run.png"
    code = main(
        [
            "simulate",
            "--trace",
            str(trace_file),
            *TINY,
            "--oversubscription",
            "0.5",
            "--json",
            "--plot",
            str(png),
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in data["results"]] == ["none", "polca", "polca-k8s"]
    assert data["scenario"]["load_scale"] == 2.5
    for r in data["results"]:
        assert r["servers"] == 6
        assert set(r["tiers"]) == {"high", "low"}
        assert r["tiers"]["high"]["requests"] > 0
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_table_output(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", str(trace_file), *TINY, "--policy", "polca"]) == 0
    out = capsys.readouterr().out
    assert "brake events" in out
    assert "TTFT" in out
    assert "polca" in out


def test_same_seed_same_numbers(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "simulate",
        "--trace",
        str(trace_file),
        *TINY,
        "--policy",
        "polca-k8s",
        "--json",
        "--seed",
        "3",
    ]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first


def test_search_json(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "simulate",
        "--trace",
        str(trace_file),
        *TINY,
        "--search",
        "--search-step",
        "0.5",
        "--search-max",
        "0.5",
    ]
    assert main([*args, "--json", "--policy", "none", "--policy", "polca-k8s"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["policy"] for p in data["policies"]] == ["none", "polca-k8s"]
    for p in data["policies"]:
        assert p["evaluated"]
        if p["best_extra_servers"] is not None:
            assert p["best"]["passed"]


def test_bad_trace_exits_2_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n1.0,10,5\r\n2.0,ten,5\r\n")
    assert main(["simulate", "--trace", str(bad), *TINY]) == 2
    assert "bad.csv:3" in capsys.readouterr().err


def test_bad_plan_exits_2(
    tmp_path: Path, trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("stages: [1, 2]\n")
    assert main(["simulate", "--trace", str(trace_file), *TINY, "--plan", str(plan)]) == 2
    assert "invalid control plan" in capsys.readouterr().err


def test_fit_trace(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", str(trace_file), "--fit-trace"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["rate_per_s"] > 0
    assert "context_log_mean" in fitted


def test_named_plan_and_low_latency_criterion(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--trace", str(trace_file), *TINY, "--oversubscription", "0.5", "--json"]
    assert (
        main([*args, "--policy", "polca-k8s", "--plan", "polca-table", "--max-low-p50-impact", "0"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert len(result["stage_time_pct"]) == 5  # the paper's table: normal, 3 stages, brake
    low = result["tiers"]["low"]
    if low["e2e_p50_impact"] is not None and low["e2e_p50_impact"] >= 0:
        assert any("low-priority P50" in f for f in result["failures"])


def test_fluid_engine_runs_the_same_command(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--trace", str(trace_file), *TINY, "--dt", "1", "--json"]
    assert main([*args, "--policy", "polca-k8s"]) == 0
    request = json.loads(capsys.readouterr().out)
    fluid_args = [*args, "--policy", "polca-k8s", "--engine", "fluid"]
    assert main(fluid_args) == 0
    fluid = json.loads(capsys.readouterr().out)
    assert main(fluid_args) == 0
    assert json.loads(capsys.readouterr().out) == fluid  # deterministic for a seed
    assert request["scenario"]["engine"] == "request"
    assert fluid["scenario"]["engine"] == "fluid"
    for r, f in zip(request["results"], fluid["results"], strict=True):
        assert f["policy"] == r["policy"]
        for tier in ("high", "low"):
            assert f["tiers"][tier]["requests"] == pytest.approx(
                r["tiers"][tier]["requests"], rel=0.2
            )
        assert f["mean_power_pct"] == pytest.approx(r["mean_power_pct"], abs=5.0)


def test_unknown_engine_exits_2(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--trace", str(trace_file), *TINY, "--engine", "steam"])
    assert info.value.code == 2
    assert "--engine" in capsys.readouterr().err
