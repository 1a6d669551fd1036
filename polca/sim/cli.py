"""``polca simulate``: run policies over a power domain and print their figures, or search the
largest safe oversubscription per policy."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from polca.control.plan import ControlPlan, plan_from_dict
from polca.options import count, positive_number, seconds
from polca.power.profiles import PROFILES, get_profile
from polca.sim.domain import DomainConfig, Mix
from polca.sim.engine import check_steps
from polca.sim.evalset import EvalTrace, load_eval_trace, synthetic_members
from polca.sim.metrics import Criteria
from polca.sim.policies import (
    DEFAULT_POLICIES,
    IN_BAND_TIMINGS,
    NAMED_PLANS,
    POLICY_NAMES,
    GuardSettings,
    PolicyConfig,
    make_policy,
)
from polca.sim.runner import ENGINES, Scenario, calibrate_load, run_level
from polca.sim.runner import Progress as ProgressFn
from polca.sim.synthetic import CONV_PARAMS, fit, synthetic_trace
from polca.sim.trace import Trace, TraceError, read_trace
from polca.tooling.manifests import ManifestError
from polca.tooling.policyfile import (
    apply_to_simulation,
    is_policy_manifest,
    keep_manifest_timing,
    read_policy,
)

__all__ = [
    "add_domain_options",
    "add_load_options",
    "add_policy_options",
    "add_simulation_options",
    "domain_from_args",
    "parse_mix",
    "policies_from_args",
    "register",
    "run",
]

_EPILOG = """\
Model and sources: docs/simulator.md. Examples:
  polca simulate --trace conv.csv --servers 40 --oversubscription 0.3 --policy polca
  polca simulate --trace conv.csv --search --search-step 0.1 --json
  polca simulate --oversubscription 0.4 --plot run.png        (synthetic requests)
  polca simulate -f examples/polca-default.yaml --oversubscription 0.3   (your own policy)
  polca simulate -f row-a.yaml --pods pods.yaml      (kubectl get pods -A -o yaml > pods.yaml)
The load is calibrated (a few uncapped runs of the base row) unless --load-scale is given; the
value used is printed, so later runs can pass it and skip the calibration.
Exit status: 0 on success (a run that fails the criteria still exits 0), 2 on bad input.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate policies on a power domain; --search finds the safe oversubscription",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    work = p.add_argument_group("workload")
    work.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="CSV trace (TIMESTAMP,ContextTokens,GeneratedTokens; CRLF ok); default: synthetic "
        "requests from the generator fitted to the Azure conversation trace",
    )
    work.add_argument(
        "--eval-trace",
        choices=[m.name for m in synthetic_members()],
        metavar="NAME",
        help="requests from this synthetic member of the evaluation set, with its mix (as "
        "polca sweep runs it; docs/simulator.md lists them): "
        + ", ".join(m.name for m in synthetic_members()),
    )
    work.add_argument(
        "--duration",
        type=seconds,
        default=None,
        metavar="S",
        help="simulated seconds (default: the trace's span, or 3600 for synthetic requests)",
    )
    add_load_options(work)
    work.add_argument(
        "--fit-trace",
        action="store_true",
        help="print the synthetic generator's parameters fitted to --trace and exit",
    )

    dom = p.add_argument_group("power domain")
    add_domain_options(dom)
    dom.add_argument(
        "--oversubscription",
        type=float,
        default=0.0,
        metavar="FRAC",
        help="extra servers as a fraction of --servers, e.g. 0.3 (default %(default)s)",
    )

    pol = p.add_argument_group("policies")
    pol.add_argument(
        "-f",
        "--filename",
        type=Path,
        metavar="POLICY.yaml",
        help="simulate this PowerPolicy manifest (validated first): its stages, tiers and "
        "timing run as polca-k8s with triggers as written, next to none; the row is the "
        "servers its budgetWatts is provisioned for (--servers is ignored), and "
        "--oversubscription adds servers under that budget",
    )
    pol.add_argument(
        "--pods",
        metavar="FILE",
        help="with -f: the row's pods (kubectl get pods -A -o yaml): the --mix becomes their "
        "GPUs per tier, each pod's tier resolved by the manifest's tier rules",
    )
    add_policy_options(pol)

    sim = p.add_argument_group("simulation")
    add_simulation_options(sim)
    sim.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")

    out = p.add_argument_group("search and output")
    out.add_argument(
        "--search",
        action="store_true",
        help="find the largest oversubscription meeting POLCA's criteria (zero brakes, "
        "high-priority P50 impact <= 1%%, low-priority throughput >= 98%%) for each policy",
    )
    out.add_argument(
        "--search-step",
        type=float,
        default=0.1,
        metavar="FRAC",
        help="coarse search step before bisection (default %(default)s)",
    )
    out.add_argument(
        "--search-max",
        type=float,
        default=1.0,
        metavar="FRAC",
        help="largest oversubscription tried (default %(default)s)",
    )
    out.add_argument(
        "--max-low-p50-impact",
        type=float,
        default=None,
        metavar="FRAC",
        help="also require the low-priority end-to-end P50 impact below this, e.g. 0.25 "
        "(POLCA's criteria do not bound it)",
    )
    out.add_argument("--json", action="store_true", help="print JSON instead of tables")
    out.add_argument("--plot", type=Path, metavar="PNG", help="write a figure to this file")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_load_options(group: argparse._ArgumentGroup) -> None:
    """--load-scale, --target-peak-pct, --mix (shared with polca sweep)."""
    group.add_argument(
        "--load-scale",
        type=positive_number,
        default=None,
        metavar="X",
        help="request rate of the base row as a multiple of the trace's (default: calibrated so "
        "the base row's uncapped peak is --target-peak-pct)",
    )
    group.add_argument(
        "--target-peak-pct",
        type=positive_number,
        default=79.0,
        metavar="PCT",
        help="uncapped peak of the base row, %% of budget, for load calibration (default 79, "
        "POLCA's production inference rows)",
    )
    group.add_argument(
        "--mix",
        default="high=0.5,low=0.5,train=0",
        help="server shares per workload, e.g. high=0.5,low=0.3,train=0.2 (default %(default)s)",
    )


def add_domain_options(group: argparse._ArgumentGroup) -> None:
    """The row: --profile, --servers, --gpus-per-server, --server-overhead-w."""
    group.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="H100-SXM",
        help="GPU model (default %(default)s)",
    )
    group.add_argument(
        "--servers",
        type=count,
        metavar="N",
        default=40,
        help="servers the budget is provisioned for (default %(default)s)",
    )
    group.add_argument(
        "--gpus-per-server", type=count, default=8, metavar="N", help="default %(default)s"
    )
    group.add_argument(
        "--server-overhead-w",
        type=float,
        default=1500.0,
        metavar="W",
        help="constant non-GPU power per server (default %(default)s W)",
    )


def add_policy_options(group: argparse._ArgumentGroup) -> None:
    """Which policies and their timing, plans, triggers and guard."""
    group.add_argument(
        "--policy",
        action="append",
        choices=POLICY_NAMES,
        help=f"policy to run; repeat for several (default: {', '.join(DEFAULT_POLICIES)})",
    )
    group.add_argument(
        "--polca-delay",
        type=float,
        default=40.0,
        metavar="S",
        help="POLCA's out-of-band actuation delay (default %(default)s s)",
    )
    group.add_argument(
        "--telemetry",
        choices=tuple(IN_BAND_TIMINGS),
        help="the in-band policies' path (polca-k8s, physics): 'stream', the operator's default "
        "(0.5 s samples, a cycle at each crossing: 0.8 s reaction), or 'prometheus' (1 s "
        "scrape + 0.1 s query + 1 s interval: 2.3 s) (default: stream; with -f, the "
        "manifest's telemetry.source)",
    )
    group.add_argument(
        "--k8s-actuation",
        type=float,
        metavar="S",
        help="in-band actuation: status write + watch + NVML (default 0.2 s)",
    )
    group.add_argument(
        "--telemetry-period",
        type=seconds,
        metavar="S",
        help="telemetry sampling period (default: 1 s for polca; the --telemetry path's, "
        "0.5 or 1 s, for polca-k8s and physics)",
    )
    group.add_argument(
        "--control-interval",
        type=seconds,
        metavar="S",
        help="controller interval (default: 1 s for polca; the --telemetry path's, 0.1 or "
        "1 s, for polca-k8s and physics)",
    )
    group.add_argument(
        "--plan",
        type=Path,
        metavar="NAME|FILE",
        help="control plan for polca-k8s instead of its default: 'polca-table' (the paper's "
        "table), 'k8s' (the default) or a YAML/JSON file (keys of "
        "polca.control.plan.plan_from_dict; see docs/simulator.md)",
    )
    group.add_argument(
        "--polca-plan",
        type=Path,
        metavar="NAME|FILE",
        help="control plan for the polca policy instead of the paper's table, as for --plan "
        "(for ablations: POLCA's delays with another plan)",
    )
    group.add_argument(
        "--no-derive-triggers",
        action="store_true",
        help="run polca-k8s with its plan's triggers as written, not derived from its reaction "
        "time and the baseline's largest power rise",
    )
    group.add_argument(
        "--no-guard", action="store_true", help="run polca-k8s without the local guard"
    )
    group.add_argument(
        "--guard-share",
        type=float,
        default=GuardSettings().budget_share,
        metavar="X",
        help="guard budget per node as a multiple of its share of the domain budget "
        "(default %(default)s)",
    )


def add_simulation_options(group: argparse._ArgumentGroup) -> None:
    """--engine, --dt, --meter-window, --brake-hold."""
    group.add_argument(
        "--engine",
        choices=ENGINES,
        default="request",
        help="request: follow every request; fluid: queues of work instead of requests, for "
        "hall-scale runs, validated at --dt 1 (docs/simulator.md section 6; default "
        "%(default)s)",
    )
    group.add_argument(
        "--dt", type=seconds, default=0.1, metavar="S", help="time step (default %(default)s s)"
    )
    group.add_argument(
        "--meter-window",
        type=seconds,
        default=1.0,
        metavar="S",
        help="averaging window of the metered power (default %(default)s s)",
    )
    group.add_argument(
        "--brake-hold",
        type=float,
        default=10.0,
        metavar="S",
        help="how long a brake holds every GPU near halt (default %(default)s s)",
    )


def run(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    try:
        return _run(args, err)
    except (TraceError, ValueError, OSError, yaml.YAMLError, ManifestError) as exc:
        # One line whatever the width, and the message verbatim (it may hold brackets).
        err.print(f"[red]polca simulate: {escape(str(exc))}[/red]", soft_wrap=True)
        return 2


def _load_trace(args: argparse.Namespace) -> tuple[Trace, float, str]:
    if args.trace is not None and args.eval_trace is not None:
        raise ValueError("give --trace or --eval-trace, not both")
    if args.trace is not None:
        trace = read_trace(args.trace)
        if len(trace) > 1 and trace.duration_s <= 0:
            raise TraceError(
                f"{args.trace}: all {len(trace)} requests share one timestamp; the simulator "
                "replays a trace's request rate, so it needs requests spread over time"
            )
        duration = args.duration if args.duration is not None else max(trace.duration_s, 1.0)
        check_steps(duration, args.dt)
        return trace, duration, str(args.trace)
    duration = args.duration if args.duration is not None else 3600.0
    check_steps(duration, args.dt)  # before generating requests for that long
    if args.eval_trace is not None:
        member = _eval_member(args.eval_trace)
        return load_eval_trace(member, duration, args.seed), duration, f"synthetic ({member.name})"
    return synthetic_trace(CONV_PARAMS, duration, args.seed), duration, "synthetic (conv fit)"


def domain_from_args(args: argparse.Namespace, *, oversubscription: float) -> DomainConfig:
    """The row from add_domain_options' and add_load_options' --mix."""
    return DomainConfig(
        profile=get_profile(args.profile),
        base_servers=args.servers,
        oversubscription=oversubscription,
        gpus_per_server=args.gpus_per_server,
        server_overhead_w=args.server_overhead_w,
        mix=parse_mix(args.mix),
    )


def _eval_member(name: str) -> EvalTrace:
    return next(m for m in synthetic_members() if m.name == name)


def parse_mix(text: str) -> Mix:
    shares: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in {"high", "low", "train"}:
            raise ValueError(f"--mix: expected high=X,low=Y,train=Z, got {text!r}")
        shares[key.strip()] = float(value)
    return Mix(
        high=shares.get("high", 0.0), low=shares.get("low", 0.0), train=shares.get("train", 0.0)
    )


def _read_plan(path: Path | None) -> ControlPlan | None:
    if path is None:
        return None
    if str(path) in NAMED_PLANS:
        return NAMED_PLANS[str(path)]
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if is_policy_manifest(data):  # a PowerPolicy manifest: the plan the operator would run
        return read_policy(str(path)).plan
    try:
        return plan_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def policies_from_args(args: argparse.Namespace) -> list[PolicyConfig]:
    plans = {"polca": _read_plan(args.polca_plan), "polca-k8s": _read_plan(args.plan)}
    names = args.policy or list(DEFAULT_POLICIES)
    return [
        make_policy(
            name,
            polca_delay_s=args.polca_delay,
            in_band=IN_BAND_TIMINGS[args.telemetry or "stream"],
            k8s_actuation_s=args.k8s_actuation,
            telemetry_period_s=args.telemetry_period,
            control_interval_s=args.control_interval,
            plan=plans.get(name),
            guard=GuardSettings(budget_share=args.guard_share),
            use_guard=not args.no_guard,
            derive_triggers=not args.no_derive_triggers,
        )
        for name in dict.fromkeys(names)
    ]


@contextmanager
def _progress(enabled: bool, console: Console) -> Iterator[ProgressFn]:
    if not enabled:
        yield lambda _label, _fraction: None
        return
    with Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=1.0)

        def update(label: str, fraction: float) -> None:
            bar.update(task, description=label, completed=fraction)

        yield update


def _run(args: argparse.Namespace, err: Console) -> int:
    manifest = apply_to_simulation(args)
    trace, duration, source = _load_trace(args)
    if args.fit_trace:
        print(json.dumps(fit(trace).as_dict(), indent=2))
        return 0
    domain = domain_from_args(args, oversubscription=args.oversubscription)
    if args.eval_trace is not None:  # the member's own mix, as polca sweep runs it
        domain = replace(domain, mix=_eval_member(args.eval_trace).mix)
    scenario = Scenario(
        trace=trace,
        domain=domain,
        duration_s=duration,
        dt_s=args.dt,
        seed=args.seed,
        load_scale=args.load_scale,
        target_peak_pct=args.target_peak_pct,
        meter_window_s=args.meter_window,
        brake_hold_s=args.brake_hold,
        criteria=Criteria(max_low_p50_impact=args.max_low_p50_impact),
        engine=args.engine,
    )
    policies = policies_from_args(args)
    if manifest is not None:
        policies = keep_manifest_timing(policies, manifest)
    # Piped output gets room for the wide tables instead of rich's 80-column default.
    out = Console() if sys.stdout.isatty() else Console(width=220)
    show_progress = not args.no_progress and err.is_terminal
    with _progress(show_progress, err) as progress:
        load_scale = calibrate_load(scenario, progress)
        scenario = replace(scenario, load_scale=load_scale)
        described = _describe(args, scenario, source)
        if args.search:
            from polca.sim.report import search_json, search_table
            from polca.sim.search import search

            result = search(
                scenario,
                policies,
                coarse_step=args.search_step,
                max_oversubscription=args.search_max,
                progress=progress,
            )
            if args.plot is not None:
                from polca.sim.plotting import plot_search

                plot_search(result, args.plot)
            if args.json:
                print(json.dumps(search_json(described, result), indent=2))
            else:
                out.print(search_table(result))
            return 0
        level = run_level(
            scenario, domain.oversubscription, policies, load_scale=load_scale, progress=progress
        )

    metrics = [r.metrics for r in level.runs.values()]
    if args.plot is not None:
        from polca.sim.plotting import plot_runs

        plot_runs([r.result for r in level.runs.values()], args.plot)
    if args.json:
        from polca.sim.report import simulate_json

        print(json.dumps(simulate_json(described, metrics), indent=2))
    else:
        from polca.sim.report import domain_table, latency_table

        out.print(
            f"[bold]{source}[/bold], {args.profile}, load scale {load_scale:.4g}, seed {args.seed}"
        )
        out.print(domain_table(metrics))
        out.print(latency_table(metrics))
    return 0


def _describe(args: argparse.Namespace, scenario: Scenario, source: str) -> dict[str, Any]:
    return {
        "trace": source,
        "profile": args.profile,
        "base_servers": args.servers,
        "gpus_per_server": args.gpus_per_server,
        "server_overhead_w": args.server_overhead_w,
        "oversubscription": args.oversubscription,
        "mix": args.mix,
        "engine": scenario.engine,
        "duration_s": scenario.duration_s,
        "dt_s": scenario.dt_s,
        "load_scale": scenario.load_scale,
        "target_peak_pct": scenario.target_peak_pct,
        "seed": scenario.seed,
        "budget_w": scenario.domain.budget_w,
    }
