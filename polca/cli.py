"""``polca``: the command-line entry point. Each subcommand lives in its own module and
registers itself in :data:`SUBCOMMANDS`; add one by appending a ``(name, module, register)``
triple. Modules are imported when the parser is built; one that needs the `sim` extra and
finds it missing leaves a stand-in that says what to install (`polca validate` needs none)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from polca.extras import SIM_INSTALL, is_missing_sim, sim_missing_message
from polca.options import OptionParser

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

Subparsers = argparse._SubParsersAction  # argparse has no public name for it
# A register function adds its parser to the subparsers and sets ``func`` (args → exit code).
Register = Callable[["Subparsers[argparse.ArgumentParser]"], None]
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("simulate", "polca.sim.cli", "register"),
    ("sweep", "polca.sim.sweep_cli", "register"),
    ("validate", "polca.tooling.validate", "register"),
    ("replay", "polca.tooling.replay_cli", "register_replay"),
    ("capacity", "polca.tooling.replay_cli", "register_capacity"),
]


def _register_missing(
    subparsers: Subparsers[argparse.ArgumentParser],
    name: str,
    exc: ModuleNotFoundError,
) -> None:
    """A stand-in for `name` that takes any arguments and explains what to install."""
    message = sim_missing_message(f"polca {name}", exc)
    stand_in = subparsers.add_parser(
        name, help=f"needs the sim extra: {SIM_INSTALL}", add_help=False
    )

    def explain(_args: argparse.Namespace) -> int:
        print(f"polca: error: {message}", file=sys.stderr)
        return 2

    stand_in.set_defaults(func=explain, any_arguments=True)


def build_parser() -> argparse.ArgumentParser:
    # Subcommand parsers inherit the class: one-line errors, exit status 2, everywhere.
    parser: argparse.ArgumentParser = OptionParser(
        prog="polca",
        description="POLCA for Kubernetes: power oversubscription tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, register in SUBCOMMANDS:
        try:
            registered: Register = getattr(importlib.import_module(module), register)
        except ModuleNotFoundError as exc:
            if not is_missing_sim(exc):
                raise
            _register_missing(subparsers, name, exc)
            continue
        registered(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # parse_args() less its check for unknown arguments, which a stand-in must accept (its
    # real subcommand's options, --help) to answer with what to install.
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
