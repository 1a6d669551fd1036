"""Replay speed: a week of a 100-node domain at 15 s resolution (40,320 steps), replay only.

The history is generated in memory (polca_testbed.power_history: 5 synthetic nodes of 8 GPUs
over the week, each repeated 20 times with a different time shift to make 100), not read from
Prometheus: this measures the replay, not the TSDB. Prints the figures; not a timed test.

    make bench-replay
"""

from __future__ import annotations

import resource
import time

import numpy as np

from polca.control.plan import POLCA_PLAN
from polca.power.profiles import get_profile
from polca.tooling.capacity import Criteria, search
from polca.tooling.replay import ShedModel, replay
from polca_testbed.power_history import RowHistory, as_history, synthetic_row

NODES = 100
BASE_NODES = 5
HOURS = 7 * 24.0
STEP_S = 15.0
OVERHEAD_W = 1500.0


def main() -> None:
    t0 = time.perf_counter()
    base = synthetic_row(nodes=BASE_NODES, hours=HOURS, step_s=STEP_S, seed=11)
    rng = np.random.default_rng(5)
    shifts = rng.integers(0, base.steps, size=NODES)
    gpu_w = np.stack(
        [
            np.roll(base.gpu_power_w[:, i % BASE_NODES, :], int(s), axis=0)
            for i, s in enumerate(shifts)
        ],
        axis=1,
    )
    row = RowHistory(
        base.start_s,
        STEP_S,
        tuple(f"gpu-node-{i}" for i in range(NODES)),
        tuple("high" if i % 2 == 0 else "low" for i in range(NODES)),
        gpu_w,
    )
    history = as_history(row, OVERHEAD_W)
    generated_s = time.perf_counter() - t0
    budget_w = float(np.nanmax(history.domain_power_w)) / 0.78
    plan = POLCA_PLAN
    shed = ShedModel.for_plan(plan, get_profile("H100-SXM"))

    t1 = time.perf_counter()
    recorded = replay(plan, budget_w, history, shed=None)
    open_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    bigger = replay(plan, budget_w, history, scale=1.3, shed=shed)
    closed_s = time.perf_counter() - t2
    t3 = time.perf_counter()
    criteria = Criteria(max_throttled_share={"high": 0.01, "low": 1.0})
    capacity = search(plan, budget_w, history, criteria=criteria, shed=shed, max_extra=NODES)
    capacity_s = time.perf_counter() - t3
    best = capacity.largest_safe
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(
        f"history: {NODES} nodes x 8 GPUs, {HOURS / 24:g} days at {STEP_S:g} s = "
        f"{history.steps} steps, generated in memory in {generated_s:.1f} s"
    )
    print(
        f"replay, open loop, recorded row:       {open_s:6.2f} s "
        f"({history.steps / open_s / 1000:.0f}k steps/s), peak {recorded.peak_pct:.1f}%"
    )
    print(
        f"replay, closed loop, +30% ({int(NODES * 1.3)} servers): {closed_s:6.2f} s, peak "
        f"{bigger.peak_pct:.1f}%, {bigger.brake_moments} brake-level moments"
    )
    print(
        f"capacity search: {len(capacity.levels)} row sizes in {capacity_s:.1f} s "
        f"({capacity_s / len(capacity.levels):.2f} s each); largest safe "
        f"{best.servers if best else 'none'} servers"
    )
    print(f"max RSS: {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
