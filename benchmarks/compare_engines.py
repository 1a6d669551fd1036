"""The fluid engine against the request engine on a row: one line per trace, seed and policy.

Each trace of the evaluation set (``--traces``) is replayed on a row (``--servers`` on a
``--base-servers`` budget, ``--duration`` s at ``--dt``) by both engines, through the runner
as ``polca simulate`` does (each engine's own uncapped baseline), with the policies' triggers as
written (not derived from the baseline's peak, a noisy extreme), so both engines run one plan.
Prints, request engine / fluid engine: metered mean and peak power (% of the budget), brake
events, time in stage 0, P50 and P99 time to first token and P50 end-to-end latency of the
high tier, P50 end-to-end of the low tier, the low tier's P50 impact and throughput.
``docs/simulator.md`` §6 quotes its output. Asserts nothing (the tolerances are tested in
``tests/unit/sim/test_fluid_engine.py``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from polca.power.profiles import get_profile
from polca.sim.domain import DomainConfig
from polca.sim.evalset import load_eval_trace, synthetic_members
from polca.sim.metrics import Metrics
from polca.sim.policies import DEFAULT_POLICIES, make_policy
from polca.sim.runner import Scenario, calibrate_load, run_engines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", default="conv-fit,code", help="evaluation-set members")
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--servers", type=int, default=50)
    parser.add_argument("--base-servers", type=int, default=40)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--dt", type=float, default=1.0)
    parser.add_argument(
        "--load-scale", type=float, default=None, help="default: the request engine's calibration"
    )
    args = parser.parse_args()
    members = {m.name: m for m in synthetic_members()}
    print(
        "trace seed policy | mean % | peak % | brakes | stage 0 % | high TTFT P50 ms | "
        "high TTFT P99 ms | high e2e P50 s | low e2e P50 s | low P50 impact % | low throughput %"
        " (each: request / fluid)"
    )
    for name in args.traces.split(","):
        member = members[name]
        for seed in (int(s) for s in args.seeds.split(",")):
            trace = load_eval_trace(member, args.duration, seed)
            base = DomainConfig(get_profile("H100-SXM"), base_servers=args.base_servers)
            domain = replace(
                base,
                mix=member.mix,
                oversubscription=(args.servers - args.base_servers) / args.base_servers,
            )
            scenario = Scenario(
                trace=trace, domain=domain, duration_s=args.duration, dt_s=args.dt, seed=seed
            )
            # The request engine's calibration unless given: both engines get the same load.
            load = args.load_scale or calibrate_load(scenario)
            policies = [make_policy(p, derive_triggers=False) for p in DEFAULT_POLICIES]
            runs = run_engines(scenario, policies, load_scale=load)
            for policy, by_engine in runs.items():
                req, flu = by_engine["request"], by_engine["fluid"]
                cells = " | ".join(f"{a} / {b}" for a, b in zip(_row(req), _row(flu), strict=True))
                print(f"{name} {seed} {policy} (load {load:.2f}) | {cells}", flush=True)
    return 0


def _row(m: Metrics) -> tuple[str, ...]:
    high, low = m.tiers["high"], m.tiers["low"]
    return (
        f"{m.mean_power_pct:.1f}",
        f"{m.peak_power_pct:.1f}",
        f"{m.brake_events}",
        f"{m.stage_time_pct[0]:.1f}",
        f"{1e3 * high.ttft_p50_s:.0f}",
        f"{1e3 * high.ttft_p99_s:.0f}",
        f"{high.e2e_p50_s:.2f}",
        f"{low.e2e_p50_s:.2f}",
        f"{100 * low.e2e_p50_impact:+.1f}",
        f"{100 * low.throughput_rel:.1f}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
