"""Simulated GPU nodes: a Node object, a fake kubelet and a `polca-node` process per node.

Used by the integration tests and the demo. Each node gets a short private directory under
/tmp (unix socket paths must stay under 108 bytes) holding:
  kubelet.sock, kubelet.json   the fake kubelet (PodResources API) and the GPU→pod state it serves
  load.json                    the fake GPUs' load (re-read by the daemon when it changes)
  gpus.json                    the fake GPUs' knobs, kept across daemon restarts (and readable
                               from here: what the "hardware" has)
  state/checkpoint.json        the daemon's node-local checkpoint (--state-dir)
  kubelet.log, daemon.log

    with SimNodes(cluster.kubeconfig) as nodes:
        node = nodes.add("sim-1", labels={"polca.dev/row": "a"})
        node.assign_pod("default", "llm-0", [0, 1])     # the kubelet gives GPUs 0-1 to llm-0
        node.set_load({"decode": 0.8})
        node.fake_state()["gpus"][0]["clock_ceiling_mhz"]

Every process runs in its own process group, dies with the test process, and `stop_all()`
(or leaving the `with`) stops them all and deletes the Node objects it created.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polca_node.fake_gpus import fake_gpu_uuids, read_fake_state
from polca_node.kube_client import ApiError, KubeClient, kubeconfig_credentials
from polca_node.status_writer import NODE_POWER_STATES
from polca_testbed.limits_invariant import GpuKnobs
from polca_testbed.polling import eventually
from polca_testbed.processes import (
    free_port,
    group_alive,
    http_ok,
    start_process,
    stop_group,
    wait_until,
)
from polca_testbed.sampling import metric_value

__all__ = ["SimNode", "SimNodes"]

GPU_RESOURCE = "nvidia.com/gpu"
START_TIMEOUT_S = 60.0


def _write_atomically(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
    temporary.replace(path)


@dataclass
class SimNode:
    """One simulated node and its processes."""

    name: str
    directory: Path
    profile: str
    kubeconfig: Path
    gpu_uuids: list[str]
    metrics_port: int
    guard_period_s: float = 0.5
    extra_env: Mapping[str, str] = field(default_factory=dict)
    pods: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    kubelet_forgets_pods: bool = False  # the fake kubelet answers as if no pod held a GPU
    kubelet_fails_with: str | None = None  # a gRPC status code name every call answers with
    kubelet_delay_s: float = 0.0  # every kubelet call waits this long first
    kubelet_pid: int | None = None
    daemon_pid: int | None = None

    @property
    def kubelet_socket(self) -> Path:
        return self.directory / "kubelet.sock"

    @property
    def kubelet_state(self) -> Path:
        return self.directory / "kubelet.json"

    @property
    def load_file(self) -> Path:
        return self.directory / "load.json"

    @property
    def gpu_state_file(self) -> Path:
        return self.directory / "gpus.json"

    @property
    def state_dir(self) -> Path:
        """The daemon's node-local state (its checkpoint), kept across restarts like a hostPath."""
        return self.directory / "state"

    @property
    def daemon_log(self) -> Path:
        return self.directory / "daemon.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    # -- what the fake hardware and kubelet have ----------------------------------------------

    def fake_state(self) -> dict[str, Any]:
        """The fake GPUs' knobs as the daemon last wrote them (see polca_node.fake_gpus)."""
        return read_fake_state(self.gpu_state_file)

    def clock_ceilings_mhz(self) -> list[int | None]:
        """Each fake GPU's clock ceiling by index (None: not locked, or never touched)."""
        gpus = self.fake_state().get("gpus") or []
        by_index = {g["index"]: g.get("clock_ceiling_mhz") for g in gpus}
        return [by_index.get(i) for i in range(len(self.gpu_uuids))]

    def gpu_knobs(self) -> tuple[GpuKnobs, ...] | None:
        """Each fake GPU's clock ceiling and power limit by index, from one read of the state
        file (None: not readable, e.g. never written)."""
        gpus = self.fake_state().get("gpus")
        if not gpus:
            return None
        by_index = {g["index"]: g for g in gpus}
        return tuple(
            GpuKnobs(by_index[i].get("clock_ceiling_mhz"), by_index[i].get("power_limit_w"))
            if i in by_index
            else GpuKnobs()
            for i in range(len(self.gpu_uuids))
        )

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the daemon's /metrics (None when absent or the daemon is down)."""
        return metric_value(self.metrics_url, name, **labels)

    def set_load(
        self, default: Mapping[str, float], gpus: Mapping[int, Mapping[str, float]] | None = None
    ) -> None:
        """What the fake GPUs do, e.g. {"decode": 0.8}; `gpus` overrides single GPUs."""
        data = {
            "default": dict(default),
            "gpus": {str(i): dict(d) for i, d in (gpus or {}).items()},
        }
        _write_atomically(self.load_file, data)

    def assign_pod(self, namespace: str, name: str, gpu_indices: Sequence[int]) -> None:
        """The fake kubelet reports these GPUs as held by the pod (empty: remove the pod)."""
        if gpu_indices:
            self.pods[(namespace, name)] = list(gpu_indices)
        else:
            self.pods.pop((namespace, name), None)
        self._write_kubelet_state()

    def set_kubelet_forgets_pods(self, forgets: bool) -> None:
        """Make the fake kubelet list no pod (as a restarting kubelet may), or list them again;
        the pods and their GPUs stay as they are."""
        self.kubelet_forgets_pods = forgets
        self._write_kubelet_state()

    def set_kubelet_fault(self, *, fails_with: str | None = None, delay_s: float = 0.0) -> None:
        """Make the fake kubelet answer every call with this gRPC status code (e.g.
        "UNAVAILABLE"), or after `delay_s`; the defaults make it answer normally again."""
        self.kubelet_fails_with, self.kubelet_delay_s = fails_with, delay_s
        self._write_kubelet_state()

    def _write_kubelet_state(self) -> None:
        listed = {} if self.kubelet_forgets_pods else self.pods
        pods = [
            {
                "namespace": namespace,
                "name": name,
                "containers": {"main": {GPU_RESOURCE: [self.gpu_uuids[i] for i in indices]}},
            }
            for (namespace, name), indices in sorted(listed.items())
        ]
        state: dict[str, Any] = {"pods": pods, "allocatable": {GPU_RESOURCE: self.gpu_uuids}}
        if self.kubelet_fails_with is not None:
            state["failWith"] = self.kubelet_fails_with
        if self.kubelet_delay_s:
            state["delaySeconds"] = self.kubelet_delay_s
        _write_atomically(self.kubelet_state, state)

    # -- processes ---------------------------------------------------------------------------

    def start_kubelet(self) -> None:
        self._write_kubelet_state()
        process = start_process(
            [sys.executable, "-m", "polca_testbed.fake_kubelet",
             "--socket", str(self.kubelet_socket), "--state", str(self.kubelet_state)],
            log_path=self.directory / "kubelet.log",
        )  # fmt: skip
        self.kubelet_pid = process.pid
        wait_until(
            self.kubelet_socket.exists,
            timeout_s=START_TIMEOUT_S,
            what=f"fake kubelet of {self.name}",
            alive=lambda: process.poll() is None,
            log_path=self.directory / "kubelet.log",
        )

    def daemon_argv(self) -> list[str]:
        return [
            sys.executable, "-m", "polca_node.main",
            "--node-name", self.name,
            "--kubeconfig", str(self.kubeconfig),
            "--gpu-backend", "fake",
            "--fake-profile", self.profile,
            "--fake-load", str(self.load_file),
            "--fake-state", str(self.gpu_state_file),
            "--podresources-socket", str(self.kubelet_socket),
            "--state-dir", str(self.state_dir),
            "--metrics-host", "127.0.0.1",
            "--metrics-port", str(self.metrics_port),
            "--guard-period-s", str(self.guard_period_s),
        ]  # fmt: skip

    def start_daemon(self, *, wait: bool = True) -> None:
        """Start `polca-node`; with `wait`, return once /healthz answers (without, at once)."""
        if not self.load_file.exists():
            self.set_load({})
        env = {**os.environ, **self.extra_env}
        process = start_process(self.daemon_argv(), log_path=self.daemon_log, env=env)
        self.daemon_pid = process.pid
        if not wait:
            return
        wait_until(
            self.daemon_healthy,
            timeout_s=START_TIMEOUT_S,
            what=f"polca-node of {self.name}",
            alive=lambda: process.poll() is None,
            log_path=self.daemon_log,
        )

    def daemon_healthy(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.metrics_port}/healthz")

    def daemon_ready(self) -> bool:
        """The daemon's readiness: NVML open, watches listed, a recent reconcile, every task up."""
        return http_ok(f"http://127.0.0.1:{self.metrics_port}/readyz")

    def stop_daemon(self) -> None:
        if self.daemon_pid is not None:
            stop_group(self.daemon_pid)
            self.daemon_pid = None

    def kill_daemon(self) -> None:
        """SIGKILL the daemon's process group, as a crash or an OOM kill would: no shutdown."""
        pid = self.daemon_pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        eventually("the killed daemon to be gone", lambda: not group_alive(pid), 10)
        self.daemon_pid = None

    def restart_daemon(self) -> None:
        self.stop_daemon()
        self.start_daemon()

    @property
    def daemon_running(self) -> bool:
        return self.daemon_pid is not None and group_alive(self.daemon_pid)

    def stop(self) -> None:
        self.stop_daemon()
        if self.kubelet_pid is not None:
            stop_group(self.kubelet_pid)
            self.kubelet_pid = None


class SimNodes:
    """Simulated nodes on one cluster; stops everything it started."""

    def __init__(self, kubeconfig: Path, *, keep_dirs: bool = False) -> None:
        self.kubeconfig = kubeconfig
        self.keep_dirs = keep_dirs
        self.nodes: dict[str, SimNode] = {}
        self._client = KubeClient(kubeconfig_credentials(kubeconfig))

    def __enter__(self) -> SimNodes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def add(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        profile: str = "H100-SXM:8",
        guard_period_s: float = 0.5,
        start: bool = True,
        extra_env: Mapping[str, str] | None = None,
    ) -> SimNode:
        """Create the Node object and (with `start`) the node's fake kubelet and daemon."""
        self.create_node_object(name, labels or {})
        directory = Path(tempfile.mkdtemp(prefix="polca-sim-", dir="/tmp"))
        node = SimNode(
            name=name,
            directory=directory,
            profile=profile,
            kubeconfig=self.kubeconfig,
            gpu_uuids=fake_gpu_uuids(profile, node_name=name),
            metrics_port=free_port(),
            guard_period_s=guard_period_s,
            extra_env=dict(extra_env or {}),
        )
        self.nodes[name] = node
        if start:
            node.start_kubelet()
            node.start_daemon()
        return node

    def create_node_object(self, name: str, labels: Mapping[str, str]) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": dict(labels)}}  # fmt: skip
        try:
            self._client.request("POST", "/api/v1/nodes", body=body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            self.label_node(name, labels)
        # Its daemon serves on loopback; the operator scrapes only a node's own addresses.
        self._client.request(
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            body={"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}},
            content_type="application/merge-patch+json",
        )

    def label_node(self, name: str, labels: Mapping[str, str | None]) -> None:
        """Set (or, with None, remove) labels on a Node."""
        self._client.request(
            "PATCH",
            f"/api/v1/nodes/{name}",
            body={"metadata": {"labels": dict(labels)}},
            content_type="application/merge-patch+json",
        )

    def stop_all(self) -> None:
        """Stop every process, then delete the Node and NodePowerState objects (best effort:
        the API server may already be gone at the end of a run)."""
        for node in self.nodes.values():
            node.stop()
        for node in self.nodes.values():
            for path in (f"/api/v1/nodes/{node.name}", f"{NODE_POWER_STATES}/{node.name}"):
                with contextlib.suppress(ApiError):
                    self._client.request("DELETE", path)
            if not self.keep_dirs:
                shutil.rmtree(node.directory, ignore_errors=True)
        self.nodes.clear()
        self._client.close()
