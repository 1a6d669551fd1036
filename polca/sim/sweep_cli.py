"""``polca sweep``: run policies over every trace of the evaluation set, several seeds and
oversubscription levels, in parallel on every core, and report the worst case per policy."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from polca.options import count, seconds
from polca.sim.cli import (
    add_domain_options,
    add_load_options,
    add_policy_options,
    add_simulation_options,
    domain_from_args,
    parse_mix,
    policies_from_args,
)
from polca.sim.engine import check_steps
from polca.sim.evalset import CONV_TRACE_NAME, EvalTrace, evaluation_set
from polca.sim.metrics import Criteria
from polca.sim.sweep import SweepSpec, run_sweep
from polca.sim.sweep_backends import (
    BACKENDS,
    DASK_INSTALL,
    DEFAULT_BACKEND,
    BackendUnavailableError,
)
from polca.sim.trace import TraceError

__all__ = ["parse_levels", "parse_seeds", "register", "run"]

DEFAULT_CONV_TRACE = Path("..") / "shared" / "traces" / CONV_TRACE_NAME
DEFAULT_LEVELS = "0,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.5"  # from the row itself: 0 must pass too

_EPILOG = f"""\
The evaluation set (docs/simulator.md, "The evaluation set"): the conversation trace when
--conv-trace exists (default {DEFAULT_CONV_TRACE}), and synthetic members: conv-fit, code,
chat-long, bursty, long-prompt, diurnal, train-mix. A cell (trace, seed, row size) runs the
uncapped baseline and every policy exactly as `polca simulate --oversubscription` does; rerun
one with `polca simulate --eval-trace NAME` (or --trace FILE) --seed S --load-scale X.

The worst case of a policy is the largest level at which it, and every lower level of the grid,
meets all criteria for every trace and every seed: zero brakes, high-priority e2e P50 impact
<= 1%, low-priority throughput >= 98%, low-priority e2e P50 impact <= --max-low-p50-impact.

Examples:
  polca sweep                                         (everything: slow, see --duration)
  polca sweep --seeds 0-4 --duration 600 --json --plot worst.png > sweep.json
  polca sweep --duration 300 --save-json sweep.json     (tables on stdout, JSON in a file)
  polca sweep --members code,bursty --policy none --policy polca-k8s --seeds 0,1
  polca sweep --trace a.csv --trace b.csv --levels 0.25,0.5 --load-scale 14.45
  polca sweep --backend dask --scheduler-address tcp://10.0.0.5:8786   (a Dask cluster)
Progress goes to stderr, one line per finished cell. Exit status: 0 on success (whatever the
criteria say), 2 on bad input.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="policies x traces x seeds x oversubscription levels in parallel; worst case",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    work = p.add_argument_group("traces and workload")
    work.add_argument(
        "--trace",
        type=Path,
        action="append",
        metavar="FILE",
        help="run on this trace file instead of the evaluation set; repeat for several (each "
        "named by its file name, with --mix)",
    )
    work.add_argument(
        "--members",
        metavar="NAMES",
        help="only these members of the evaluation set, comma-separated (default: all)",
    )
    work.add_argument(
        "--conv-trace",
        type=Path,
        default=DEFAULT_CONV_TRACE,
        metavar="FILE",
        help="the conversation trace; the set runs without it when the file is absent "
        "(default %(default)s)",
    )
    work.add_argument(
        "--duration",
        type=seconds,
        default=3600.0,
        metavar="S",
        help="simulated seconds per run (default %(default)s)",
    )
    add_load_options(work)
    work.add_argument(
        "--calibrate-once",
        action="store_true",
        help="calibrate each trace's load on the first seed only and replay the other seeds "
        "at it (default: every trace and seed is calibrated, as polca simulate does)",
    )

    grid = p.add_argument_group("grid")
    grid.add_argument(
        "--seeds", default="0-4", metavar="LIST", help="seeds: 0-4 or 0,2,7 (default %(default)s)"
    )
    grid.add_argument(
        "--levels",
        default=DEFAULT_LEVELS,
        metavar="FRACS",
        help="oversubscription levels, fractions of --servers, rounded to whole servers "
        "(default %(default)s)",
    )
    add_domain_options(p.add_argument_group("power domain"))
    add_policy_options(p.add_argument_group("policies"))
    add_simulation_options(p.add_argument_group("simulation"))

    out = p.add_argument_group("criteria and output")
    out.add_argument(
        "--max-low-p50-impact",
        type=float,
        default=0.25,
        metavar="FRAC",
        help="bound on the low-priority e2e P50 impact (default %(default)s: this project's "
        "bound; POLCA sets none)",
    )
    out.add_argument(
        "--workers",
        type=count,
        default=None,
        metavar="N",
        help="worker processes (default: every core); with --backend dask, of its local cluster",
    )
    out.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help="where cells run: local worker processes (default), or a Dask cluster (the "
        f"distributed extra: {DASK_INSTALL}), local unless --scheduler-address",
    )
    out.add_argument(
        "--scheduler-address",
        metavar="ADDR",
        help="with --backend dask: a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (its "
        "workers need polca installed)",
    )
    out.add_argument("--json", action="store_true", help="print JSON instead of tables")
    out.add_argument(
        "--save-json",
        type=Path,
        metavar="FILE",
        help="also write the JSON to FILE (tables still printed: one run, both outputs)",
    )
    out.add_argument("--plot", type=Path, metavar="PNG", help="plot the worst case per policy")
    out.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    try:
        return _run(args, err)
    except (TraceError, ValueError, OSError, yaml.YAMLError, BackendUnavailableError) as exc:
        err.print(f"[red]polca sweep: {escape(str(exc))}[/red]", soft_wrap=True)
        return 2


def parse_seeds(text: str) -> tuple[int, ...]:
    """``0-4`` or ``0,2,7`` (or a mix: ``0-2,9``); order kept, duplicates dropped."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            low = int(first)
            seeds.extend(range(low, int(last) + 1) if dash else [low])
    except ValueError:
        raise ValueError(f"--seeds: expected e.g. 0-4 or 0,2,7, got {text!r}") from None
    if not seeds:
        raise ValueError(f"--seeds: no seed in {text!r}")
    return tuple(dict.fromkeys(seeds))


def parse_levels(text: str, base_servers: int) -> tuple[int, ...]:
    """Fractions of the base row → sorted distinct numbers of extra servers."""
    try:
        fractions = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--levels: expected fractions like 0.2,0.3, got {text!r}") from None
    if any(not 0 <= f <= 10 for f in fractions):  # also refuses nan and inf
        raise ValueError(f"--levels: each level must be within 0-10, got {text!r}")
    return tuple(sorted({round(f * base_servers) for f in fractions}))


def _members(args: argparse.Namespace, err: Console) -> tuple[EvalTrace, ...]:
    if args.trace:
        if args.members:
            raise ValueError("give --trace or --members, not both")
        mix = parse_mix(args.mix)
        missing = [str(path) for path in args.trace if not path.is_file()]
        if missing:  # here, not in a worker minutes later
            raise ValueError(f"--trace: no such file: {', '.join(missing)}")
        return tuple(EvalTrace(path.name, str(path), path=path, mix=mix) for path in args.trace)
    conv: Path | None = args.conv_trace
    if conv is not None and not conv.is_file():
        if not args.no_progress:
            err.print(f"{conv} not found: the evaluation set runs without the conv trace")
        conv = None
    members = evaluation_set(conv)
    if not args.members:
        return members
    wanted = [name.strip() for name in args.members.split(",") if name.strip()]
    known = {m.name: m for m in members}
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        raise ValueError(
            f"--members: unknown {', '.join(unknown) or 'nothing'}; the set has " + ", ".join(known)
        )
    return tuple(known[name] for name in dict.fromkeys(wanted))


def _run(args: argparse.Namespace, err: Console) -> int:
    check_steps(args.duration, args.dt)
    domain = domain_from_args(args, oversubscription=0.0)
    spec = SweepSpec(
        members=_members(args, err),
        seeds=parse_seeds(args.seeds),
        extra_servers=parse_levels(args.levels, args.servers),
        policies=tuple(policies_from_args(args)),
        domain=domain,
        duration_s=args.duration,
        dt_s=args.dt,
        load_scale=args.load_scale,
        calibrate_once=args.calibrate_once,
        target_peak_pct=args.target_peak_pct,
        meter_window_s=args.meter_window,
        brake_hold_s=args.brake_hold,
        criteria=Criteria(max_low_p50_impact=args.max_low_p50_impact),
        engine=args.engine,
    )
    started = time.monotonic()

    def progress(done: int, total: int, label: str) -> None:
        if args.no_progress:
            return
        elapsed = time.monotonic() - started
        print(f"[{done:>4}/{total}] {label} ({elapsed:.0f} s)", file=sys.stderr, flush=True)

    if not args.no_progress:
        print(
            f"polca sweep: {len(spec.members)} traces x {len(spec.seeds)} seeds x "
            f"{len(spec.extra_servers)} levels = {spec.cells} cells, "
            f"{len(spec.policies)} policies each",
            file=sys.stderr,
            flush=True,
        )
    result = run_sweep(
        spec,
        workers=args.workers,
        progress=progress,
        backend=args.backend,
        scheduler_address=args.scheduler_address,
    )

    from polca.sim.report import sweep_json, sweep_table, sweep_trace_table

    if args.plot is not None:
        from polca.sim.plotting import plot_sweep

        plot_sweep(result, args.plot)
    document = json.dumps(sweep_json(_describe(args, spec), result), indent=2)
    if args.save_json is not None:
        args.save_json.write_text(document + "\n", encoding="utf-8")
    if args.json:
        print(document)
    else:
        out = Console() if sys.stdout.isatty() else Console(width=220)
        out.print(sweep_table(result))
        out.print(sweep_trace_table(result))
    return 0


def _describe(args: argparse.Namespace, spec: SweepSpec) -> dict[str, Any]:
    return {
        "traces": [
            {
                "name": m.name,
                "why": m.why,
                "path": None if m.path is None else str(m.path),
                "params": None if m.params is None else m.params.as_dict(),
                "diurnal_over_run": m.diurnal_over_run,
                "mix": {"high": m.mix.high, "low": m.mix.low, "train": m.mix.train},
            }
            for m in spec.members
        ],
        "seeds": list(spec.seeds),
        "extra_servers": list(spec.extra_servers),
        "policies": [p.name for p in spec.policies],
        "profile": args.profile,
        "base_servers": args.servers,
        "gpus_per_server": args.gpus_per_server,
        "server_overhead_w": args.server_overhead_w,
        "engine": spec.engine,
        "duration_s": spec.duration_s,
        "dt_s": spec.dt_s,
        "load_scale": spec.load_scale,
        "calibrate_once": spec.calibrate_once,
        "target_peak_pct": spec.target_peak_pct,
        "criteria": {
            "max_brake_events": spec.criteria.max_brake_events,
            "max_high_p50_impact": spec.criteria.max_high_p50_impact,
            "min_low_throughput": spec.criteria.min_low_throughput,
            "max_low_p50_impact": spec.criteria.max_low_p50_impact,
        },
        "budget_w": spec.domain.budget_w,
    }
