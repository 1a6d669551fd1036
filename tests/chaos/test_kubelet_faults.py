"""The kubelet's PodResources API fails, answers empty, or answers too slowly, while the pod
watch still shows the pods that hold the GPUs: neither the running daemon nor one restarted
(SIGKILL) in the middle of it lifts the cap of a pod's GPU by taking it for idle (safety rule 6).

The policy caps the high and the low tier but not idle GPUs, so a GPU taken for idle by
mistake would be uncapped at once. The daemons ask the kubelet every 0.5 s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from polca_node.kube_client import KubeClient
from polca_testbed.kube_objects import ready_reason
from polca_testbed.limits_watch import LimitsWatch, ceilings
from polca_testbed.nodes import SimNode
from polca_testbed.polling import eventually
from polca_testbed.scenarios import CappedNode, Decision

pytestmark = pytest.mark.timeout(120)

CAP_PODS_NOT_IDLE = Decision("cap", 1, ceilings(1305, 1110, None, None))
STAGES = [
    {"name": "normal"},
    {"name": "cap", "triggerPercent": 80, "releasePercent": 75,
     "actions": {"high": {"clockCeilingMHz": 1305}, "low": {"clockCeilingMHz": 1110}}},
]  # fmt: skip
SLOW_S = 7.0  # longer than the daemon's 5 s PodResources timeout
KUBELET_WARNING = "keeping the last GPU→pod mapping"
AGREE = "the kubelet and the pod watch agree again"


def fault_seen(mode: str, node: SimNode, log_from: int) -> bool:
    """The daemon started after `log_from` (its log's size) has met the fault, says its log."""
    sign = "(PodResources) lists no GPU for" if mode == "empty" else KUBELET_WARNING
    return sign in node.daemon_log.read_text()[log_from:]


def set_fault(node: SimNode, mode: str, on: bool) -> None:
    if mode == "empty":
        node.set_kubelet_forgets_pods(on)
    elif mode == "error":
        node.set_kubelet_fault(fails_with="UNAVAILABLE" if on else None)
    else:
        node.set_kubelet_fault(delay_s=SLOW_S if on else 0.0)


@pytest.mark.parametrize("mode", ["error", "empty", "slow"])
def test_a_faulty_kubelet_lifts_no_cap(
    mode: str, api: KubeClient, capped_node: Callable[..., CappedNode], cluster_logs: Path
) -> None:
    capped = capped_node(
        decision=CAP_PODS_NOT_IDLE, spec={"stages": STAGES, "failsafeStage": "cap"},
        running_pods=True, extra_env={"POLCA_PODRESOURCES_INTERVAL_S": "0.5"},
    )  # fmt: skip
    node = capped.node
    wait_s = SLOW_S * 3
    with LimitsWatch([node], logs=[cluster_logs]) as watch:
        watch.demand(node, capped.decision.demand, why="cap: high and low, idle free")
        set_fault(node, mode, True)
        eventually(f"the daemon to meet the {mode} kubelet",
                   lambda: fault_seen(mode, node, 0), wait_s)  # fmt: skip
        # A daemon that starts now has no memory of the pods' GPUs: the riskiest moment.
        node.kill_daemon()
        log_from = node.daemon_log.stat().st_size
        node.start_daemon(wait=False)
        eventually("the restarted daemon to be ready", node.daemon_ready, 60)
        eventually(f"the restarted daemon to meet the {mode} kubelet",
                   lambda: fault_seen(mode, node, log_from), wait_s)  # fmt: skip
        set_fault(node, mode, False)
        if mode == "empty":
            agreed = lambda: AGREE in node.daemon_log.read_text()[log_from:]  # noqa: E731
            eventually("the sources to agree", agreed, wait_s)
        eventually("the daemon to enforce", lambda: ready_reason(api, node.name) == "Enforce", 30)
    print(f"kubelet {mode}: {watch.assert_held()}")
    expected = [k.clock_ceiling_mhz for k in capped.decision.demand]
    assert node.clock_ceilings_mhz() == expected  # the idle GPUs are still free
