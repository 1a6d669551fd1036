"""What the demo started, and what of it is left: processes, ports, and the CPU they used.

A pid alone may name a new process soon after the old one exits (pid_max can be as low as
32768 on a busy machine), so a process is recorded as its pid with its start time.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field

from polca_testbed.processes import group_alive, port_open
from polca_testbed.procstat import cpu_seconds as process_cpu_seconds
from polca_testbed.procstat import stat_fields

__all__ = ["Leftovers", "Started", "cpu_seconds", "process_start_ticks", "terminate_groups"]


@dataclass(frozen=True)
class Leftovers:
    """What was still running after the shutdown (both empty after a clean one), and what the
    demo had started: processes as (pid, start time in clock ticks since boot)."""

    pids: tuple[int, ...]
    ports: tuple[int, ...]
    started_processes: tuple[tuple[int, int | None], ...]
    started_ports: tuple[int, ...]

    @property
    def clean(self) -> bool:
        return not self.pids and not self.ports


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot); None when it is gone or a zombie."""
    fields = stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system, all threads) the live processes among `pids` have used."""
    return sum(cpu for cpu in map(process_cpu_seconds, pids) if cpu is not None)


@dataclass
class Started:
    """Processes and ports of everything the demo started, for the leftover check."""

    pids: list[int] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    start_ticks: dict[int, int | None] = field(default_factory=dict)

    def add(self, *pids: int | None) -> None:
        for pid in pids:
            if pid is not None:
                self.pids.append(pid)
                self.start_ticks[pid] = process_start_ticks(pid)

    def _ours(self, pid: int) -> bool:
        return process_start_ticks(pid) == self.start_ticks[pid]

    def leftovers(self) -> Leftovers:
        # A group leader that died after its last liveness check is a zombie until reaped.
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        return Leftovers(
            pids=tuple(p for p in self.pids if group_alive(p) and self._ours(p)),
            ports=tuple(p for p in self.ports if port_open(p)),
            started_processes=tuple((p, self.start_ticks[p]) for p in self.pids),
            started_ports=tuple(self.ports),
        )


def terminate_groups(pids: list[int]) -> None:
    """SIGTERM every group at once, so they shut down in parallel before each is waited for."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
