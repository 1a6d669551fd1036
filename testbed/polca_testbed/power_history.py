"""A recorded power history for tests, benchmarks and the docs: a synthetic row of GPU servers,
written as the node daemons' ``polca_gpu_power_watts`` in OpenMetrics, backfilled into a real
Prometheus with ``promtool tsdb create-blocks-from openmetrics``.

Requests come from the simulator's generator fitted to the Azure conversation trace
(:func:`polca.sim.synthetic.generate`, one independent stream per server), thinned by a diurnal
curve; each step, a server's GPUs split their time between prefill, decode and idle by the
work that arrived, and draw the GPU profile's phase power (Splitwise's per-phase constants):
a coarse model, enough to give a row the bursty, diurnal power a replay must handle.

    python -m polca_testbed.power_history --dir /tmp/row --hours 24   # prints the URL, serves
"""

from __future__ import annotations

import argparse
import math
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from polca.power.profiles import get_profile
from polca.sim.domain import SERVICE_MODELS
from polca.sim.synthetic import CONV_PARAMS, generate
from polca.tooling.history import History
from polca_testbed.prometheus import Prometheus, serve_until_stopped, start_prometheus

__all__ = [
    "RowHistory",
    "as_history",
    "recorded_prometheus",
    "synthetic_row",
    "write_openmetrics",
]

METRIC = "polca_gpu_power_watts"
# Each node's GPU energy as a counter, as a PDU or BMC exporter gives it (for promql policies).
ENERGY_COUNTER = "node_gpu_energy_joules"
DECODE_BATCH = 16  # requests decoded together: each one holds the GPUs 1/16 of its tokens' time


@dataclass(frozen=True, slots=True)
class RowHistory:
    start_s: float
    step_s: float
    nodes: tuple[str, ...]
    tiers: tuple[str, ...]  # per node
    gpu_power_w: npt.NDArray[np.float64]  # (steps, nodes, gpus)

    @property
    def steps(self) -> int:
        return int(self.gpu_power_w.shape[0])

    @property
    def node_power_w(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.gpu_power_w.sum(axis=2))

    @property
    def domain_power_w(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.node_power_w.sum(axis=1))


def synthetic_row(
    *,
    nodes: int = 8,
    gpus: int = 8,
    hours: float = 6.0,
    step_s: float = 15.0,
    start_s: float | None = None,
    load: float = 0.4,
    profile: str = "H100-SXM",
    seed: int = 0,
) -> RowHistory:
    """A row's per-GPU power; `load` multiplies the conversation trace's request rate."""
    prof = get_profile(profile)
    service = SERVICE_MODELS[profile]
    duration_s = hours * 3600.0
    steps = math.floor(duration_s / step_s)
    end_s = start_s if start_s is not None else math.floor(time.time() / 3600) * 3600 - 3600
    start = end_s - steps * step_s if start_s is None else start_s
    rng = np.random.default_rng(seed)
    params = replace(CONV_PARAMS, rate_per_s=CONV_PARAMS.rate_per_s * load)
    power = np.empty((steps, nodes, gpus))
    for node in range(nodes):
        trace = generate(params, duration_s, rng)
        # Diurnal: busiest mid-afternoon (UTC), half as busy at night.
        hour = ((start + trace.arrival_s) / 3600.0) % 24
        keep = rng.random(len(trace)) < 0.75 + 0.25 * np.cos((hour - 15.0) / 24.0 * 2 * np.pi)
        step = np.minimum((trace.arrival_s[keep] / step_s).astype(np.int64), steps - 1)
        prefill_s = service.prefill_overhead_s + trace.context_tokens[keep] / (
            service.prefill_tokens_per_s
        )
        decode_s = trace.generated_tokens[keep] * (
            service.tbt_base_s / DECODE_BATCH + service.tbt_per_request_s
        )
        pf = np.minimum(1.0, np.bincount(step, prefill_s, minlength=steps) / step_s)
        df = np.minimum(1.0 - pf, np.bincount(step, decode_s, minlength=steps) / step_s)
        gpu_w = (
            prof.idle_w + (prof.prefill_w - prof.idle_w) * pf + (prof.decode_w - prof.idle_w) * df
        )
        noise = rng.normal(1.0, 0.02, size=(steps, gpus))
        power[:, node, :] = gpu_w[:, None] * noise
    names = tuple(f"gpu-node-{i}" for i in range(nodes))
    tiers = tuple("high" if i % 2 == 0 else "low" for i in range(nodes))
    return RowHistory(float(start), step_s, names, tiers, power)


def as_history(row: RowHistory, overhead_w: float) -> History:
    """The replay's view of `row` straight from memory (what Prometheus should give back)."""
    tiers = sorted(set(row.tiers))
    columns = {t: [i for i, name in enumerate(row.tiers) if name == t] for t in tiers}
    gpus = row.gpu_power_w.shape[2]
    return History(
        start_s=row.start_s,
        step_s=row.step_s,
        nodes=row.nodes,
        node_power_w=row.node_power_w,
        overhead_w=overhead_w,
        tier_power_w={
            t: row.gpu_power_w[:, cols, :].sum(axis=(1, 2)) for t, cols in columns.items()
        },
        tier_gpus={t: np.full(row.steps, float(len(cols) * gpus)) for t, cols in columns.items()},
    )


def write_openmetrics(
    history: RowHistory,
    path: Path,
    *,
    gaps: Sequence[tuple[str, float, float]] = (),
    jobs: int = 1,
    counter_resets: Sequence[tuple[str, float]] = (),
) -> Path:
    """The history as OpenMetrics; `gaps` (node, from_s, to_s) leave samples out; `jobs` > 1
    writes every series that many times with a `job` label (two scrape jobs, one daemon).
    Each node's GPU energy is also written as the counter ``node_gpu_energy_joules_total``,
    restarting from zero at each of `counter_resets` (node, at_s), as after an exporter restart.
    """
    times = history.start_s + history.step_s * np.arange(history.steps)
    stamps = [f"{t:.3f}" for t in times]
    with path.open("w", encoding="utf-8") as out:
        out.write(f"# HELP {METRIC} GPU board power in watts.\n# TYPE {METRIC} gauge\n")
        for n, (node, tier) in enumerate(zip(history.nodes, history.tiers, strict=True)):
            present = np.ones(history.steps, dtype=bool)
            for gap_node, from_s, to_s in gaps:
                if gap_node == node:
                    present &= (times < from_s) | (times > to_s)
            for gpu in range(history.gpu_power_w.shape[2]):
                values = history.gpu_power_w[:, n, gpu]
                for job in range(jobs):
                    labels = f'node="{node}",gpu="{gpu}",tier="{tier}",job="polca-{job}"'
                    out.writelines(
                        f"{METRIC}{{{labels}}} {values[i]:.3f} {stamps[i]}\n"
                        for i in np.flatnonzero(present)
                    )
        out.write(f"# TYPE {ENERGY_COUNTER} counter\n")
        for n, node in enumerate(history.nodes):
            energy_j = np.cumsum(history.node_power_w[:, n] * history.step_s)
            for reset_node, at_s in counter_resets:
                if reset_node == node:
                    after = times >= at_s
                    energy_j[after] -= energy_j[after][0]
            out.writelines(
                f'{ENERGY_COUNTER}_total{{node="{node}"}} {energy_j[i]:.3f} {stamps[i]}\n'
                for i in range(history.steps)
            )
        out.write("# EOF\n")
    return path


def recorded_prometheus(
    state_dir: Path,
    history: RowHistory,
    *,
    gaps: Sequence[tuple[str, float, float]] = (),
    jobs: int = 1,
    counter_resets: Sequence[tuple[str, float]] = (),
) -> Prometheus:
    """A Prometheus (no scrape targets) whose storage holds `history`, backfilled."""
    state_dir.mkdir(parents=True, exist_ok=True)
    source = write_openmetrics(
        history, state_dir / "history.om", gaps=gaps, jobs=jobs, counter_resets=counter_resets
    )
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source),
         str(state_dir / "data")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return start_prometheus(state_dir, [], retention="3650d")


def _main() -> None:  # pragma: no cover - manual use (docs/plan-your-row.md)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--load", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    row = synthetic_row(nodes=args.nodes, hours=args.hours, load=args.load, seed=args.seed)
    prom = recorded_prometheus(args.dir, row)
    end = row.start_s + (row.steps - 1) * row.step_s
    print(f"{prom.url} from {row.start_s:.0f} to {end:.0f}, peak {row.domain_power_w.max():.0f} W",
          flush=True)  # fmt: skip
    serve_until_stopped(prom)


if __name__ == "__main__":
    _main()
