"""The operator end to end: real API server, real Prometheus, simulated nodes with real daemons.

Two simulated H100 nodes (8 fake GPUs each, `polca-node` processes with fake NVML) share a
7 kW domain: at decode load 0.3 the domain draws about 44%, at 1.0 about 87% (stage 1). GPUs
0-3 of the first node belong to a high-tier pod; all others are idle and throttled first.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from polca.api.defaults import DEFAULT_STAGES
from polca_testbed.cluster import KOPF_PEERING_CRD, POLCA_CRDS, Cluster
from polca_testbed.default_clocks import applied_ceiling_mhz
from polca_testbed.nodes import SimNode, SimNodes
from polca_testbed.operators import (
    RESTORE_FINALIZER,
    OperatorHandle,
    operator_healthy,
    release_finalizers,
)
from polca_testbed.operators import start_operator as start_operator_process
from polca_testbed.polling import eventually
from polca_testbed.prometheus import Prometheus, start_prometheus
from polca_testbed.sampling import BackgroundSampler
from polca_testbed.skew import FUTURE_FIELD, SKEWED_BUDGET_W, newer_powerpolicy_crd

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PEERING_CRD = REPO / "testbed" / "polca_testbed" / "manifests" / "kopf-peering.yaml"
DOMAIN_LABEL = "polca.dev/power-domain"
BUDGET_W = 7000.0
IDLE_LOAD = {"decode": 0.3}
BUSY_LOAD = {"decode": 1.0}
GPU_MODEL = "H100-SXM"  # SimNodes' default fake GPU
# What the default (GPU-relative) stages lock these GPUs at: derived from the plan and the GPU.
STAGE1_MHZ = applied_ceiling_mhz("stage1", "idle", GPU_MODEL)
STAGE2_MHZ = applied_ceiling_mhz("stage2", "idle", GPU_MODEL)
HIGH_GPUS = [0, 1, 2, 3]
# Idle load draws ~38% of the budget; anything below half is "settled", far below 75% release.
IDLE_CEILING = 0.5
Names = Callable[[str], str]


@dataclass
class Env:
    cluster: Cluster
    nodes: SimNodes
    prometheus: Prometheus
    api: kubernetes.client.CustomObjectsApi
    core: kubernetes.client.CoreV1Api
    sims: list[SimNode] = field(default_factory=list)

    def restart_prometheus(self) -> None:
        old = self.prometheus
        self.prometheus = start_prometheus(
            old.state_dir, [f"127.0.0.1:{n.metrics_port}" for n in self.sims], port=old.port
        )

    def status(self, policy: str) -> dict[str, Any]:
        obj = self.api.get_cluster_custom_object("polca.dev", "v1alpha1", "powerpolicies", policy)
        status: dict[str, Any] = obj.get("status") or {}
        return status

    def exists(self, policy: str) -> bool:
        found = self.cluster.kubectl(
            "get", "powerpolicy", policy, "--ignore-not-found", "-o", "name"
        )
        return bool(found.stdout.strip())

    def stage(self, policy: str) -> str | None:
        stage: str | None = self.status(policy).get("stage")
        return stage

    def condition(self, policy: str, type_: str) -> tuple[str, str] | None:
        for c in self.status(policy).get("conditions") or ():
            if c["type"] == type_:
                return c["status"], c["reason"]
        return None

    def set_load(self, load: dict[str, float]) -> None:
        for sim in self.sims:
            sim.set_load(load)

    def settle_idle(self) -> None:
        """Idle load, and wait until Prometheus sees it: a test starts below every trigger
        whatever the test before it left behind (its last samples stay fresh for minutes)."""
        self.set_load(IDLE_LOAD)
        eventually(
            "idle domain power in Prometheus",
            lambda: self.gpu_power_w() < IDLE_CEILING * BUDGET_W,
            60,
        )

    def peers(self, peering: str) -> int:
        """Operators registered in a Kopf peering object (one status entry each)."""
        obj = self.api.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
        return len(obj.get("status") or {})

    def ceilings(self) -> list[list[int | None]]:
        return [sim.clock_ceilings_mhz() for sim in self.sims]

    def gpu_power_w(self) -> float:
        result = self.prometheus.query("sum(polca_gpu_power_watts)")
        return float(result[0]["value"][1]) if result else float("nan")

    def power_by_tier_w(self) -> dict[str, float]:
        """Mean board power per GPU by tier (the daemons' `tier` label)."""
        result = self.prometheus.query("avg by (tier) (polca_gpu_power_watts)")
        return {r["metric"].get("tier", ""): float(r["value"][1]) for r in result}

    def events(self, policy: str) -> list[tuple[str, str]]:
        listed = self.core.list_event_for_all_namespaces(
            field_selector=f"involvedObject.name={policy}"
        )
        return [(e.reason, e.message) for e in listed.items]


def stage1_ceilings() -> list[list[int | None]]:
    """Idle GPUs at the stage-1 ceiling, the high-tier pod's GPUs untouched."""
    first = [None if i in HIGH_GPUS else STAGE1_MHZ for i in range(8)]
    return [first, [STAGE1_MHZ] * 8]


UNCAPPED: list[list[int | None]] = [[None] * 8, [None] * 8]


def less_than(values: dict[str, float], key: str, factor: float, other: str) -> bool:
    """values[key] < factor × values[other], False while either is missing."""
    return key in values and other in values and values[key] < factor * values[other]


@pytest.fixture(scope="module")
def env(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cluster.install_crds(REPO / "crds", PEERING_CRD, names=[*POLCA_CRDS, KOPF_PEERING_CRD])
    client = cluster.api_client()
    with SimNodes(cluster.kubeconfig) as nodes:
        suffix = os.getpid() % 10000
        sims = [nodes.add(f"op-sim-{suffix}-{i}", labels={DOMAIN_LABEL: "none"}) for i in (0, 1)]
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"llm-{suffix}",
                "namespace": "default",
                "labels": {"polca.dev/tier": "high"},
            },
            "spec": {"nodeName": sims[0].name, "containers": [{"name": "main", "image": "x"}]},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
        sims[0].assign_pod("default", pod["metadata"]["name"], HIGH_GPUS)
        prometheus = start_prometheus(
            tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{s.metrics_port}" for s in sims]
        )
        prometheus.wait_for("polca_gpu_power_watts", count=16)
        environment = Env(
            cluster,
            nodes,
            prometheus,
            kubernetes.client.CustomObjectsApi(client),
            kubernetes.client.CoreV1Api(client),
            sims,
        )
        try:
            yield environment
        finally:
            environment.prometheus.stop()
            cluster.kubectl(
                "delete",
                "pod",
                "-n",
                "default",
                pod["metadata"]["name"],
                "--wait=false",
                check=False,
            )
            release_finalizers(cluster)


@pytest.fixture
def start_operator(env: Env, tmp_path: Path) -> Iterator[Callable[..., OperatorHandle]]:
    started: list[OperatorHandle] = []

    def start(*extra: str, name: str = "operator") -> OperatorHandle:
        operator = start_operator_process(
            env.cluster.kubeconfig,
            tmp_path / f"{name}.log",
            extra=["--telemetry-timeout", "1", "--restore-wait", "5", *extra],
        )
        started.append(operator)
        eventually("operator /healthz", lambda: operator_healthy(operator.metrics_port), 30)
        return operator

    yield start
    for operator in started:
        operator.stop()


@pytest.fixture
def domain(env: Env, unique_name: Names) -> Iterator[str]:
    """A fresh domain label on both nodes, idle load; afterwards nobody selects them."""
    value = unique_name("d")[-63:].strip("-")
    env.settle_idle()
    for sim in env.sims:
        env.nodes.label_node(sim.name, {DOMAIN_LABEL: value})
    yield value
    for sim in env.sims:
        env.nodes.label_node(sim.name, {DOMAIN_LABEL: "none"})


def stages(stage1: tuple[float, float] = (80, 75)) -> list[dict[str, Any]]:
    """POLCA's default stages with stage 1's trigger and release replaced."""
    out = [s.to_wire() for s in DEFAULT_STAGES]
    out[1]["triggerPercent"], out[1]["releasePercent"] = stage1
    return out


def apply_policy(env: Env, name: str, domain: str, **spec: Any) -> None:
    policy = {
        "apiVersion": "polca.dev/v1alpha1",
        "kind": "PowerPolicy",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {DOMAIN_LABEL: domain}},
            "budgetWatts": BUDGET_W,
            "telemetry": {
                "source": "prometheus",
                "prometheusURL": env.prometheus.url,
                "stalenessSeconds": 3,
                "directFallback": False,
            },
            "settleSeconds": 5,
            "holdSeconds": 5,
            **spec,
        },
    }
    env.cluster.kubectl("apply", "-f", "-", input=json.dumps(policy))


@pytest.fixture
def policy(env: Env, unique_name: Names) -> Iterator[str]:
    name = unique_name("pp")
    yield name
    env.cluster.kubectl(
        "delete", "powerpolicy", name, "--ignore-not-found", "--wait=false", check=False
    )
    release_finalizers(env.cluster)


class Sampler:
    """Samples the policy's stage and the GPUs' ceilings in the background."""

    def __init__(self, env: Env, policy: str) -> None:
        self.env, self.policy = env, policy
        self.stages: list[str | None] = []
        self.ceilings: list[list[list[int | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.stages.append(self.env.stage(self.policy))
            self.ceilings.append(self.env.ceilings())


def test_load_up_throttles_idle_gpus_and_releases_after_the_hold(
    env: Env, domain: str, policy: str, start_operator: Callable[..., OperatorHandle]
) -> None:
    operator = start_operator()
    apply_policy(env, policy, domain)
    eventually(
        "stage normal, Ready",
        lambda: (
            env.stage(policy) == "normal"
            and env.condition(policy, "Ready") == ("True", "Enforcing")
        ),
    )
    assert env.ceilings() == UNCAPPED

    env.set_load(BUSY_LOAD)
    eventually("stage1", lambda: env.stage(policy) == "stage1", 30)
    eventually(
        "idle GPUs at stage 1's ceiling, high tier untouched",
        lambda: env.ceilings() == stage1_ceilings(),
    )
    entered = env.status(policy)["stageSince"]
    # Stage 1 keeps 90% of max clock, where decode sheds about a tenth (the power model): the
    # capped GPUs draw less than the high tier's under the same load, though not enough at
    # this load to leave the stage.
    eventually(
        "capped GPUs below the high tier's power",
        lambda: less_than(env.power_by_tier_w(), "idle", 0.95, "high"),
        30,
    )

    env.set_load(IDLE_LOAD)
    eventually("released to normal", lambda: env.stage(policy) == "normal", 30)
    released = env.status(policy)["stageSince"]
    held_s = _seconds(released) - _seconds(entered)
    assert held_s >= 5, f"released {held_s} s after entering stage1, hold is 5 s"
    eventually("clocks unlocked", lambda: env.ceilings() == UNCAPPED)

    events = env.events(policy)
    escalated = [m for r, m in events if r == "StageEscalated"]
    assert any(m.startswith("normal → stage1") and "of 7000 W" in m for m in escalated)
    assert any(r == "StageReleased" for r, _ in events)
    described = env.cluster.kubectl("describe", "powerpolicy", policy).stdout
    assert "StageEscalated" in described, described  # `kubectl describe` finds the events
    assert "polca-operator" in described
    assert operator.metric("polca_domain_budget_watts", policy=policy) == BUDGET_W


def test_prometheus_lost_falls_back_to_direct_then_failsafe(
    env: Env, domain: str, policy: str, start_operator: Callable[..., OperatorHandle]
) -> None:
    operator = start_operator()
    apply_policy(
        env,
        policy,
        domain,
        telemetry={
            "source": "prometheus",
            "prometheusURL": env.prometheus.url,
            "stalenessSeconds": 3,
            "directFallback": True,
        },
    )
    eventually("stage normal", lambda: env.stage(policy) == "normal")
    env.prometheus.stop()
    try:
        failed = "polca_telemetry_errors_total"
        eventually(
            "Prometheus reads fail",
            lambda: (operator.metric(failed, policy=policy, source="prometheus") or 0) > 0,
            20,
        )
        # Past twice the 3 s staleness limit (1 s cycles): the daemons answered directly.
        with Sampler(env, policy) as sampler:
            cycles = operator.decisions(policy)
            eventually("7 cycles", lambda: operator.decisions(policy) >= cycles + 7, 30)
        assert set(sampler.stages) == {"normal"}, operator.log_tail()
        assert env.condition(policy, "TelemetryStale") == ("False", "FreshPower")

        apply_policy(env, policy, domain)  # the same, without the direct fallback
        eventually("failsafe stage", lambda: env.stage(policy) == "stage2", 20)
        assert env.condition(policy, "TelemetryStale") == ("True", "NoFreshPower")
        eventually(
            "idle GPUs at the failsafe ceiling", lambda: env.ceilings()[1] == [STAGE2_MHZ] * 8
        )
    finally:
        env.restart_prometheus()
    recovers(env, policy)


def recovers(env: Env, policy: str) -> None:
    """Fresh power again, and the failsafe stage released step by step."""
    eventually(
        "fresh telemetry",
        lambda: env.condition(policy, "TelemetryStale") == ("False", "FreshPower"),
        30,
    )
    eventually("released step by step to normal", lambda: env.stage(policy) == "normal", 40)


def test_direct_streams_escalate_before_the_interval_ends(
    env: Env, domain: str, policy: str, start_operator: Callable[..., OperatorHandle]
) -> None:
    """The default telemetry: the operator holds each daemon's power stream, and a sample that
    takes the domain over stage 1's trigger runs a cycle at once. The interval here is 60 s: a
    stage change within it can only come from that early cycle."""
    operator = start_operator()
    applied_s = time.monotonic()
    apply_policy(env, policy, domain, telemetry={"stalenessSeconds": 3},
                 controlIntervalSeconds=60)  # fmt: skip
    eventually("stage normal from streamed power", lambda: (
        env.stage(policy) == "normal"
        and env.condition(policy, "TelemetryStale") == ("False", "FreshPower")
    ))  # fmt: skip
    env.set_load(BUSY_LOAD)
    eventually("stage1", lambda: env.stage(policy) == "stage1", 30)
    assert time.monotonic() - applied_s < 60, "stage 1 came only with the interval's cycle"
    assert (operator.metric("polca_early_cycles_total", policy=policy) or 0) >= 1
    eventually("idle GPUs capped", lambda: env.ceilings() == stage1_ceilings())


def test_stopped_daemons_make_streamed_power_stale_then_streams_reconnect(
    env: Env, domain: str, policy: str, start_operator: Callable[..., OperatorHandle]
) -> None:
    """Safety rule 2 with direct telemetry: a stream that ends (its daemon stopped) is no
    power, not the last power forever; the streams come back with the daemons."""
    start_operator()
    apply_policy(env, policy, domain, telemetry={"stalenessSeconds": 3})
    eventually("stage normal", lambda: env.stage(policy) == "normal")
    for sim in env.sims:
        sim.stop_daemon()
    try:
        eventually("failsafe stage", lambda: env.stage(policy) == "stage2", 30)
        assert env.condition(policy, "TelemetryStale") == ("True", "NoFreshPower")
    finally:
        for sim in env.sims:
            sim.start_daemon()
    recovers(env, policy)


def hold_stage1(env: Env, policy: str, domain: str) -> None:
    """The policy at stage 1 with its ceilings applied, held there by a long hold alone."""
    apply_policy(env, policy, domain, holdSeconds=600)
    env.set_load(BUSY_LOAD)
    eventually("stage1", lambda: env.stage(policy) == "stage1", 30)
    eventually("ceilings applied", lambda: env.ceilings() == stage1_ceilings())
    env.set_load(IDLE_LOAD)  # power falls far below release: only the hold keeps stage1


def test_operator_restart_mid_stage_never_uncaps(
    env: Env, domain: str, policy: str, start_operator: Callable[..., OperatorHandle]
) -> None:
    first = start_operator(name="first")
    hold_stage1(env, policy, domain)

    with Sampler(env, policy) as sampler:
        first.stop()
        eventually("the first operator is gone", lambda: not first.alive(), 10)
        gap = len(sampler.stages)
        eventually("sampled while no operator ran", lambda: len(sampler.stages) >= gap + 5, 10)
        second = start_operator(name="second")
        eventually(
            "the new operator runs the loop",
            lambda: second.metric("polca_domain_stage", policy=policy) == 1,
            30,
        )
        started = second.decisions(policy)
        eventually(
            "the new operator decided several times",
            lambda: second.decisions(policy) >= started + 3,
            30,
        )
    assert sampler.stages, "sampled"
    assert set(sampler.stages) == {"stage1"}, second.log_tail()
    assert all(c == stage1_ceilings() for c in sampler.ceilings)


def test_policy_update_changes_thresholds(
    env: Env, domain: str, policy: str, start_operator: Callable[..., OperatorHandle]
) -> None:
    start_operator()
    env.set_load({"decode": 0.6})
    apply_policy(env, policy, domain)
    eventually("stage normal", lambda: env.stage(policy) == "normal")
    eventually(
        "utilisation settles", lambda: 45 < env.status(policy).get("utilizationPercent", 0) < 75, 30
    )

    apply_policy(env, policy, domain, stages=stages((40, 35)))
    eventually("stage1 under the lower trigger", lambda: env.stage(policy) == "stage1", 20)
    assert env.status(policy)["observedGeneration"] == 2
    eventually("ceilings applied", lambda: env.ceilings() == stage1_ceilings())

    apply_policy(env, policy, domain, stages=stages((88, 83)))
    eventually("released under the higher release", lambda: env.stage(policy) == "normal", 30)
    assert env.status(policy)["observedGeneration"] == 3


def test_invalid_update_keeps_the_stage(
    env: Env, domain: str, policy: str, start_operator: Callable[..., OperatorHandle]
) -> None:
    start_operator()
    apply_policy(env, policy, domain, holdSeconds=600)
    env.set_load(BUSY_LOAD)
    eventually("stage1", lambda: env.stage(policy) == "stage1", 30)
    # Valid for the schema, refused by the operator: overhead alone exceeds the budget.
    apply_policy(
        env, policy, domain, holdSeconds=600, nodePower={"source": "gpu", "overheadWatts": 4000}
    )
    eventually(
        "Ready=False", lambda: env.condition(policy, "Ready") == ("False", "OverheadExceedsBudget")
    )
    assert env.stage(policy) in ("stage1", "stage2", "stage3", "brake")
    assert env.ceilings()[1] != [None] * 8


@pytest.fixture
def newer_crd(env: Env) -> Iterator[None]:
    with newer_powerpolicy_crd(env.cluster, REPO / "crds" / "powerpolicies.polca.dev.yaml"):
        yield


def patch_spec(env: Env, policy: str, spec: dict[str, Any]) -> None:
    env.cluster.kubectl(
        "patch", "powerpolicy", policy, "--type=merge", "-p", json.dumps({"spec": spec})
    )


def test_restarted_operator_reads_stored_data_and_never_drops_the_stage(
    env: Env,
    domain: str,
    policy: str,
    start_operator: Callable[..., OperatorHandle],
    newer_crd: None,
) -> None:
    """Safety rule 6 (issue 12, finding 1): what the server stores is read; what cannot be read
    is not a deleted policy: the stage stays, no GPU is uncapped, Ready=False says why."""
    first = start_operator(name="first")
    hold_stage1(env, policy, domain)
    near = stages()
    # The same ceiling in MHz, as `kubectl patch` may store it: the GPUs keep what they have.
    near[1]["actions"]["idle"] = {"clockCeilingMHz": STAGE1_MHZ + 0.000001}
    patch_spec(env, policy, {"stages": near, FUTURE_FIELD: "on"})
    eventually("generation 2 read", lambda: env.status(policy).get("observedGeneration") == 2)

    with BackgroundSampler(lambda: (env.stage(policy), env.ceilings())) as sampler:
        first.stop()
        second = start_operator(name="second")
        eventually(
            "the restarted operator runs the loop on the stored spec",
            lambda: second.metric("polca_domain_stage", policy=policy) == 1,
            30,
        )
        assert env.condition(policy, "Ready") == ("True", "Enforcing")

        # A value this version refuses (the newer CRD allows it): unknown, not deleted.
        patch_spec(env, policy, {"budgetWatts": SKEWED_BUDGET_W})
        eventually(
            "Ready=False", lambda: env.condition(policy, "Ready") == ("False", "InvalidSpec")
        )
        second.stop()
        third = start_operator(name="third")
        eventually(
            "the third operator refuses the spec",
            lambda: "InvalidSpec" in third.log_path.read_text(),
        )
        assert env.condition(policy, "Ready") == ("False", "InvalidSpec")
        assert third.metric("polca_domain_stage", policy=policy) is None  # no plan, no decision
    patch_spec(env, policy, {"budgetWatts": BUDGET_W})  # valid again under the checked-in CRD

    assert {stage for stage, _ in sampler.values} == {"stage1"}
    assert all(ceilings == stage1_ceilings() for _, ceilings in sampler.values)
    reasons = {reason for reason, _ in env.events(policy)}
    assert "DefaultsRestored" not in reasons


def test_selector_matching_no_node_is_not_ready(
    env: Env, policy: str, start_operator: Callable[..., OperatorHandle]
) -> None:
    # The schema cannot know the cluster's nodes: the operator says so in a condition.
    start_operator()
    apply_policy(env, policy, "no-node-has-this-label")
    eventually(
        "Ready=False", lambda: env.condition(policy, "Ready") == ("False", "NoNodesSelected")
    )


def test_standby_takes_over_after_a_crash_without_uncapping(
    env: Env,
    domain: str,
    policy: str,
    unique_name: Names,
    start_operator: Callable[..., OperatorHandle],
) -> None:
    peering = unique_name("peering")
    env.cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": peering},
            }
        ),
    )
    try:
        args = ("--peering", peering, "--peering-lifetime", "6")
        active = start_operator(*args, name="active")
        apply_policy(env, policy, domain, holdSeconds=600)
        # The loop runs once it has published a stage for the policy, whichever stage that is.
        eventually(
            "the active replica runs the loop",
            lambda: active.metric("polca_domain_stage", policy=policy) is not None,
        )
        standby = start_operator(*args, name="standby")
        eventually("both replicas in the peering", lambda: env.peers(peering) == 2, 30)

        env.set_load(BUSY_LOAD)
        eventually("stage1", lambda: env.stage(policy) == "stage1", 30)
        eventually("ceilings applied", lambda: env.ceilings() == stage1_ceilings())
        # The standby saw the peering and the policy all this while and must not have run it.
        assert standby.metric("polca_domain_stage", policy=policy) is None, "standby is paused"
        with Sampler(env, policy) as sampler:
            active.kill()
            eventually(
                "the standby took over at stage 1",
                lambda: standby.metric("polca_domain_stage", policy=policy) == 1,
                40,
            )
            decisions = standby.decisions(policy)
            eventually(
                "the standby decides every cycle now",
                lambda: standby.decisions(policy) >= decisions + 3,
                30,
            )
        assert set(sampler.stages) == {"stage1"}, standby.log_tail()
        assert all(c == stage1_ceilings() for c in sampler.ceilings)
    finally:
        env.cluster.kubectl("delete", "clusterkopfpeering", peering, "--wait=false", check=False)


def test_deleting_the_policy_records_the_restore(
    env: Env, domain: str, policy: str, start_operator: Callable[..., OperatorHandle]
) -> None:
    start_operator()
    apply_policy(env, policy, domain, holdSeconds=600)
    env.set_load(BUSY_LOAD)
    eventually("ceilings applied", lambda: env.ceilings() == stage1_ceilings(), 40)
    meta = env.api.get_cluster_custom_object("polca.dev", "v1alpha1", "powerpolicies", policy)
    assert RESTORE_FINALIZER in meta["metadata"]["finalizers"]

    env.cluster.kubectl("delete", "powerpolicy", policy, "--wait=false")
    eventually("the daemons restored the defaults", lambda: env.ceilings() == UNCAPPED, 30)
    eventually("the policy is gone", lambda: not env.exists(policy), 30)
    # The daemons drop a policy as soon as its deletion starts, so the finalizer sees every
    # node confirm well within the 5 s restore wait.
    reasons = {r for r, _ in env.events(policy)}
    assert "DefaultsRestored" in reasons
    assert "RestoreIncomplete" not in reasons


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
