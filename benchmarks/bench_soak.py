"""Soak: the demo load for a long time with random restarts; RSS, threads and fds stay bounded.

Runs the demo (`polca_testbed.demo`: embedded control plane, simulated nodes each with a fake
kubelet and a real polca-node, the real operator, Prometheus when installed) for SOAK_MINUTES
(default 30). On a seeded plan (`polca_testbed.soak.restart_plan`) it restarts the operator
(first half of the run) and the daemons of half the nodes (throughout), each by SIGTERM or
SIGKILL at random; the other daemons run the whole soak. Every few seconds it samples every
process's RSS, thread count and open file descriptors from /proc. At the end it prints a row
per process (start, end and maximum of each figure) and exits 1 when a judged process grows
without bound: the maximum in the last third of its life exceeds the first third's by more
than 20% and by more than 10 (MB, fds or threads); see `polca_testbed.soak` for what is
judged. It also exits 1 when a restart fails or the demo leaves a process running.

    SOAK_MINUTES=3 make bench-soak
    .venv/bin/python benchmarks/bench_soak.py --minutes 20 --nodes 4 --seed 1

Not in CI: it runs for as long as it is told.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from polca_testbed.demo.run import DemoSettings, RunningDemo, run_demo
from polca_testbed.soak import OPERATOR, Incarnation, Restart, record, restart_plan, soak_table


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30")))
    p.add_argument("--nodes", type=int, default=4, help="simulated nodes (8 GPUs each)")
    p.add_argument("--seed", type=int, default=0, help="the restart plan's and the load's seed")
    p.add_argument("--restart-every-s", type=float, default=60.0, help="mean gap between restarts")
    p.add_argument("--sample-s", type=float, default=5.0, help="how often to sample /proc")
    p.add_argument("--out", type=Path, default=Path("soak-out"))
    args = p.parse_args()
    if not args.minutes > 0 or args.nodes < 2 or args.sample_s <= 0 or args.restart_every_s <= 0:
        p.error("--minutes, --sample-s and --restart-every-s must be positive, --nodes at least 2")
    return args


class Soak:
    """The `during` callback of the demo: samples on time, restarts on plan."""

    def __init__(self, plan: list[Restart], sample_s: float, console: Console) -> None:
        self.plan = list(plan)
        self.sample_s = sample_s
        self.console = console
        self.lives: dict[tuple[str, int], Incarnation] = {}
        self.next_sample_s = 0.0
        self.done: list[tuple[Restart, float]] = []  # each restart and how long it took

    def __call__(self, demo: RunningDemo, t_s: float) -> None:
        if t_s >= self.next_sample_s:
            record(self.lives, demo.processes(), t_s)
            self.next_sample_s = t_s + self.sample_s
        while self.plan and self.plan[0].at_s <= t_s:
            self.restart(demo, self.plan.pop(0))

    def restart(self, demo: RunningDemo, restart: Restart) -> None:
        how = "SIGKILL" if restart.kill else "SIGTERM"
        began = time.monotonic()
        if restart.target == OPERATOR:
            demo.restart_operator(kill=restart.kill)
        else:
            node = next(n for n in demo.nodes if n.name == restart.target)
            demo.restart_daemon(node, kill=restart.kill)
        took_s = time.monotonic() - began
        self.done.append((restart, took_s))
        self.console.print(
            f"[dim]{time.strftime('%H:%M:%S')}[/dim] restart at {restart.at_s:.0f} s: "
            f"{restart.target} ({how}), healthy again after {took_s:.1f} s"
        )


def main() -> int:
    args = parse_args()
    console = Console()
    duration_s = args.minutes * 60.0
    settings = DemoSettings(
        nodes=args.nodes, duration_s=duration_s, out_dir=args.out, live=False, seed=args.seed
    )
    names = [f"demo-{i:02d}" for i in range(1, args.nodes + 1)]
    plan = restart_plan(args.seed, duration_s, names[::2], args.restart_every_s)
    soak = Soak(plan, args.sample_s, console)
    console.print(
        f"soak: {args.minutes:g} min of the demo load, {args.nodes} nodes, "
        f"{len(plan)} restarts planned (seed {args.seed}): "
        + ", ".join(f"{r.at_s:.0f} s {r.target}" for r in plan)
    )
    result = run_demo(settings, console, during=soak)
    min_life_s = max(60.0, duration_s / 3)
    table, grows = soak_table(soak.lives.values(), min_life_s)
    console.print(table, highlight=False, soft_wrap=True)
    (args.out / "soak.json").write_text(
        json.dumps(
            {
                "minutes": args.minutes,
                "seed": args.seed,
                "restarts": [{**asdict(r), "took_s": took} for r, took in soak.done],
                "processes": [
                    {
                        "role": life.role,
                        "pid": life.pid,
                        "samples": [asdict(s) for s in life.samples],
                    }
                    for life in soak.lives.values()
                ],
            }
        )
    )
    missed = len(soak.plan)
    problems = [
        *(["a judged process grows without bound"] if grows else []),
        *([f"{missed} planned restarts never ran (the replay ended early)"] if missed else []),
        *(["the demo left processes running"] if not result.leftovers.clean else []),
        *(["the demo was interrupted"] if result.interrupted else []),
    ]
    console.print(
        f"{len(soak.done)} restarts; samples every {args.sample_s:g} s; processes judged when "
        f"they lived at least {min_life_s:.0f} s; figures in {args.out / 'soak.json'}"
    )
    for problem in problems:
        console.print(f"[red]FAIL: {problem}[/red]")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
