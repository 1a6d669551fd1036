"""`python -m polca_testbed.demo`: POLCA at work on an embedded cluster (`make demo`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from polca.power.profiles import PROFILES
from polca_testbed.demo.run import DEFAULT_POLICY, DemoSettings, run_demo

DESCRIPTION = """\
Starts a local kube-apiserver + etcd, the POLCA operator and NODES simulated GPU nodes (a
polca-node daemon per node over the fake NVML, a fake kubelet), one pod per node (high- or
low-priority inference, or training), and applies a PowerPolicy whose budget provisions
only NODES / (1 + OVERSUB) servers. A request trace drives the fake GPUs' load at SPEEDUP
times real time. Shows the domain held under its budget live, then a summary and a plot."""


def parse_args(argv: Sequence[str] | None) -> DemoSettings:
    defaults = DemoSettings()
    parser = argparse.ArgumentParser(prog="python -m polca_testbed.demo", description=DESCRIPTION)
    parser.add_argument(
        "--nodes",
        type=int,
        default=defaults.nodes,
        help="simulated GPU nodes (default %(default)s)",
    )
    parser.add_argument(
        "--gpus", type=int, default=defaults.gpus, help="GPUs per node (default %(default)s)"
    )
    parser.add_argument(
        "--profile",
        default=defaults.profile,
        choices=sorted(PROFILES),
        help="GPU model of the fake NVML (default %(default)s)",
    )
    parser.add_argument(
        "--speedup",
        type=float,
        default=defaults.speedup,
        help="trace seconds per wall-clock second (default %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=defaults.duration_s,
        metavar="SECONDS",
        help="length of the replay in wall-clock seconds (default %(default)s)",
    )
    parser.add_argument(
        "--oversub",
        type=float,
        default=defaults.oversubscription,
        help="servers beyond what the budget provisions, 0.3 = +30%% (default %(default)s)",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        default=DEFAULT_POLICY,
        metavar="FILE",
        help="PowerPolicy YAML; its nodeSelector, budget and telemetry are set "
        "for the demo (default: examples/polca-default.yaml)",
    )
    parser.add_argument(
        "--trace",
        default="",
        metavar="CSV",
        help="request trace (Azure LLM format); empty: the synthetic generator",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=defaults.out_dir,
        metavar="DIR",
        help="where the summary, the plot, the logs and the kubeconfig go (default %(default)s)",
    )
    parser.add_argument(
        "--telemetry",
        choices=["auto", "prometheus", "direct"],
        default=defaults.telemetry,
        help="auto (default): the daemons' power streams, with Prometheus as the fallback when "
        "installed; direct: streams only; prometheus: Prometheus only",
    )
    parser.add_argument("--no-live", action="store_true", help="log lines instead of the live view")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    try:
        return DemoSettings(
            nodes=args.nodes,
            gpus=args.gpus,
            profile=args.profile,
            speedup=args.speedup,
            duration_s=args.duration,
            oversubscription=args.oversub,
            policy_file=args.policy,
            trace=Path(args.trace) if args.trace else None,
            out_dir=args.out,
            telemetry=args.telemetry,
            live=not args.no_live,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        result = run_demo(settings, Console())
    except KeyboardInterrupt:
        return 130
    if not result.leftovers.clean:
        return 1
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
