"""Command-line options that may also come from the environment, with one set of rules.

Every entry point (`polca-node`, `polca-operator`, `polca simulate`) parses its numbers, ports,
intervals and log levels with these types, so the same value means the same thing everywhere:

- an interval or duration (`seconds`) is a finite number > 0: 0 or a negative interval would make
  a loop spin (issue 12: `--podresources-interval-s 0` wrote ≈140 statuses a second); `inf` only
  where an option says "wait forever" (`seconds_or_inf`);
- a port is 1-65535, or 0 where the option documents "0 picks a free one" (`port`);
- a log level is DEBUG, INFO, WARNING or ERROR in any letter case (`log_level`, upper-case out);
- a switch is true/false, yes/no, on/off or 1/0 in any letter case (`boolean`), so a chart can
  render it from a YAML boolean;
- an environment variable is a default, applied only when the flag is absent, and a bad value
  names the variable, not just the flag (`env_default`);
- a bad value ends the program with one line, `PROG: error: …`, and exit status 2
  (`OptionParser`), never a traceback;
- every command and subcommand answers `--version` with the installed package's version
  (`OptionParser`, `package_version`).

Pure: no Kubernetes or network code (the `polca` package's layer rule).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from importlib import metadata
from typing import Any, NoReturn

__all__ = [
    "DEFAULT_DAEMON_METRICS_PORT",
    "LOG_LEVELS",
    "EnvValue",
    "OptionParser",
    "boolean",
    "count",
    "env_default",
    "log_level",
    "package_version",
    "port",
    "positive_number",
    "seconds",
    "seconds_or_inf",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The node daemon's metrics port, which the operator also expects (--daemon-metrics-port).
# Not 9400: NVIDIA's dcgm-exporter, on every node of a GPU Operator cluster, listens there.
DEFAULT_DAEMON_METRICS_PORT = 9402
MAX_PORT = 65535


class EnvValue(str):
    """A default taken from an environment variable: argparse hands it to the option's type
    like a command-line value, and the type names the variable when it refuses it."""

    __slots__ = ("variable",)

    variable: str

    def __new__(cls, value: str, variable: str) -> EnvValue:
        made = super().__new__(cls, value)
        made.variable = variable
        return made


def _refuse(text: str, why: str) -> NoReturn:
    where = f"{text.variable}={str(text)!r}" if isinstance(text, EnvValue) else repr(text)
    raise argparse.ArgumentTypeError(f"{where}: {why}")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        _refuse(text, "not a number")


def positive_number(text: str) -> float:
    """A finite number > 0 (a scale, a share)."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        _refuse(text, "must be a finite number > 0")
    return value


def seconds(text: str) -> float:
    """An interval or duration in seconds: finite and > 0."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        _refuse(text, "must be a finite number of seconds > 0")
    return value


def seconds_or_inf(text: str) -> float:
    """Seconds > 0, or `inf` for "no limit"."""
    value = _number(text)
    if math.isnan(value) or value <= 0:
        _refuse(text, "must be a number of seconds > 0 (or inf)")
    return value


def count(text: str) -> int:
    """A whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        _refuse(text, "not a whole number")
    if value < 1:
        _refuse(text, "must be ≥ 1")
    return value


def port(text: str) -> int:
    """A TCP port, 1-65535; 0 asks the system for a free one (tests)."""
    try:
        value = int(text)
    except ValueError:
        _refuse(text, "not a port number")
    if not 0 <= value <= MAX_PORT:
        _refuse(text, f"must be a port number, 1-{MAX_PORT} (0: any free port)")
    return value


def log_level(text: str) -> str:
    """A log level in any letter case, returned upper-case (logging's spelling)."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        _refuse(text, f"must be one of {', '.join(LOG_LEVELS)} (any case)")
    return level


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def boolean(text: str) -> bool:
    """A switch: true/false, yes/no, on/off, 1/0, any case."""
    word = text.strip().lower()
    if word not in _TRUE | _FALSE:
        _refuse(text, "must be true or false")
    return word in _TRUE


def env_default(environ: Mapping[str, str], variable: str, default: object = None) -> object:
    """The default of an option backed by `variable`: its value when set and not blank (checked
    by the option's type at parse time, only if the flag is absent), else `default`."""
    value = environ.get(variable, "").strip()
    return EnvValue(value, variable) if value else default


DISTRIBUTION = "polca"  # pyproject.toml's project name: the three commands ship together


def package_version() -> str:
    """The installed distribution's version; "unknown" when run from a tree never installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2, without the usage block
    (which for our daemons is a screenful that hides the one line that matters), and with
    `--version` (subcommand parsers inherit the class, so they answer it too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--version",
            action="version",
            version=f"%(prog)s {package_version()}",
            help="print the version and exit",
        )

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")
