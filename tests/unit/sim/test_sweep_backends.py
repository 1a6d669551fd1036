"""``polca sweep --backend dask``: a local Dask cluster runs the same cells to the same results
as the process pool; a missing extra or a misplaced option is a one-line error, exit 2."""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stdout
from typing import Any

import pytest

from polca.cli import main

GRID = [
    "--members", "chat-long,diurnal",
    "--seeds", "0-1",
    "--levels", "0,0.5",
    "--policy", "none",
    "--policy", "polca",
    "--servers", "4",
    "--duration", "60",
    "--load-scale", "2.5",
    "--workers", "2",
    "--no-progress",
]  # fmt: skip


def _sweep(*backend: str) -> dict[str, Any]:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["sweep", *GRID, "--json", *backend]) == 0
    data: dict[str, Any] = json.loads(out.getvalue())
    return data


def test_local_dask_cluster_gives_the_process_pools_results() -> None:
    pool = _sweep()
    dask = _sweep("--backend", "dask")
    assert len(dask["cells"]) == 2 * 2 * 2 * 2  # traces x seeds x levels x policies
    assert dask == pool


def test_missing_dask_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    assert main(["sweep", *GRID, "--backend", "dask"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("polca sweep: "), err
    assert "pip install 'polca[distributed]'" in err
    assert len(err.strip().splitlines()) == 1, err


def test_scheduler_address_needs_the_dask_backend_and_no_workers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    address = ["--scheduler-address", "tcp://127.0.0.1:1"]  # refused before any connection
    assert main(["sweep", *GRID, *address]) == 2
    err = capsys.readouterr().err
    assert "--backend dask" in err
    assert len(err.strip().splitlines()) == 1, err
    assert main(["sweep", *GRID, *address, "--backend", "dask"]) == 2  # GRID sets --workers
    err = capsys.readouterr().err
    assert "--workers sizes a local cluster" in err
    assert len(err.strip().splitlines()) == 1, err
