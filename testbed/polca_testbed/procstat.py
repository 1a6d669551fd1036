"""What /proc says about a process: state, start time, CPU time, memory, threads and open file
descriptors (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_seconds", "open_fds", "rss_mb", "stat_fields", "threads"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None when there is no such process.

    Split after the last ')' because the command name in field 2 may hold spaces.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, all threads; None when it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM): resident memory now and at its peak, in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def threads(pid: int) -> int | None:
    """How many threads the process has; None when it is gone."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[17])  # num_threads


def open_fds(pid: int) -> int | None:
    """How many file descriptors the process has open; None when it is gone (or not ours)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
