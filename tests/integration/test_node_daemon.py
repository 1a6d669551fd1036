"""Node daemons (fake NVML, fake kubelet, real `polca-node` processes) on the real control plane.

- two daemons apply a PowerPolicy status change to their GPUs within one second (issue 4);
- a restarted daemon keeps the clock ceilings (it never resets them on the way);
- a node that leaves the policy gets its defaults back, recorded in status and as an Event;
- a restarted daemon reads what the server stored (near-integers, a newer CRD's fields) and
  holds for a policy it cannot read, never lifting a cap on the way (safety rule 6);
- an empty kubelet answer while the pod watch shows a running GPU pod lifts no cap, even
  across a daemon restart (safety rule 6).

The operator is not running: the tests write the policy's status themselves, as it would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from polca_node.kube_client import KubeClient
from polca_testbed.cluster import Cluster
from polca_testbed.default_clocks import applied_ceiling_mhz
from polca_testbed.kube_objects import (
    POWER_POLICIES,
    condition,
    create_pod,
    node_state,
    ready_reason,
    set_stage,
)
from polca_testbed.nodes import SimNode, SimNodes
from polca_testbed.polling import eventually
from polca_testbed.sampling import BackgroundSampler
from polca_testbed.skew import FUTURE_FIELD, SKEWED_BUDGET_W, newer_powerpolicy_crd

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOMAIN_LABEL = "polca.dev/test-domain"
REACTION_BOUND_S = 1.0  # issue 4: daemons react to a PowerPolicy status change within 1 s
WAIT_S = 30.0
TRAINING = {"training.kubeflow.org/job-name": "pretrain"}
# What the default (GPU-relative) stages lock the fake H100s at: from the plan and the GPU.
STAGE1_MHZ = applied_ceiling_mhz("stage1", "idle", "H100-SXM")
STAGE2_MHZ = applied_ceiling_mhz("stage2", "idle", "H100-SXM")
BRAKE_MHZ = applied_ceiling_mhz("brake", "idle", "H100-SXM")


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    """Poll every 20 ms: the stage-change test measures sub-second reactions."""
    return eventually(what, check, timeout_s, interval_s=0.02)


def status_ceilings(state: dict[str, Any]) -> list[int | None]:
    gpus = (state.get("status") or {}).get("gpus") or []
    return [g.get("clockCeilingMHz") for g in sorted(gpus, key=lambda g: g["index"])]


def create_policy(api: KubeClient, name: str, domain: str) -> None:
    api.request("POST", POWER_POLICIES, body={
        "apiVersion": "polca.dev/v1alpha1", "kind": "PowerPolicy",
        "metadata": {"name": name},
        "spec": {"nodeSelector": {"matchLabels": {DOMAIN_LABEL: domain}}, "budgetWatts": 100000},
    })  # fmt: skip


def test_two_daemons_apply_a_stage_change_within_one_second(
    cluster: Cluster,
    api: KubeClient,
    sim: SimNodes,
    namespace: str,
    unique_name: Callable[[str], str],
    cleanup: Callable[..., None],
) -> None:
    domain, policy = unique_name("dom"), unique_name("policy")
    cleanup(f"powerpolicy/{policy}")
    trainer = sim.add(unique_name("gpu"), labels={DOMAIN_LABEL: domain}, profile="H100-SXM:4")
    server = sim.add(unique_name("gpu"), labels={DOMAIN_LABEL: domain}, profile="H100-SXM:4")
    create_pod(cluster, trainer, namespace, "train-0", [0, 1], labels=TRAINING)
    create_pod(cluster, server, namespace, "llm-0", [0], labels={"app": "llm"})
    create_policy(api, policy, domain)
    owners = {trainer.name: "train-0", server.name: "llm-0"}

    def daemons_ready() -> bool:
        # The policy has no decision yet: the daemons hold (tighten only) and know the pods.
        states = {n: node_state(api, n) for n in owners}
        return all(
            condition(state, "Ready").get("reason") == "TightenOnly"
            and (state["status"]["gpus"][0].get("pod") or {}).get("name") == owners[n]
            for n, state in states.items()
        )

    wait_for("the daemons to see the policy and the pods", daemons_ready)
    assert trainer.clock_ceilings_mhz() == [None] * 4

    started = time.monotonic()
    set_stage(api, policy, "stage2", 2, nodes=2)
    expected = {
        trainer.name: [STAGE2_MHZ] * 4,
        server.name: [None, STAGE2_MHZ, STAGE2_MHZ, STAGE2_MHZ],
    }

    def gpus_done() -> bool:
        return all(sim.nodes[n].clock_ceilings_mhz() == c for n, c in expected.items())

    wait_for("the fake GPUs to get their ceilings", gpus_done)
    gpus_s = time.monotonic() - started

    def status_done() -> bool:
        return all(status_ceilings(node_state(api, n)) == c for n, c in expected.items())

    wait_for("NodePowerState to show the ceilings", status_done)
    status_s = time.monotonic() - started
    print(f"stage change → GPUs {gpus_s * 1000:.0f} ms, → NodePowerState {status_s * 1000:.0f} ms")
    assert gpus_s < REACTION_BOUND_S
    assert status_s < REACTION_BOUND_S

    state = node_state(api, trainer.name)["status"]
    assert state["policies"] == [
        {"name": policy, "stage": "stage2", "observedGeneration": 1, "dryRun": False}
    ]
    assert [g.get("tier") for g in state["gpus"]] == ["low", "low", "idle", "idle"]
    assert state["gpus"][0]["pod"] == {"namespace": namespace, "name": "train-0"}
    assert state["metricsEndpoint"] == trainer.metrics_url
    assert condition(node_state(api, server.name), "Ready")["reason"] == "Enforce"


def test_restarted_daemon_keeps_the_ceilings(
    api: KubeClient, sim: SimNodes, unique_name: Callable[[str], str],
    cleanup: Callable[..., None],
) -> None:  # fmt: skip
    domain, policy = unique_name("dom"), unique_name("policy")
    cleanup(f"powerpolicy/{policy}")
    node = sim.add(unique_name("gpu"), labels={DOMAIN_LABEL: domain}, profile="H100-SXM:2")
    create_policy(api, policy, domain)
    set_stage(api, policy, "stage1", 1, nodes=1)
    wait_for("stage 1 on the GPUs", lambda: node.clock_ceilings_mhz() == [STAGE1_MHZ] * 2)
    resets = node.fake_state()["setter_calls"].get("nvmlDeviceResetGpuLockedClocks", 0)

    wait_for(
        "stage 1 in NodePowerState",
        lambda: status_ceilings(node_state(api, node.name)) == [STAGE1_MHZ] * 2,
    )
    before = node_state(api, node.name)["status"]["heartbeatTime"]
    node.stop_daemon()
    assert node.clock_ceilings_mhz() == [STAGE1_MHZ] * 2  # the GPUs keep them while it is down
    node.start_daemon()
    wait_for(
        "the restarted daemon to enforce again",
        lambda: (
            node_state(api, node.name)["status"]["heartbeatTime"] != before
            and ready_reason(api, node.name) == "Enforce"
        ),
    )
    assert node.clock_ceilings_mhz() == [STAGE1_MHZ] * 2
    assert node.fake_state()["setter_calls"].get("nvmlDeviceResetGpuLockedClocks", 0) == resets
    assert status_ceilings(node_state(api, node.name)) == [STAGE1_MHZ] * 2


def test_leaving_the_policy_restores_defaults_with_an_event(
    cluster: Cluster, api: KubeClient, sim: SimNodes, unique_name: Callable[[str], str],
    cleanup: Callable[..., None],
) -> None:  # fmt: skip
    domain, policy = unique_name("dom"), unique_name("policy")
    cleanup(f"powerpolicy/{policy}")
    stays = sim.add(unique_name("gpu"), labels={DOMAIN_LABEL: domain}, profile="H100-SXM:2")
    leaves = sim.add(unique_name("gpu"), labels={DOMAIN_LABEL: domain}, profile="H100-SXM:2")
    create_policy(api, policy, domain)
    set_stage(api, policy, "brake", 4, nodes=2)
    wait_for(
        "the brake on both nodes",
        lambda: stays.clock_ceilings_mhz() == leaves.clock_ceilings_mhz() == [BRAKE_MHZ] * 2,
    )

    sim.label_node(leaves.name, {DOMAIN_LABEL: None})
    wait_for("defaults on the node that left", lambda: leaves.clock_ceilings_mhz() == [None, None])
    assert [g["power_limit_w"] for g in leaves.fake_state()["gpus"]] == [700.0, 700.0]
    restored = wait_for(
        "DefaultsRestored in NodePowerState",
        lambda: condition(node_state(api, leaves.name), "DefaultsRestored"),
    )
    assert (restored["status"], restored["reason"]) == ("True", "LeftEveryPolicy")
    events = wait_for("the DefaultsRestored event", lambda: json.loads(cluster.kubectl(
        "get", "events", "-n", "default", "-o", "json",
        "--field-selector", f"involvedObject.name={leaves.name},reason=DefaultsRestored",
    ).stdout)["items"])  # fmt: skip
    assert events[0]["involvedObject"]["kind"] == "NodePowerState"
    described = cluster.kubectl("describe", "nodepowerstate", leaves.name).stdout
    assert "DefaultsRestored" in described, described  # where `kubectl describe` looks
    assert stays.clock_ceilings_mhz() == [BRAKE_MHZ] * 2  # the other node is still braked


# -- stored data the daemon's models refuse (issue 12, finding 1; safety rule 6) -------------

CAP: list[dict[str, Any]] = [
    {"name": "normal"},
    {"name": "cap", "triggerPercent": 80, "releasePercent": 75,
     "actions": {"idle": {"clockCeilingMHz": 1275}}},
]  # fmt: skip


@pytest.fixture
def newer_crd(cluster: Cluster, node_crds: None) -> Iterator[None]:
    with newer_powerpolicy_crd(cluster, REPO / "crds" / "powerpolicies.polca.dev.yaml"):
        yield


def create_capping_policy(
    api: KubeClient, name: str, domain: str, stages: list[dict[str, Any]] = CAP
) -> None:
    """A policy whose one stage "cap" (default: idle GPUs at 1275 MHz) is decided at once, as
    the operator would."""
    api.request("POST", POWER_POLICIES, body={
        "apiVersion": "polca.dev/v1alpha1", "kind": "PowerPolicy", "metadata": {"name": name},
        "spec": {"nodeSelector": {"matchLabels": {DOMAIN_LABEL: domain}}, "budgetWatts": 100000,
                 "stages": stages, "failsafeStage": "cap"},
    })  # fmt: skip
    set_stage(api, name, "cap", 1, nodes=1)


def capped_node(
    api: KubeClient, sim: SimNodes, unique_name: Callable[[str], str],
    cleanup: Callable[..., None],
) -> tuple[SimNode, str]:  # fmt: skip
    """A two-GPU node under a capping policy (its name returned too), both GPUs capped."""
    domain, policy = unique_name("dom"), unique_name("policy")
    cleanup(f"powerpolicy/{policy}")
    node = sim.add(unique_name("gpu"), labels={DOMAIN_LABEL: domain}, profile="H100-SXM:2")
    create_capping_policy(api, policy, domain)
    wait_for("the cap on the GPUs", lambda: node.clock_ceilings_mhz() == [1275, 1275])
    return node, policy


def patch_spec(cluster: Cluster, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """`kubectl patch --type=merge` of the spec, as a user would; the stored object back."""
    cluster.kubectl("patch", "powerpolicy", name, "--type=merge", "-p", json.dumps({"spec": spec}))
    stored: dict[str, Any] = json.loads(
        cluster.kubectl("get", "powerpolicy", name, "-o", "json").stdout
    )
    return stored


def restart_and_sample(api: KubeClient, node: SimNode, ready: str) -> list[list[int | None]]:
    """Restart the node's daemon while sampling its GPUs' ceilings every 20 ms; return the
    samples once the new daemon has written a status with Ready reason `ready`."""
    before = node_state(api, node.name)["status"]["heartbeatTime"]
    with BackgroundSampler(node.clock_ceilings_mhz, interval_s=0.02) as sampler:
        node.restart_daemon()
        wait_for(
            f"the restarted daemon to report {ready}",
            lambda: (
                node_state(api, node.name)["status"]["heartbeatTime"] != before
                and ready_reason(api, node.name) == ready
            ),
        )
    return sampler.values


def test_restarted_daemon_reads_what_the_server_stored_and_never_uncaps(
    cluster: Cluster, api: KubeClient, sim: SimNodes, newer_crd: None,
    unique_name: Callable[[str], str], cleanup: Callable[..., None],
) -> None:  # fmt: skip
    node, policy = capped_node(api, sim, unique_name, cleanup)

    # What the server keeps and this version's strict models refuse: a near-integer in an
    # integer field (the server's integer check tolerates it) and a newer CRD's field.
    stages = json.loads(json.dumps(CAP))
    stages[1]["actions"]["idle"]["clockCeilingMHz"] = 1110.000001
    stored = patch_spec(cluster, policy, {"stages": stages, FUTURE_FIELD: "on"})
    assert stored["spec"][FUTURE_FIELD] == "on"
    assert stored["spec"]["stages"][1]["actions"] == {"idle": {"clockCeilingMHz": 1110.000001}}
    wait_for("the new cap on the GPUs", lambda: node.clock_ceilings_mhz() == [1110, 1110])

    ceilings = restart_and_sample(api, node, "Enforce")
    assert ceilings, "no samples"
    lifted = [c for c in ceilings if c != [1110, 1110]]
    assert not lifted, f"a cap was lifted during the restart: {lifted[:5]}"
    assert condition(node_state(api, node.name), "PolicyUnreadable") == {}
    assert node.fake_state()["setter_calls"].get("nvmlDeviceResetGpuLockedClocks", 0) == 0


def test_restarted_daemon_holds_for_a_policy_it_cannot_read(
    cluster: Cluster, api: KubeClient, sim: SimNodes, newer_crd: None,
    unique_name: Callable[[str], str], cleanup: Callable[..., None],
) -> None:  # fmt: skip
    node, policy = capped_node(api, sim, unique_name, cleanup)

    # The newer CRD allows a budget this version refuses: the policy is unknown, not gone.
    stored = patch_spec(cluster, policy, {"budgetWatts": SKEWED_BUDGET_W})
    assert stored["spec"]["budgetWatts"] == SKEWED_BUDGET_W
    wait_for(
        "PolicyUnreadable on the running daemon",
        lambda: condition(node_state(api, node.name), "PolicyUnreadable").get("status") == "True",
    )
    assert ready_reason(api, node.name) == "TightenOnly"  # its last good version still counts

    ceilings = restart_and_sample(api, node, "Hold")
    lifted = [c for c in ceilings if c != [1275, 1275]]
    assert not lifted, f"a cap was lifted during the restart: {lifted[:5]}"
    unreadable = condition(node_state(api, node.name), "PolicyUnreadable")
    assert (unreadable["status"], unreadable["reason"]) == ("True", "UnreadablePolicy")
    assert policy in unreadable["message"]
    assert "spec.budgetWatts" in unreadable["message"]
    assert wait_for(
        "the unreadable-policy gauge", lambda: node.metric("polca_unreadable_policies") == 1.0
    )
    events = wait_for("the PolicyUnreadable event", lambda: json.loads(cluster.kubectl(
        "get", "events", "-n", "default", "-o", "json",
        "--field-selector", f"involvedObject.name={node.name},reason=PolicyUnreadable",
    ).stdout)["items"])  # fmt: skip
    assert events[0]["type"] == "Warning"
    assert node.fake_state()["setter_calls"].get("nvmlDeviceResetGpuLockedClocks", 0) == 0

    # Readable again: the daemon enforces and clears the condition.
    patch_spec(cluster, policy, {"budgetWatts": 100000})
    wait_for("Enforce again", lambda: ready_reason(api, node.name) == "Enforce")
    cleared = condition(node_state(api, node.name), "PolicyUnreadable")
    assert (cleared["status"], cleared["reason"]) == ("False", "PoliciesReadable")
    assert node.metric("polca_unreadable_policies") == 0.0
    assert node.clock_ceilings_mhz() == [1275, 1275]


# -- the kubelet and the pod watch disagree (issue 12, finding 4; safety rule 6) -------------

CAP_LOW_ONLY: list[dict[str, Any]] = [
    {"name": "normal"},
    {"name": "cap", "triggerPercent": 80, "releasePercent": 75,
     "actions": {"low": {"clockCeilingMHz": 1110}}},
]  # fmt: skip


def owners_unknown(api: KubeClient, node: str) -> str:
    return str(condition(node_state(api, node), "GpuOwnersUnknown").get("status", ""))


def test_an_empty_kubelet_answer_never_uncaps_the_gpus_of_running_pods(
    cluster: Cluster, api: KubeClient, sim: SimNodes, namespace: str,
    unique_name: Callable[[str], str], cleanup: Callable[..., None],
) -> None:  # fmt: skip
    domain, policy = unique_name("dom"), unique_name("policy")
    cleanup(f"powerpolicy/{policy}")
    node = sim.add(unique_name("gpu"), labels={DOMAIN_LABEL: domain}, profile="H100-SXM:4")
    create_pod(cluster, node, namespace, "train-0", [0, 1], labels=TRAINING, running=True)
    create_capping_policy(api, policy, domain, CAP_LOW_ONLY)  # caps low, never idle
    capped = [1110, 1110, None, None]
    wait_for("the training pod's GPUs capped", lambda: node.clock_ceilings_mhz() == capped)

    with BackgroundSampler(node.clock_ceilings_mhz, interval_s=0.02) as sampler:
        # The kubelet answers that no pod holds a GPU; the watch still shows train-0 running.
        node.set_kubelet_forgets_pods(True)
        wait_for("GpuOwnersUnknown", lambda: owners_unknown(api, node.name) == "True")
        assert wait_for(
            "the unconfirmed-GPU gauge", lambda: node.metric("polca_unconfirmed_gpus") == 2.0
        )
        # Worse: a daemon restarted meanwhile remembers nothing; the pod's request says it
        # holds GPUs, so every GPU the kubelet calls free is unconfirmed.
        restart_and_sample(api, node, "Enforce")
        wait_for("GpuOwnersUnknown after the restart",
                 lambda: owners_unknown(api, node.name) == "True")  # fmt: skip
        node.set_kubelet_forgets_pods(False)
        wait_for("the sources to agree", lambda: owners_unknown(api, node.name) == "False")
        wait_for("the idle GPUs back to no cap", lambda: node.clock_ceilings_mhz() == capped)

    lifted = [c for c in sampler.values if c[:2] != [1110, 1110]]
    assert not lifted, f"a running pod's GPU was uncapped: {lifted[:5]}"
    assert node.metric("polca_unconfirmed_gpus") == 0.0
    events = wait_for("the GpuOwnersUnknown event", lambda: json.loads(cluster.kubectl(
        "get", "events", "-n", "default", "-o", "json",
        "--field-selector", f"involvedObject.name={node.name},reason=GpuOwnersUnknown",
    ).stdout)["items"])  # fmt: skip
    assert f"{namespace}/train-0" in events[0]["message"]
