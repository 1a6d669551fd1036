"""``polca sweep`` end to end on a tiny grid, checked against single ``polca simulate`` runs of
the same cells."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from typing import Any

import pytest

from polca.cli import main
from polca.sim.sweep import Outcome, worst_cases

SIZE = ["--servers", "4", "--duration", "60", "--load-scale", "2.5", "--no-progress"]
POLICIES = ["--policy", "none", "--policy", "polca"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    png = tmp_path_factory.mktemp("sweep") / "worst.png"
    out = io.StringIO()
    with redirect_stdout(out):  # capsys is per test; the sweep runs once for the module
        code = main(
            [
                "sweep",
                "--members", "chat-long,diurnal",
                "--seeds", "0-1",
                "--levels", "0,0.5",
                "--workers", "2",
                "--json",
                "--plot", str(png),
                *POLICIES,
                *SIZE,
            ]
        )  # fmt: skip
    assert code == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    data: dict[str, Any] = json.loads(out.getvalue())
    return data


def test_structure(sweep: dict[str, Any]) -> None:
    assert [t["name"] for t in sweep["sweep"]["traces"]] == ["chat-long", "diurnal"]
    assert sweep["sweep"]["extra_servers"] == [0, 2]
    assert sweep["load_scales"] == [
        {"trace": t, "seed": s, "load_scale": 2.5} for t in ("chat-long", "diurnal") for s in (0, 1)
    ]
    cells = sweep["cells"]
    assert len(cells) == 2 * 2 * 2 * 2  # traces x seeds x levels x policies
    assert {(c["trace"], c["seed"], c["extra_servers"], c["metrics"]["policy"]) for c in cells} == {
        (t, s, e, p)
        for t in ("chat-long", "diurnal")
        for s in (0, 1)
        for e in (0, 2)
        for p in ("none", "polca")
    }
    assert [w["policy"] for w in sweep["worst_case"]] == ["none", "polca"]


def test_worst_case_agrees_with_the_cells(sweep: dict[str, Any]) -> None:
    outcomes = [
        Outcome(
            policy=c["metrics"]["policy"],
            trace=c["trace"],
            seed=c["seed"],
            extra_servers=c["extra_servers"],
            passed=c["metrics"]["passed"],
            failed_criteria=tuple(c["metrics"]["failed_criteria"]),
        )
        for c in sweep["cells"]
    ]
    for got, want in zip(sweep["worst_case"], worst_cases(outcomes, base_servers=4), strict=True):
        assert got["extra_servers"] == want.extra_servers
        assert got["binding"] == want.binding
        assert got["first_failing_extra"] == want.first_failing_extra


@pytest.mark.parametrize(("trace", "seed", "extra"), [("chat-long", 1, 2), ("diurnal", 0, 0)])
def test_cells_match_polca_simulate(
    sweep: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    trace: str,
    seed: int,
    extra: int,
) -> None:
    over = str(extra / 4)
    args = ["simulate", "--eval-trace", trace, "--seed", str(seed), "--oversubscription", over]
    # The sweep bounds the low-priority P50 by default (DESIGN), simulate only when asked.
    assert main([*args, *POLICIES, *SIZE, "--max-low-p50-impact", "0.25", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)["results"]
    cells = [
        c["metrics"]
        for c in sweep["cells"]
        if (c["trace"], c["seed"], c["extra_servers"]) == (trace, seed, extra)
    ]
    assert cells == single


def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (
        ["--members", "nope"],
        ["--seeds", "x"],
        ["--levels", "0.1,y"],
        ["--trace", "/nonexistent.csv"],
    ):
        assert main(["sweep", *bad, *SIZE]) == 2
        err = capsys.readouterr().err
        assert err.startswith("polca sweep: "), err
        assert len(err.strip().splitlines()) == 1, err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in ("--seeds", "--levels", "--members", "--json", "--plot", "Examples:"):
        assert text in out


def _scales(extra: list[str]) -> list[float]:
    out = io.StringIO()
    size = ["--servers", "4", "--duration", "60", "--no-progress", "--workers", "2"]
    grid = ["--members", "chat-long", "--seeds", "0-1", "--levels", "0", "--policy", "none"]
    with redirect_stdout(out):
        assert main(["sweep", *grid, *size, "--json", *extra]) == 0
    return [s["load_scale"] for s in json.loads(out.getvalue())["load_scales"]]


def test_every_seed_is_calibrated_unless_calibrate_once() -> None:
    per_seed = _scales([])
    once = _scales(["--calibrate-once"])
    assert per_seed[0] == once[0] == once[1]  # seed 0 calibrates alike either way
    assert per_seed[1] != per_seed[0]  # seed 1's own trace calibrates to its own load


def test_fluid_engine_cells_match_polca_simulate(capsys: pytest.CaptureFixture[str]) -> None:
    fluid = [*SIZE, "--engine", "fluid", "--dt", "1", "--max-low-p50-impact", "0.25"]
    args = ["sweep", "--members", "diurnal", "--seeds", "1", "--levels", "0.5", "--json"]
    assert main([*args, "--workers", "1", *POLICIES, *fluid]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sweep"]["engine"] == "fluid"
    single_args = ["simulate", "--eval-trace", "diurnal", "--seed", "1", "--json"]
    assert main([*single_args, "--oversubscription", "0.5", *POLICIES, *fluid]) == 0
    single = json.loads(capsys.readouterr().out)["results"]
    assert [c["metrics"] for c in data["cells"]] == single
