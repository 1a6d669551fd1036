"""Request traces: ``TIMESTAMP, ContextTokens, GeneratedTokens`` CSV files (Azure LLM format).

CRLF or LF line endings, an optional UTF-8 BOM and blank lines are tolerated. Timestamps are
either ``YYYY-MM-DD HH:MM:SS[.fraction]`` (any number of fractional digits, as in the Azure
traces' 7) or plain seconds. A bad row raises :class:`TraceError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["Trace", "TraceError", "parse_trace", "read_trace"]

_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_MIN_FIELDS = len(_COLUMNS)
# Far above any model's context; keeps counts in int64 (a bigger one is a corrupt row).
_MAX_TOKENS = 2**31 - 1


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the line."""


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests sorted by arrival; ``arrival_s`` starts at 0."""

    arrival_s: npt.NDArray[np.float64]
    context_tokens: npt.NDArray[np.int64]
    generated_tokens: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        n = self.arrival_s.size
        if self.context_tokens.size != n or self.generated_tokens.size != n:
            raise ValueError("trace columns must have the same length")

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        """Span of the arrivals (0 for fewer than two requests)."""
        return float(self.arrival_s[-1]) if len(self) > 1 else 0.0


def read_trace(path: str | Path) -> Trace:
    """Read a trace file; see the module docstring for the accepted format.

    The file is read row by row into packed arrays (8 bytes a value), never whole into memory
    as text and Python objects: a 174 MB trace took 2.2 GB that way (issue 12).
    """
    path = Path(path)
    # utf-8-sig drops a BOM; newline="" lets csv handle \r\n, \n and \r alike.
    with path.open(encoding="utf-8-sig", newline="") as lines:
        try:
            return _parse_rows(lines, str(path))
        except UnicodeDecodeError as exc:
            raise TraceError(f"{path}: not UTF-8 text ({exc.reason})") from None


def parse_trace(text: str, *, source: str = "<trace>") -> Trace:
    """Parse trace text (the contents of a CSV file)."""
    return _parse_rows(io.StringIO(text.removeprefix("\ufeff"), newline=""), source)


def _parse_rows(lines: Iterable[str], source: str) -> Trace:
    rows = csv.reader(lines)
    header_seen = False
    times = array("d")
    contexts = array("q")
    generated = array("q")
    for row in rows:
        line_no = rows.line_num
        fields = [f.strip() for f in row]
        if not fields or all(not f for f in fields):
            continue
        if not header_seen:
            header_seen = True
            if fields[0].upper() == "TIMESTAMP":
                _check_header(fields, source, line_no)
                continue
        if len(fields) < _MIN_FIELDS:
            raise TraceError(
                f"{source}:{line_no}: expected {_MIN_FIELDS} fields "
                f"({', '.join(_COLUMNS)}), got {len(fields)}: {row!r}"
            )
        times.append(_parse_time(fields[0], source, line_no))
        contexts.append(_parse_count(fields[1], "ContextTokens", source, line_no, minimum=1))
        generated.append(_parse_count(fields[2], "GeneratedTokens", source, line_no, minimum=1))
    if not times:
        raise TraceError(f"{source}: no requests")

    arrival = np.frombuffer(times, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order] - arrival[order[0]]
    return Trace(
        arrival_s=arrival,
        context_tokens=np.frombuffer(contexts, dtype=np.int64)[order],
        generated_tokens=np.frombuffer(generated, dtype=np.int64)[order],
    )


def _check_header(fields: list[str], source: str, line_no: int) -> None:
    names = [f.lower() for f in fields[:_MIN_FIELDS]]
    if names != [c.lower() for c in _COLUMNS]:
        raise TraceError(
            f"{source}:{line_no}: header must start with {', '.join(_COLUMNS)}, got {fields!r}"
        )


def _parse_time(value: str, source: str, line_no: int) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    whole, _, fraction = value.partition(".")
    try:
        stamp = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")  # noqa: DTZ007 - naive on purpose
        frac_s = float(f"0.{fraction}") if fraction else 0.0
    except ValueError:
        raise TraceError(
            f"{source}:{line_no}: bad TIMESTAMP {value!r} "
            "(want 'YYYY-MM-DD HH:MM:SS[.fraction]' or seconds)"
        ) from None
    # Differences are all we use, so a naive timestamp on a fixed epoch is exact enough.
    return (stamp - datetime(1970, 1, 1)).total_seconds() + frac_s  # noqa: DTZ001


def _parse_count(value: str, column: str, source: str, line_no: int, *, minimum: int) -> int:
    try:
        count = int(value)
    except ValueError:
        raise TraceError(
            f"{source}:{line_no}: {column} must be an integer, got {value!r}"
        ) from None
    if not minimum <= count <= _MAX_TOKENS:
        raise TraceError(
            f"{source}:{line_no}: {column} must be within {minimum}-{_MAX_TOKENS}, got {count}"
        )
    return count
