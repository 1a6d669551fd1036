"""What the API server stores and this version's models would refuse, with the daemon SIGKILLed
and restarted over it: no cap the policy demands is lifted (safety rule 6, issue 12 finding 1).

- version skew: a newer CRD adds a spec field and relaxes a bound; the stored policy uses the
  field (readable: enforced), then the relaxed bound (unreadable: held, never restored);
- bad stored data: near-integers in integer fields (the server's integer check tolerates
  them), a null the server drops, and a status whose decision was nulled out (no stage: no
  newer decision, so the last one holds).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from polca.api.defaults import DEFAULT_STAGES
from polca_node.kube_client import KubeClient
from polca_testbed.cluster import Cluster
from polca_testbed.kube_objects import POWER_POLICIES, ready_reason, set_stage
from polca_testbed.limits_watch import LimitsWatch
from polca_testbed.nodes import SimNode
from polca_testbed.polling import eventually
from polca_testbed.scenarios import HIGH_GPU, LOW_GPU, STAGE3, CappedNode
from polca_testbed.skew import FUTURE_FIELD, SKEWED_BUDGET_W, newer_powerpolicy_crd

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 30.0


@pytest.fixture
def newer_crd(cluster: Cluster, node_crds: None) -> Iterator[None]:
    with newer_powerpolicy_crd(cluster, REPO / "crds" / "powerpolicies.polca.dev.yaml"):
        yield


def patch(cluster: Cluster, policy: str, body: dict[str, Any], *subresource: str) -> None:
    """`kubectl patch --type=merge`, as a user (or a newer operator) would."""
    done = cluster.kubectl("patch", "powerpolicy", policy, "--type=merge", *subresource,
                           "-p", json.dumps(body), check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr


def crash_and_restart(node: SimNode) -> None:
    """SIGKILL the daemon and start a new one; return once it is ready (listed, reconciled)."""
    node.kill_daemon()
    node.start_daemon(wait=False)
    eventually("the restarted daemon to be ready", node.daemon_ready, 60)


def unreadable(node: SimNode) -> float | None:
    return node.metric("polca_unreadable_policies")


def test_version_skew_lifts_no_cap(
    cluster: Cluster, api: KubeClient, capped_node: Callable[..., CappedNode], newer_crd: None,
    cluster_logs: Path,
) -> None:  # fmt: skip
    capped = capped_node()
    node = capped.node
    with LimitsWatch([node], logs=[cluster_logs]) as watch:
        watch.demand(node, capped.decision.demand, why=capped.decision.stage)
        patch(cluster, capped.policy, {"spec": {FUTURE_FIELD: "on"}})  # readable: a new field
        crash_and_restart(node)
        eventually("the restarted daemon to read the newer policy",
                   lambda: unreadable(node) == 0.0, WAIT_S)  # fmt: skip
        patch(cluster, capped.policy, {"spec": {"budgetWatts": SKEWED_BUDGET_W}})  # unreadable
        eventually("the daemon to find the policy unreadable",
                   lambda: unreadable(node) == 1.0, WAIT_S)  # fmt: skip
        crash_and_restart(node)
        eventually("the restarted daemon to hold for the unreadable policy",
                   lambda: unreadable(node) == 1.0, WAIT_S)  # fmt: skip
        patch(cluster, capped.policy, {"spec": {"budgetWatts": 100000}})
        eventually("readable again", lambda: unreadable(node) == 0.0, WAIT_S)
        eventually("the daemon to enforce", lambda: ready_reason(api, node.name) == "Enforce",
                   WAIT_S)  # fmt: skip
    print(f"version skew: {watch.assert_held()}")


def near_integer_stages() -> list[dict[str, Any]]:
    """POLCA's stages, stage 3's ceilings in MHz as near-integers (the same clocks the default's
    percentages give these GPUs, so no cap moves) and a null the server drops."""
    stages = [stage.to_wire() for stage in DEFAULT_STAGES]
    actions = stages[3]["actions"]
    high, low = (STAGE3.demand[gpu].clock_ceiling_mhz for gpu in (HIGH_GPU, LOW_GPU))
    assert high is not None
    assert low is not None
    actions["low"] = {"clockCeilingMHz": low + 0.000001}
    actions["idle"] = {"clockCeilingMHz": low + 0.000001}
    actions["high"] = {"clockCeilingMHz": high + 0.000001, "powerLimitWatts": None}
    return stages


def test_bad_stored_data_lifts_no_cap(
    cluster: Cluster, api: KubeClient, capped_node: Callable[..., CappedNode],
    cluster_logs: Path,
) -> None:  # fmt: skip
    capped = capped_node()
    node, policy = capped.node, capped.policy
    with LimitsWatch([node], logs=[cluster_logs]) as watch:
        watch.demand(node, capped.decision.demand, why=capped.decision.stage)
        patch(cluster, policy, {"spec": {"stages": near_integer_stages()}})
        stored = api.request("GET", f"{POWER_POLICIES}/{policy}")["spec"]["stages"][3]["actions"]
        assert stored["low"]["clockCeilingMHz"] % 1 > 0  # the server kept the near-integer
        assert "powerLimitWatts" not in stored["high"]  # and dropped the null
        crash_and_restart(node)
        eventually("the restarted daemon to read the stored policy",
                   lambda: unreadable(node) == 0.0, WAIT_S)  # fmt: skip

        # The decision nulled out: no newer decision, the last one holds across a crash.
        patch(cluster, policy, {"status": {"stage": None, "stageIndex": None}},
              "--subresource=status")  # fmt: skip
        assert "stage" not in (api.request("GET", f"{POWER_POLICIES}/{policy}").get("status") or {})
        crash_and_restart(node)
        eventually("the daemon to hold without a decision",
                   lambda: ready_reason(api, node.name) in {"Hold", "TightenOnly"},
                   WAIT_S)  # fmt: skip
        set_stage(api, policy, capped.decision.stage, capped.decision.index)
        eventually("the daemon to enforce", lambda: ready_reason(api, node.name) == "Enforce",
                   WAIT_S)  # fmt: skip
    print(f"bad stored data: {watch.assert_held()}")
