"""The operator SIGKILLed at seeded random points while its policy holds a stage, and
Prometheus stopped under it: no cap the policy demands is lifted at any moment.

The node's load keeps the domain at about a third of its budget: above stage 1's trigger
(20%), far below stage 2's (89%), so the decided stage is stage 1 for as long as power is
known; without fresh power it is the failsafe stage 2 (safety rule 2).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from polca.api.defaults import DEFAULT_STAGES
from polca_node.kube_client import KubeClient
from polca_testbed.cluster import Cluster
from polca_testbed.default_clocks import applied_ceiling_mhz
from polca_testbed.kube_objects import POWER_POLICIES
from polca_testbed.limits_watch import LimitsWatch, ceilings
from polca_testbed.operators import (
    OperatorHandle,
    operator_healthy,
    release_finalizers,
    start_operator,
)
from polca_testbed.polling import eventually
from polca_testbed.prometheus import start_prometheus
from polca_testbed.scenarios import CappedNode, Decision

pytestmark = pytest.mark.timeout(150)

# The default (GPU-relative) policy's ceilings on the node's fake H100s.
STAGE1_MHZ = applied_ceiling_mhz("stage1", "low", "H100-SXM")
STAGE2_MHZ = applied_ceiling_mhz("stage2", "low", "H100-SXM")
STAGE1 = Decision("stage1", 1, ceilings(None, STAGE1_MHZ, STAGE1_MHZ, STAGE1_MHZ))
FAILSAFE = Decision("stage2", 2, ceilings(None, STAGE2_MHZ, STAGE2_MHZ, STAGE2_MHZ))
LOAD = {"decode": 0.3}  # 4 H100s at about 600 W of the 1750 W budget
BUDGET_W = 1750
KILLS = 3
# Start-up (imports, Kopf, the first cycle) takes a few seconds here: kill points spread over it.
KILL_WITHIN_S = 5.0
# Stale after 3 s, one 1 s cycle, the write and the daemon's reaction, on a loaded machine.
FAILSAFE_GRACE_S = 12.0
WAIT_S = 40.0


def stages() -> list[dict[str, Any]]:
    out = [stage.to_wire() for stage in DEFAULT_STAGES]
    out[1]["triggerPercent"], out[1]["releasePercent"] = 20, 15
    return out


def spec(telemetry: dict[str, Any]) -> dict[str, Any]:
    return {"budgetWatts": BUDGET_W, "stages": stages(), "telemetry": telemetry,
            "settleSeconds": 2, "holdSeconds": 2}  # fmt: skip


@pytest.fixture
def operators(cluster: Cluster, tmp_path: Path) -> Iterator[Callable[..., OperatorHandle]]:
    """Start operators (logs under tmp_path); all stopped, finalizers released afterwards."""
    started: list[OperatorHandle] = []

    def start(name: str) -> OperatorHandle:
        extra = ["--telemetry-timeout", "1", "--restore-wait", "5"]
        handle = start_operator(cluster.kubeconfig, tmp_path / f"{name}.log", extra=extra)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()
    release_finalizers(cluster)


def status(api: KubeClient, policy: str) -> dict[str, Any]:
    found: dict[str, Any] = api.request("GET", f"{POWER_POLICIES}/{policy}").get("status") or {}
    return found


def telemetry_stale(api: KubeClient, policy: str) -> str:
    for entry in status(api, policy).get("conditions") or ():
        if entry["type"] == "TelemetryStale":
            return str(entry["status"])
    return ""


def wait_s(seconds: float) -> None:
    """Let the system run this long (a kill point, an outage), bounded and on purpose."""
    deadline = time.monotonic() + seconds
    eventually("the kill point", lambda: time.monotonic() >= deadline, seconds + 5,
               interval_s=0.01)  # fmt: skip


def runs_the_loop(operator: OperatorHandle, policy: str, cycles: int = 3) -> None:
    """Wait until `operator` decides the policy's stage 1, `cycles` more times."""
    eventually("operator /healthz", lambda: operator_healthy(operator.metrics_port), WAIT_S)
    at_stage1 = lambda: operator.metric("polca_domain_stage", policy=policy) == 1  # noqa: E731
    eventually("the operator at stage 1", at_stage1, WAIT_S)
    start = operator.decisions(policy)
    eventually(f"{cycles} more decisions",
               lambda: operator.decisions(policy) >= start + cycles, WAIT_S)  # fmt: skip


def test_operator_sigkill_mid_stage_lifts_no_cap(
    capped_node: Callable[..., CappedNode], operators: Callable[..., OperatorHandle],
    rng: random.Random, cluster_logs: Path, tmp_path: Path,
) -> None:  # fmt: skip
    capped = capped_node(decision=STAGE1, spec=spec({"source": "direct"}))
    node, policy = capped.node, capped.policy
    node.set_load(LOAD)
    runs_the_loop(operators("operator-0"), policy)
    points = []
    with LimitsWatch([node], logs=[cluster_logs, tmp_path]) as watch:
        watch.demand(node, STAGE1.demand, why="stage1, power above its release")
        for kill in range(KILLS):
            operator = operators(f"operator-{kill + 1}")
            point_s = rng.uniform(0.5, KILL_WITHIN_S)
            wait_s(point_s)
            operator.kill()
            points.append(f"{point_s:.2f}s")
        runs_the_loop(operators("operator-last"), policy)
    print(f"operator kills after {', '.join(points)}: {watch.assert_held()}")


def test_prometheus_down_lifts_no_cap(
    api: KubeClient, capped_node: Callable[..., CappedNode],
    operators: Callable[..., OperatorHandle], rng: random.Random, tmp_path: Path,
    cluster_logs: Path,
) -> None:  # fmt: skip
    prometheus = start_prometheus(tmp_path / "prometheus")
    try:
        telemetry = {"source": "prometheus", "prometheusURL": prometheus.url,
                     "stalenessSeconds": 3, "directFallback": False}  # fmt: skip
        capped = capped_node(decision=STAGE1, spec=spec(telemetry))
        node, policy = capped.node, capped.policy
        node.set_load(LOAD)
        targets = [f"127.0.0.1:{node.metrics_port}"]
        prometheus.set_targets(targets)
        prometheus.wait_for("polca_gpu_power_watts", count=4)
        runs_the_loop(operators("operator"), policy)
        with LimitsWatch([node], logs=[cluster_logs, tmp_path]) as watch:
            watch.demand(node, STAGE1.demand, why="stage1, fresh power above its release")
            prometheus.stop()
            watch.demand(node, FAILSAFE.demand, grace_s=FAILSAFE_GRACE_S,
                         why="the failsafe stage, Prometheus down")  # fmt: skip
            failsafe = [k.clock_ceiling_mhz for k in FAILSAFE.demand]
            eventually("the failsafe stage on the GPUs",
                       lambda: node.clock_ceilings_mhz() == failsafe, WAIT_S)  # fmt: skip
            assert telemetry_stale(api, policy) == "True"
            wait_s(rng.uniform(2.0, 4.0))  # the outage goes on: the failsafe must hold
            prometheus = start_prometheus(prometheus.state_dir, targets, port=prometheus.port)
            # Fresh power again: the decision may release to stage 1 from now on.
            watch.demand(node, STAGE1.demand, why="stage1, Prometheus back")
            eventually("fresh telemetry", lambda: telemetry_stale(api, policy) == "False", WAIT_S)
            stage1 = [k.clock_ceiling_mhz for k in STAGE1.demand]
            eventually("released to stage 1", lambda: node.clock_ceilings_mhz() == stage1, WAIT_S)
    finally:
        prometheus.stop()
    print(f"Prometheus down: {watch.assert_held()}")
