"""Start the real operator (`python -m polca_operator.main`) as a local process.

Shared by the integration tests, the benchmarks and the demo so they all run the operator the
same way: on loopback metrics, against the testbed's kubeconfig, in its own process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from polca_testbed.cluster import Cluster
from polca_testbed.polling import eventually
from polca_testbed.processes import free_port, group_alive, http_ok, start_process, stop_group
from polca_testbed.sampling import metric_value

__all__ = [
    "RESTORE_FINALIZER",
    "OperatorHandle",
    "operator_healthy",
    "release_finalizers",
    "start_operator",
]

RESTORE_FINALIZER = "polca.dev/restore-defaults"


@dataclass(frozen=True)
class OperatorHandle:
    pid: int
    metrics_port: int
    log_path: Path

    def stop(self) -> None:
        stop_group(self.pid)

    def alive(self) -> bool:
        return group_alive(self.pid)

    def kill(self) -> None:
        """A crash: SIGKILL, no chance to leave the peering or finish anything."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        eventually("the killed operator is gone", lambda: not group_alive(self.pid), 10)

    def metric(self, name: str, **labels: str) -> float | None:
        return metric_value(f"http://127.0.0.1:{self.metrics_port}/metrics", name, **labels)

    def decisions(self, policy: str) -> float:
        """Control cycles run for `policy`, whatever they changed (0 before the first)."""
        return sum(
            self.metric("polca_decisions_total", policy=policy, change=change) or 0.0
            for change in ("none", "up", "down")
        )

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


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


def release_finalizers(cluster: Cluster) -> None:
    """No operator runs any more: drop its finalizer from every PowerPolicy, so deleting one
    does not wait for a restore nobody will confirm."""
    listed = json.loads(cluster.kubectl("get", "powerpolicies", "-o", "json").stdout)
    for item in listed["items"]:
        finalizers = item["metadata"].get("finalizers") or []
        if RESTORE_FINALIZER in finalizers:
            kept = [f for f in finalizers if f != RESTORE_FINALIZER]
            patch = json.dumps({"metadata": {"finalizers": kept or None}})
            cluster.kubectl("patch", "powerpolicy", item["metadata"]["name"], "--type=merge",
                            "-p", patch, check=False)  # fmt: skip
