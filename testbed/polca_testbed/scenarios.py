"""Starting situations for the tests that disturb a running system (tests/chaos): a simulated
node under a decided policy, its limits applied, with a GPU of every tier.

The operator is not running: the policy's decision is written into its status, as the operator
would write it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from polca_node.kube_client import KubeClient
from polca_testbed.cluster import Cluster
from polca_testbed.default_clocks import applied_ceiling_mhz
from polca_testbed.kube_objects import create_pod, create_policy, ready_reason, set_stage
from polca_testbed.limits_invariant import GpuKnobs
from polca_testbed.limits_watch import ceilings
from polca_testbed.nodes import SimNode, SimNodes
from polca_testbed.polling import eventually

__all__ = [
    "BRAKE",
    "DOMAIN_LABEL",
    "HIGH_GPU",
    "LOW_GPU",
    "STAGE3",
    "TIGHTEN_GRACE_S",
    "TRAINING",
    "CappedNode",
    "Decision",
    "capped_node",
]

DOMAIN_LABEL = "polca.dev/chaos-domain"
TRAINING = {"training.kubeflow.org/job-name": "pretrain"}  # a label of the default low tier
HIGH_GPU, LOW_GPU = 0, 1  # GPUs 2 and 3 are idle
WAIT_S = 30.0


@dataclass(frozen=True)
class Decision:
    """A stage as the operator decides it, and the clock ceilings it demands of the node."""

    stage: str
    index: int
    demand: tuple[GpuKnobs, ...]


# The default (GPU-relative) policy's ceilings on the node's fake H100s, per stage and tier.
_GPU = "H100-SXM"
# POLCA's stage 3 caps every tier (A100: high 1305 MHz, low and idle 1110 MHz).
STAGE3 = Decision(
    "stage3",
    3,
    ceilings(
        applied_ceiling_mhz("stage3", "high", _GPU),
        *[applied_ceiling_mhz("stage3", "low", _GPU)] * 3,
    ),
)
# The brake: every GPU near halt (POLCA's 288 of 1410 MHz, the same share of the H100's max).
BRAKE = Decision("brake", 4, ceilings(*[applied_ceiling_mhz("brake", "high", _GPU)] * 4))
# A stage change must reach the GPUs within 1 s (issue 4) and within 2 s of the API server
# answering after an outage (issue 12): the grace a tightening gets, with room for the loaded
# machine (a limit held before binds meanwhile all the same).
TIGHTEN_GRACE_S = 5.0


@dataclass(frozen=True)
class CappedNode:
    node: SimNode
    policy: str
    namespace: str
    decision: Decision
    pods: tuple[str, str]  # the high-tier pod (GPU 0), the low-tier pod (GPU 1)


def capped_node(
    cluster: Cluster, api: KubeClient, sim: SimNodes, namespace: str,
    unique_name: Callable[[str], str], *, policy: str, decision: Decision = STAGE3,
    spec: Mapping[str, Any] | None = None, running_pods: bool = False,
    extra_env: Mapping[str, str] | None = None,
) -> CappedNode:  # fmt: skip
    """A 4-GPU node whose GPU 0 a high-tier pod holds and GPU 1 a training (low-tier) pod,
    under `policy` (created here, `spec` added) decided at `decision`; returns once the GPUs
    have the demanded ceilings and the daemon enforces. `running_pods`: the pods request their
    GPUs and say Running, so the daemon can check the kubelet's answer against them."""
    domain = unique_name("dom")
    node = sim.add(unique_name("gpu"), labels={DOMAIN_LABEL: domain}, profile="H100-SXM:4",
                   extra_env=extra_env)  # fmt: skip
    pods = (unique_name("llm"), unique_name("train"))
    create_pod(cluster, node, namespace, pods[0], [HIGH_GPU], labels={"app": "llm"},
               running=running_pods)  # fmt: skip
    create_pod(cluster, node, namespace, pods[1], [LOW_GPU], labels=TRAINING,
               running=running_pods)  # fmt: skip
    selector = {"nodeSelector": {"matchLabels": {DOMAIN_LABEL: domain}}}
    create_policy(api, policy, {**selector, "budgetWatts": 100000, **(spec or {})})
    set_stage(api, policy, decision.stage, decision.index)
    applied = [k.clock_ceiling_mhz for k in decision.demand]
    eventually(f"{decision.stage} on the GPUs", lambda: node.clock_ceilings_mhz() == applied,
               WAIT_S, interval_s=0.05)  # fmt: skip
    eventually("the daemon to enforce", lambda: ready_reason(api, node.name) == "Enforce", WAIT_S)
    return CappedNode(node, policy, namespace, decision, pods)
