"""Start the real operator (`python -m polca_operator.main`) as a local process.

Shared by the integration tests, the benchmarks and the demo so they all run the operator the
same way: on loopback metrics, against the testbed's kubeconfig, in its own process group.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from polca_testbed.processes import free_port, group_alive, http_ok, start_process, stop_group

__all__ = ["OperatorHandle", "operator_healthy", "start_operator"]


@dataclass(frozen=True)
class OperatorHandle:
    pid: int
    metrics_port: int
    log_path: Path

    def stop(self) -> None:
        stop_group(self.pid)

    def alive(self) -> bool:
        return group_alive(self.pid)


def start_operator(
    kubeconfig: Path,
    log_path: Path,
    *,
    prometheus_url: str | None = None,
    extra: Sequence[str] = (),
) -> OperatorHandle:
    """Start the operator; `--standalone` unless `extra` asks for `--peering`."""
    port = free_port()
    # Simulated daemons each serve their own loopback port: the operator must accept any.
    argv = [sys.executable, "-m", "polca_operator.main",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
            "--daemon-metrics-port", "any"]  # fmt: skip
    if prometheus_url:
        argv += ["--prometheus-url", prometheus_url]
    argv += list(extra)
    if "--peering" not in extra:
        argv.append("--standalone")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    process = start_process(argv, log_path=log_path, env=env)
    return OperatorHandle(process.pid, port, log_path)


def operator_healthy(port: int) -> bool:
    """True when the operator on `port` answers /healthz."""
    return http_ok(f"http://127.0.0.1:{port}/healthz")
