"""`polca replay` and `polca capacity` against a real Prometheus holding a recorded history.

A synthetic 8-node row (polca_testbed.power_history: the simulator's request generator fitted to
the conversation trace) is written as the daemons' polca_gpu_power_watts, every GPU scraped by
two jobs, backfilled with `promtool tsdb create-blocks-from openmetrics`; its last hour has a
gap on one node. The answers read through Prometheus must equal the controller's on the same
series in memory. Tolerance: OpenMetrics carries 3 decimals per GPU, so domain power may differ
by 64 × 0.0005 W; figures are compared to 1e-6 of the budget, stages and counts exactly.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polca.api.convert import plan_from_spec
from polca.api.powerpolicy import PowerPolicy
from polca.control.controller import ControllerState, decide
from polca.power.profiles import get_profile
from polca.tooling.capacity import Criteria, search
from polca.tooling.replay import ShedModel, replay
from polca_testbed.power_history import RowHistory, as_history, recorded_prometheus, synthetic_row
from polca_testbed.prometheus import Prometheus, find_prometheus

REPO = Path(__file__).resolve().parents[2]
POLCA = str(REPO / ".venv" / "bin" / "polca")
OVERHEAD_W = 1500.0
HOURS = 6.0
CLEAN_HOURS = 5.0  # the last hour has a gap on gpu-node-3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def row() -> RowHistory:
    return synthetic_row(nodes=8, hours=HOURS, seed=3)


@pytest.fixture(scope="module")
def gap(row: RowHistory) -> tuple[float, float]:
    start = row.start_s + CLEAN_HOURS * 3600 + 600
    return start, start + 300


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, row: RowHistory, gap: tuple[float, float]
) -> Iterator[Prometheus]:
    find_prometheus()
    prom = recorded_prometheus(
        tmp_path_factory.mktemp("prometheus"),
        row,
        gaps=[("gpu-node-3", *gap)],
        jobs=2,
        counter_resets=[("gpu-node-5", row.start_s + 3600)],
    )
    try:
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def budget_w(row: RowHistory) -> float:
    # The recorded row peaks at 78% of its budget, as production inference rows do (POLCA).
    peak_w = float(row.domain_power_w.max()) + OVERHEAD_W * len(row.nodes)
    return round(peak_w / 0.78)


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory, budget_w: float) -> Path:
    text = (REPO / "examples" / "polca-default.yaml").read_text()
    text = text.replace("budgetWatts: 250000", f"budgetWatts: {budget_w:g}")
    path = tmp_path_factory.mktemp("policy") / "row.yaml"
    path.write_text(text.replace("overheadWatts: 0", f"overheadWatts: {OVERHEAD_W:g}"))
    return path


def polca(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([POLCA, *argv], capture_output=True, text=True, check=False)


def window(row: RowHistory, hours: float = CLEAN_HOURS) -> list[str]:
    end = row.start_s + hours * 3600 - row.step_s
    return ["--from", f"{row.start_s:.0f}", "--to", f"{end:.0f}"]


def run_json(*argv: str) -> dict[str, Any]:
    result = polca(*argv, "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def clean(row: RowHistory) -> RowHistory:
    steps = round(CLEAN_HOURS * 3600 / row.step_s)
    return RowHistory(row.start_s, row.step_s, row.nodes, row.tiers, row.gpu_power_w[:steps])


def spec_of(policy_file: Path) -> Any:
    import yaml

    return PowerPolicy.model_validate(yaml.safe_load(policy_file.read_text())).spec


def test_open_loop_replay_is_the_controller_on_the_same_series(
    prometheus: Prometheus, row: RowHistory, policy_file: Path, budget_w: float
) -> None:
    out = run_json(
        "replay", "--policy", str(policy_file), "--prometheus", prometheus.url,
        *window(row), "--open-loop", "--oversubscription", "0.25",
    )  # fmt: skip
    history = out["history"]
    assert history["nodes"] == list(row.nodes)
    assert history["gpus"] == {"high": 32.0, "low": 32.0}  # each GPU once, despite two jobs
    assert history["gaps"] == []

    plan = plan_from_spec(spec_of(policy_file))
    memory = clean(row)
    for got in out["rows"]:
        # The controller itself, step by step, on the in-memory series.
        power_w = (memory.domain_power_w + OVERHEAD_W * 8) * got["servers"] / 8
        state, stages = ControllerState(), []
        for i, p in enumerate(power_w):
            d = decide(plan, state, now_s=i * row.step_s, domain_power_w=float(p),
                       budget_w=budget_w, sample_age_s=0.0)  # fmt: skip
            state = d.state
            stages.append(d.stage)
        seconds = np.bincount(stages, minlength=len(plan.stages)) * row.step_s
        assert list(got["stage_seconds"].values()) == pytest.approx(list(seconds))
        assert got["brake_moments"] == int(np.count_nonzero(power_w > budget_w))
        assert got["peak_pct"] == pytest.approx(100 * power_w.max() / budget_w, abs=1e-4)
    recorded, bigger = out["rows"]
    assert (recorded["servers"], bigger["servers"]) == (8, 10)
    assert recorded["brake_moments"] == 0
    assert bigger["stage_changes"] > 0


def test_closed_loop_replay_and_capacity_match_memory(
    prometheus: Prometheus, row: RowHistory, policy_file: Path, budget_w: float
) -> None:
    plan = plan_from_spec(spec_of(policy_file))
    history = as_history(clean(row), OVERHEAD_W)
    shed = ShedModel.for_plan(plan, get_profile("H100-SXM"))

    out = run_json(
        "replay", "--policy", str(policy_file), "--prometheus", prometheus.url, *window(row)
    )
    for got in out["rows"]:
        expected = replay(plan, budget_w, history, scale=got["servers"] / 8, shed=shed).summary()
        assert got["stage_seconds"] == expected["stage_seconds"]
        assert got["brake_moments"] == expected["brake_moments"]
        assert got["peak_pct"] == pytest.approx(expected["peak_pct"], abs=1e-4)
        for tier, use in got["tiers"].items():
            assert use == pytest.approx(expected["tiers"][tier], rel=1e-6)  # type: ignore[index]

    cap = run_json(
        "capacity", "--policy", str(policy_file), "--prometheus", prometheus.url, *window(row),
        "--max-throttled", "high=0.01", "--max-throttled", "low=1",
    )  # fmt: skip
    criteria = Criteria(max_throttled_share={"high": 0.01, "low": 1.0})
    expected_cap = search(plan, budget_w, history, criteria=criteria, shed=shed, max_extra=8)
    best = expected_cap.largest_safe
    assert best is not None
    assert cap["largest_safe_servers"] == best.servers
    assert cap["largest_safe_servers"] > 8  # the policy buys servers on this row
    assert cap["margin_pct"] == pytest.approx(100 - best.result.peak_pct, abs=1e-4)
    assert cap["next_size_fails"]
    # The other end of the uncertainty: added servers out of step with the old ones.
    optimistic = cap["independent_servers"]["largest_safe_servers"]
    assert optimistic >= 8


def test_gap_is_reported_and_never_zero_power(
    prometheus: Prometheus, row: RowHistory, policy_file: Path, gap: tuple[float, float]
) -> None:
    args = ["replay", "--policy", str(policy_file), "--prometheus", prometheus.url,
            *window(row, HOURS), "--oversubscription", "0", "--no-progress"]  # fmt: skip
    result = polca(*args)
    assert result.returncode == 5, result.stderr
    assert "no fresh power from gpu-node-3" in result.stderr
    assert "failsafe" in result.stderr
    out = run_json(*args[:-1], "--allow-gaps")
    (reported,) = out["history"]["gaps"]
    assert reported["nodes"] == ["gpu-node-3"]
    assert gap[0] <= reported["start_s"] <= gap[0] + 15
    assert gap[1] - 15 <= reported["end_s"] <= gap[1] + 15
    (recorded,) = out["rows"]
    assert recorded["gap_steps"] == pytest.approx(300 / 15, abs=2)
    # The controller held the failsafe stage (stage2) through the gap, past its staleness.
    assert recorded["stage_seconds"]["stage2"] >= 300 - 15 - 10


def test_gap_shows_through_a_relabelling_promql_query(
    prometheus: Prometheus, row: RowHistory, gap: tuple[float, float], tmp_path: Path
) -> None:
    """nodePower.source promql with label_replace: its result carries each step's own time, so
    only the bounded lookback shows gpu-node-3's gap where it is (without the bound, the last
    sample before the gap stands in for Prometheus' 5-minute lookback: the gap showed 300 s
    late)."""
    query = 'label_replace(polca_gpu_power_watts{job="polca-0"}, "host", "$1", "node", "(.*)")'
    policy = tmp_path / "relabelled.yaml"  # JSON is YAML
    policy.write_text(json.dumps({
        "apiVersion": "polca.dev/v1alpha1", "kind": "PowerPolicy",
        "metadata": {"name": "relabelled"},
        "spec": {"allNodes": True, "budgetWatts": 100000,
                 "telemetry": {"source": "prometheus", "prometheusURL": prometheus.url},
                 "nodePower": {"source": "promql", "query": query, "nodeLabel": "host"}},
    }))  # fmt: skip
    out = run_json(
        "replay", "--policy", str(policy), "--from", f"{gap[0] - 1800:.0f}",
        "--to", f"{gap[1] + 1800:.0f}", "--open-loop", "--oversubscription", "0", "--allow-gaps",
    )  # fmt: skip
    assert out["history"]["nodes"] == list(row.nodes)
    (reported,) = out["history"]["gaps"]
    assert reported["nodes"] == ["gpu-node-3"]
    assert gap[0] <= reported["start_s"] <= gap[0] + 15
    assert gap[1] - 15 <= reported["end_s"] <= gap[1] + 15


def test_bad_input_gets_a_clear_message_and_exit_code(
    prometheus: Prometheus, row: RowHistory, policy_file: Path, tmp_path: Path
) -> None:
    common = ["--policy", str(policy_file), *window(row), "--no-progress"]
    unreachable = polca("replay", *common, "--prometheus", "http://127.0.0.1:1")
    assert unreachable.returncode == 3
    assert "cannot reach Prometheus" in unreachable.stderr

    before = ["--from", f"{row.start_s - 7200:.0f}", "--to", f"{row.start_s - 3600:.0f}"]
    nothing = polca("capacity", "--policy", str(policy_file), "--prometheus", prometheus.url,
                    *before, "--no-progress")  # fmt: skip
    assert nothing.returncode == 4
    assert "returned nothing" in nothing.stderr
    assert "polca_gpu_power_watts" in nothing.stderr  # the query is shown

    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(policy_file.read_text().replace("releasePercent: 75", "releasePercent: 85"))
    refused = polca("replay", "--policy", str(invalid), *common[2:], "--prometheus", prometheus.url)
    assert refused.returncode == 1
    assert "spec.stages[1].releasePercent" in refused.stderr

    counter = tmp_path / "counter.yaml"
    counter.write_text(
        "apiVersion: polca.dev/v1alpha1\nkind: PowerPolicy\nmetadata: {name: c}\nspec:\n"
        "  allNodes: true\n  budgetWatts: 50000\n"
        f"  telemetry: {{source: prometheus, prometheusURL: '{prometheus.url}'}}\n"
        "  nodePower: {source: promql, query: node_energy_joules_total}\n"
    )
    refused = polca("replay", "--policy", str(counter), *common[2:])
    assert refused.returncode == 2
    assert "counter" in refused.stderr
    assert "rate(" in refused.stderr

    bad_time = polca("replay", *common[:2], "--from", "yesterday", "--prometheus", prometheus.url)
    assert bad_time.returncode == 2
    assert "not a time" in bad_time.stderr


def test_promql_node_power_from_a_counter_survives_its_reset(
    prometheus: Prometheus, row: RowHistory, tmp_path: Path
) -> None:
    """nodePower.source promql over an energy counter that restarts from zero (an exporter
    restart) an hour in: rate() handles the reset, so no negative power and no spike."""
    budget_w = float(row.domain_power_w.max()) / 0.78
    policy = tmp_path / "promql.yaml"
    policy.write_text(
        "apiVersion: polca.dev/v1alpha1\nkind: PowerPolicy\nmetadata: {name: promql}\nspec:\n"
        f"  allNodes: true\n  budgetWatts: {budget_w:.0f}\n  failsafeStage: stage2\n"
        f"  telemetry: {{source: prometheus, prometheusURL: '{prometheus.url}'}}\n"
        "  nodePower: {source: promql, query: 'rate(node_gpu_energy_joules_total[1m])'}\n"
    )
    start = row.start_s + 600  # rate() needs a minute of samples first
    out = run_json(
        "replay", "--policy", str(policy), "--from", f"{start:.0f}",
        "--to", f"{row.start_s + 2 * 3600:.0f}", "--open-loop", "--oversubscription", "0",
    )  # fmt: skip
    assert out["history"]["nodes"] == list(row.nodes)
    assert out["history"]["gaps"] == []
    (recorded,) = out["rows"]
    # A minute's average never exceeds the largest 15 s value; a reset read as a spike would.
    steps = slice(round(600 / row.step_s), round(7200 / row.step_s) + 1)
    raw_peak_pct = 100 * row.domain_power_w[steps].max() / budget_w
    assert 0 < recorded["peak_pct"] <= raw_peak_pct + 1e-6
    assert recorded["peak_pct"] > 0.8 * raw_peak_pct


def test_node_regex_selects_the_domain(
    prometheus: Prometheus, row: RowHistory, policy_file: Path
) -> None:
    out = run_json(
        "replay", "--policy", str(policy_file), "--prometheus", prometheus.url, *window(row),
        "--node-regex", r"gpu-node-[0-3]", "--oversubscription", "0",
    )  # fmt: skip
    assert out["history"]["nodes"] == [f"gpu-node-{i}" for i in range(4)]
    assert out["history"]["gpus"] == {"high": 16.0, "low": 16.0}
