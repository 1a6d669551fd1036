"""The optional `sim` extra: what is in it, and the one message when it is missing.

The operator and the node daemon on real GPUs need none of numpy, rich or matplotlib; the
simulator, `polca replay`/`capacity`, their plots and the fake GPUs' load models do. Those
import the extra at module level, so an entry point that offers them catches the
ModuleNotFoundError at its import and says what to install instead of a traceback. Pure.
"""

from __future__ import annotations

__all__ = ["SIM_INSTALL", "SIM_MODULES", "is_missing_sim", "sim_missing_message"]

SIM_MODULES = frozenset({"numpy", "rich", "matplotlib"})  # pyproject.toml's `sim` extra
SIM_INSTALL = "pip install 'polca[sim]'"


def is_missing_sim(exc: ModuleNotFoundError) -> bool:
    """True when `exc` is one of the `sim` extra's modules not being installed."""
    return (exc.name or "").partition(".")[0] in SIM_MODULES


def sim_missing_message(what: str, exc: ModuleNotFoundError) -> str:
    """One line: what needs the extra, which module is missing, and the command to fix it."""
    return (
        f"{what} needs the simulator's dependencies, installed with the `sim` extra "
        f"({exc.name} is not installed): {SIM_INSTALL}"
    )
