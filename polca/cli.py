"""``polca``: the command-line entry point. Each subcommand lives in its own module and
registers itself in :data:`SUBCOMMANDS`; add one by appending a ``(name, register)`` pair."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from polca.options import OptionParser
from polca.sim import cli as sim_cli
from polca.sim import sweep_cli
from polca.tooling import replay_cli, validate

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# A register function adds its parser to the subparsers and sets ``func`` (args → exit code).
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
SUBCOMMANDS: list[tuple[str, Register]] = [
    ("simulate", sim_cli.register),
    ("sweep", sweep_cli.register),
    ("validate", validate.register),
    ("replay", replay_cli.register_replay),
    ("capacity", replay_cli.register_capacity),
]


def build_parser() -> argparse.ArgumentParser:
    # Subcommand parsers inherit the class: one-line errors, exit status 2, everywhere.
    parser: argparse.ArgumentParser = OptionParser(
        prog="polca",
        description="POLCA for Kubernetes: power oversubscription tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _name, register in SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
