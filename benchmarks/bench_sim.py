"""Simulator speed: one simulated hour of a 50-server row at 100 ms resolution, on one core.

Target (issue 6): under 60 s of wall time. Prints the figures; asserts nothing.
Run with ``make bench-sim`` (which pins NumPy/BLAS to one thread).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from polca.power.profiles import get_profile
from polca.sim.domain import DomainConfig
from polca.sim.engine import simulate
from polca.sim.policies import make_policy
from polca.sim.runner import Scenario, requests_for
from polca.sim.synthetic import CONV_PARAMS, generate
from polca.sim.trace import read_trace

TARGET_S = 60.0
DEFAULT_TRACE = (
    Path(__file__).resolve().parents[2] / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=50, help="servers in the row")
    parser.add_argument(
        "--base-servers", type=int, default=40, help="servers the budget is provisioned for"
    )
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--dt", type=float, default=0.1)
    parser.add_argument(
        "--load-scale",
        type=float,
        default=14.45,
        help="trace-rate multiple for the base row (docs/simulator.md's calibration)",
    )
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    args = parser.parse_args()

    if args.trace.exists():
        trace, source = read_trace(args.trace), str(args.trace)
    else:
        trace, source = generate(CONV_PARAMS, args.duration, np.random.default_rng(0)), "synthetic"
    domain = DomainConfig(
        get_profile("H100-SXM"),
        base_servers=args.base_servers,
        oversubscription=(args.servers - args.base_servers) / args.base_servers,
    )
    scenario = Scenario(trace=trace, domain=domain, duration_s=args.duration, dt_s=args.dt)
    requests = requests_for(scenario, domain, args.load_scale)
    steps = round((args.duration + 120.0) / args.dt)

    print(
        f"trace: {source}; {len(requests)} requests; {domain.servers} servers x 8 GPUs "
        f"on a {args.base_servers}-server budget"
    )
    print(
        f"{args.duration:.0f} s simulated (+120 s drain) at {1000 * args.dt:.0f} ms: {steps} steps"
    )
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    header = ("policy", "wall s", "us/step", "sim s / wall s", "mean %", "peak %")
    print(f"{header[0]:<10} " + " ".join(f"{h:>{max(8, len(h))}}" for h in header[1:]))
    worst = 0.0
    for name in ("none", "polca", "polca-k8s"):
        config = scenario.sim_config(domain, make_policy(name), brake=True)
        start = time.perf_counter()
        result = simulate(config, requests)
        wall = time.perf_counter() - start
        worst = max(worst, wall)
        power = result.metered_power_w.astype(np.float64) / domain.budget_w * 100
        print(
            f"{name:<10} {wall:8.1f} {1e6 * wall / steps:8.0f} {args.duration / wall:14.0f} "
            f"{power.mean():8.1f} {power.max():8.1f}"
        )
    verdict = "meets" if worst < TARGET_S else "MISSES"
    print(f"slowest policy: {worst:.1f} s — {verdict} the {TARGET_S:.0f} s target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
