"""Simulator speed on one core, three figures. Prints them; asserts nothing.

* **row** (issue 6): one simulated hour of a 50-server row at 100 ms resolution, every policy,
  request engine. Target: under 60 s of wall time.
* **hall, request engine** (issue 15, the old figure): 1,000 servers x 8 GPUs at 1 s
  resolution, ``polca-k8s`` (the slowest policy: controller, guard and every stage), at the
  row's per-server load. A run holds at most ``MAX_REQUESTS`` (10 M) requests and the hall
  draws ~7.1 M an hour at that load (about 1.2 G a week), so it is measured as consecutive
  hour-long runs (each its own requests, seeds 0, 1, ...; ``--hall-hours``, 2 by default: a
  day took 6 minutes) and the week is extrapolated from them, and printed as such.
* **hall, fluid engine** (issue 15, the new figure): the same hall, policy and load through
  :mod:`polca.sim.fluid_engine`, a full simulated week in one run, measured. Target: under
  60 s of CPU.

Run with ``make bench-sim`` (which pins NumPy/BLAS to one thread and the process to one core).
Besides wall time it prints the process's CPU time: on a shared machine wall time also counts
the waits for the core, CPU time (mostly) does not.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from polca.control.controller import ControllerState, decide
from polca.control.plan import ControlPlan
from polca.power.profiles import get_profile
from polca.sim.domain import DomainConfig
from polca.sim.engine import SimConfig, simulate
from polca.sim.fluid_engine import FluidWorkload, simulate_fluid
from polca.sim.policies import make_policy
from polca.sim.runner import Scenario, requests_for
from polca.sim.synthetic import CONV_PARAMS, generate
from polca.sim.trace import Trace, read_trace

TARGET_S = 60.0
WEEK_S = 7 * 86400.0
DRAIN_S = 120.0  # the engine's default drain after the arrivals stop
ROW_LOAD_SCALE = 14.45  # trace-rate multiple for a 40-server base row (docs/simulator.md)
ROW_BASE_SERVERS = 40
DEFAULT_TRACE = (
    Path(__file__).resolve().parents[2] / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=("row", "hall", "fluid", "all"), default="all")
    parser.add_argument("--servers", type=int, default=50, help="row: servers in the row")
    parser.add_argument(
        "--base-servers", type=int, default=40, help="row: servers the budget is provisioned for"
    )
    parser.add_argument("--duration", type=float, default=3600.0, help="row: simulated seconds")
    parser.add_argument("--dt", type=float, default=0.1, help="row: step, seconds")
    parser.add_argument(
        "--load-scale",
        type=float,
        default=ROW_LOAD_SCALE,
        help="row: trace-rate multiple for the base row (docs/simulator.md's calibration)",
    )
    parser.add_argument("--hall-servers", type=int, default=1000)
    parser.add_argument(
        "--hall-base-servers",
        type=int,
        default=800,
        help="hall: servers its budget is provisioned for (the row's 50/40 ratio)",
    )
    parser.add_argument("--hall-dt", type=float, default=1.0)
    parser.add_argument(
        "--hall-hours", type=int, default=2, help="hall, request engine: hour-long runs measured"
    )
    parser.add_argument(
        "--fluid-days", type=float, default=7.0, help="hall, fluid engine: days simulated"
    )
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    args = parser.parse_args()

    if args.trace.exists():
        trace, source = read_trace(args.trace), str(args.trace)
    else:
        trace, source = generate(CONV_PARAMS, args.duration, np.random.default_rng(0)), "synthetic"
    print(f"trace: {source}; threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    if args.part in ("row", "all"):
        bench_row(args, trace)
    if args.part in ("hall", "all"):
        bench_hall(args, trace)
    if args.part in ("fluid", "all"):
        bench_fluid(args, trace)
    return 0


def _domain(servers: int, base_servers: int) -> DomainConfig:
    return DomainConfig(
        get_profile("H100-SXM"),
        base_servers=base_servers,
        oversubscription=(servers - base_servers) / base_servers,
    )


def bench_row(args: argparse.Namespace, trace: Trace) -> None:
    domain = _domain(args.servers, args.base_servers)
    scenario = Scenario(trace=trace, domain=domain, duration_s=args.duration, dt_s=args.dt)
    requests = requests_for(scenario, domain, args.load_scale)
    steps = round((args.duration + DRAIN_S) / args.dt)

    print(
        f"\nrow: {len(requests)} requests; {domain.servers} servers x 8 GPUs "
        f"on a {args.base_servers}-server budget"
    )
    print(
        f"{args.duration:.0f} s simulated (+120 s drain) at {1000 * args.dt:.0f} ms: {steps} steps"
    )
    header = ("policy", "wall s", "cpu s", "us/step", "sim s / wall s", "mean %", "peak %")
    print(f"{header[0]:<10} " + " ".join(f"{h:>{max(8, len(h))}}" for h in header[1:]))
    worst = 0.0
    for name in ("none", "polca", "polca-k8s"):
        config = scenario.sim_config(domain, make_policy(name), brake=True)
        start, start_cpu = time.perf_counter(), time.process_time()
        result = simulate(config, requests)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        worst = max(worst, wall)
        power = result.metered_power_w.astype(np.float64) / domain.budget_w * 100
        print(
            f"{name:<10} {wall:8.1f} {cpu:8.1f} {1e6 * wall / steps:8.0f} "
            f"{args.duration / wall:14.0f} {power.mean():8.1f} {power.max():8.1f}"
        )
    verdict = "meets" if worst < TARGET_S else "MISSES"
    print(f"slowest policy: {worst:.1f} s — {verdict} the {TARGET_S:.0f} s target")


def bench_hall(args: argparse.Namespace, trace: Trace) -> None:
    domain = _domain(args.hall_servers, args.hall_base_servers)
    # The row's per-server load: requests_for scales the rate by the inference servers over
    # the base row's, so the base row's multiple scales with its size.
    load_scale = ROW_LOAD_SCALE * args.hall_base_servers / ROW_BASE_SERVERS
    hour = 3600.0
    base = Scenario(trace=trace, domain=domain, duration_s=hour, dt_s=args.hall_dt)
    policy = make_policy("polca-k8s")
    steps = round((hour + DRAIN_S) / args.hall_dt)
    print(
        f"\nhall: {domain.servers} servers x 8 GPUs on a {args.hall_base_servers}-server "
        f"budget, polca-k8s, at {args.hall_dt:g} s: {args.hall_hours} hour-long runs of "
        f"{steps} steps (+120 s drain each)"
    )
    header = ("hour", "requests", "requests s", "engine s", "cpu s", "mean %", "peak %")
    print(" ".join(f"{h:>10}" for h in header))
    requests_total = gen_total = sim_total = cpu_total = 0.0
    for seed in range(args.hall_hours):
        scenario = replace(base, seed=seed)
        start, start_cpu = time.perf_counter(), time.process_time()
        requests = requests_for(scenario, domain, load_scale)
        gen = time.perf_counter() - start
        start = time.perf_counter()
        result = simulate(scenario.sim_config(domain, policy), requests)
        sim = time.perf_counter() - start
        cpu = time.process_time() - start_cpu  # requests and engine
        power = result.metered_power_w.astype(np.float64) / domain.budget_w * 100
        print(
            f"{seed:>10} {len(requests):>10} {gen:>10.1f} {sim:>10.1f} "
            f"{cpu:>10.1f} {power.mean():>10.1f} {power.max():>10.1f}",
            flush=True,
        )
        requests_total += len(requests)
        gen_total += gen
        sim_total += sim
        cpu_total += cpu
    simulated_s = args.hall_hours * hour
    wall = gen_total + sim_total
    print(
        f"{simulated_s / 3600:.0f} h simulated: {requests_total / 1e6:.1f} M requests, "
        f"{gen_total:.1f} s generating them + {sim_total:.1f} s in the engine = {wall:.1f} s "
        f"wall ({cpu_total:.1f} s CPU; {1e6 * wall / requests_total:.2f} us wall per request)"
    )
    scale = WEEK_S / simulated_s
    week, week_cpu = wall * scale, cpu_total * scale
    verdict = "meets" if week < TARGET_S else "MISSES"
    print(
        f"a week, extrapolated ({scale:.0f}x the measured): {week:.0f} s wall, {week_cpu:.0f} s "
        f"CPU — {verdict} the {TARGET_S:.0f} s target"
    )
    assert policy.plan is not None
    calls = 20_000
    per_call_s = _controller_cpu_s(policy.plan, calls) / calls
    print(
        f"of which the controller: {1e6 * per_call_s:.1f} us of CPU per decide() call "
        f"({calls} calls), {per_call_s * WEEK_S:.0f} s for a week of 1 s control intervals"
    )


def bench_fluid(args: argparse.Namespace, trace: Trace) -> None:
    domain = _domain(args.hall_servers, args.hall_base_servers)
    # The row's per-server load, as bench_hall (requests_for's rate over the inference servers).
    rate = ROW_LOAD_SCALE * args.hall_servers / ROW_BASE_SERVERS
    duration_s = args.fluid_days * 86400.0
    config = SimConfig(domain, make_policy("polca-k8s"), duration_s=duration_s, dt_s=args.hall_dt)
    steps = round((duration_s + config.drain_s) / args.hall_dt)
    print(
        f"\nhall, fluid engine: {domain.servers} servers x 8 GPUs on a "
        f"{args.hall_base_servers}-server budget, polca-k8s, at {args.hall_dt:g} s: "
        f"{args.fluid_days:g} days simulated in one run, {steps} steps (+120 s drain)"
    )
    start, start_cpu = time.perf_counter(), time.process_time()
    result = simulate_fluid(config, FluidWorkload(trace, rate, seed=0))
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    power = result.metered_power_w.astype(np.float64) / domain.budget_w * 100
    requests = sum((result.tier_requests or {}).values())
    print(
        f"{requests / 1e9:.2f} G requests; mean {power.mean():.1f} %, peak {power.max():.1f} % "
        f"of the budget; {result.brake_events} brakes, {result.stage_changes} stage changes, "
        f"{result.guard_actions} guard actions; {result.arrival_s.size} latency samples"
    )
    week_cpu = cpu * WEEK_S / duration_s
    verdict = "meets" if week_cpu < TARGET_S else "MISSES"
    scaled = "" if duration_s == WEEK_S else f" (a week: {week_cpu:.1f} s CPU, scaled)"
    print(
        f"{wall:.1f} s wall, {cpu:.1f} s CPU ({1e6 * cpu / steps:.0f} us CPU per step){scaled}"
        f" — {verdict} the {TARGET_S:.0f} s target"
    )


def _controller_cpu_s(plan: ControlPlan, calls: int) -> float:
    """CPU seconds of ``calls`` controller decisions, power crossing the triggers every 50."""
    state = ControllerState()
    budget_w = 1e6
    start = time.process_time()
    for i in range(calls):
        power_w = budget_w * (0.95 if (i // 50) % 2 else 0.7)
        state = decide(
            plan, state, now_s=float(i), domain_power_w=power_w, budget_w=budget_w, sample_age_s=1.1
        ).state
    return time.process_time() - start


if __name__ == "__main__":
    raise SystemExit(main())
