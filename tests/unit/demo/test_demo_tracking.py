"""How the demo tells its processes apart from later ones that reuse their pids."""

from __future__ import annotations

import os
import subprocess

from polca_testbed.demo.run import node_names
from polca_testbed.demo.tracking import cpu_seconds, process_start_ticks


def test_a_running_process_has_a_start_time_and_a_finished_one_none() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        ticks = process_start_ticks(child.pid)
        assert ticks is not None
        assert ticks >= (process_start_ticks(os.getpid()) or 0)
    finally:
        child.kill()
    child.wait()
    assert process_start_ticks(child.pid) is None


def test_cpu_seconds_counts_live_processes_only() -> None:
    sum(i * i for i in range(200_000))  # burn a little CPU in this process
    assert cpu_seconds([os.getpid()]) > 0.0
    assert cpu_seconds([2**22 + 7]) == 0.0  # above any pid_max: no such process


def test_node_names_sort_in_creation_order() -> None:
    names = node_names(12)
    assert names[0] == "demo-01"
    assert names == sorted(names)
    assert len(set(names)) == 12
