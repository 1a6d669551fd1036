"""API server outages on the real control plane, with real `polca-node` daemons over fake GPUs
(issue 12, findings 2 and 3). The operator is not running: the tests write the policy's status
as it would. Each test stops the session's API server (etcd keeps running) and starts it again
before it ends, whatever happens.

- a daemon restarted while the API server is down resumes its guard and its holds from its
  node-local checkpoint: the guard throttles within its period and no limit is ever lifted,
  checked on the fake GPUs every 20 ms, not only at the end;
- after an outage, a stage change reaches the GPUs within the bound the issue sets (2 s after
  the server answers again; asserted with room for this shared machine, measured and printed).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from polca_node.checkpoint import CHECKPOINT_FILE
from polca_node.kube_client import KubeClient
from polca_testbed.cluster import Cluster
from polca_testbed.default_clocks import applied_ceiling_mhz
from polca_testbed.kube_objects import POWER_POLICIES, ready_reason, set_stage, try_set_stage
from polca_testbed.nodes import SimNode, SimNodes
from polca_testbed.polling import eventually

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOMAIN_LABEL = "polca.dev/test-domain"
GUARD_PERIOD_S = 0.5
# From the daemon's resume (its log line) to a tighter limit on the GPUs: the first sample or
# the next one (a reconcile may come first), plus the write; 4 periods leave room for the
# loaded machine. The daemon's start-up before that (imports, fake NVML) is not counted.
GUARD_BOUND_S = 4 * GUARD_PERIOD_S
# Issue 12: a change must reach the GPUs <= 2 s after the server answers again. Asserted with
# 2 s of room for a loaded 2-core machine; the measured figure is printed.
RECOVERY_ISSUE_BOUND_S = 2.0
RECOVERY_ASSERT_S = RECOVERY_ISSUE_BOUND_S + 2.0
OUTAGE_S = 10.0
# What the default (GPU-relative) stages lock the fake H100s at: from the plan and the GPU.
STAGE1_MHZ = applied_ceiling_mhz("stage1", "idle", "H100-SXM")
STAGE2_MHZ = applied_ceiling_mhz("stage2", "idle", "H100-SXM")
LOADED = {"prefill": 1.0}  # 4 x ~700 W: far above a 1.2 kW guard trigger


@pytest.fixture
def outage(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, whose API server the test may stop: it is running again afterwards. Ask
    for it last, so it is torn down first and the other fixtures clean up through the API."""
    yield cluster
    if "kube-apiserver" not in cluster.pids:
        cluster.start_apiserver()
    eventually("the API server to be ready again", cluster.ready, timeout_s=90)


def create_guarded_policy(api: KubeClient, name: str, domain: str) -> None:
    """A policy whose guard triggers at 1.2 kW per node (as in the issue's finding)."""
    api.request("POST", POWER_POLICIES, body={
        "apiVersion": "polca.dev/v1alpha1", "kind": "PowerPolicy",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {DOMAIN_LABEL: domain}},
            "budgetWatts": 100000,
            "guard": {"nodeBudgetWatts": 1000, "triggerPercent": 120, "releasePercent": 110},
        },
    })  # fmt: skip


def checkpointed_stage(node: SimNode) -> str | None:
    try:
        document = json.loads((node.state_dir / CHECKPOINT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return next((a.get("stage") for a in document.get("applied") or ()), None)


class GpuSampler:
    """Reads the fake GPUs' knobs every 20 ms in a thread: (time, ceilings, power limits)."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.samples: list[tuple[float, list[int | None], list[float | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            gpus = self.node.fake_state().get("gpus")
            if gpus:  # an unreadable moment is no sample (the file is replaced atomically)
                ordered = sorted(gpus, key=lambda g: g["index"])
                self.samples.append((
                    time.time(),  # wall clock: compared with the daemon's log times
                    [g.get("clock_ceiling_mhz") for g in ordered],
                    [g.get("power_limit_w") for g in ordered],
                ))  # fmt: skip
            self._stop.wait(0.02)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def first_time(self, check: Callable[[list[int | None]], bool], after_s: float) -> float | None:
        """When a sample first passed `check` (None: none has yet; the thread may lag)."""
        samples = list(self.samples)
        return next((t for t, ceilings, _ in samples if t >= after_s and check(ceilings)), None)

    def lifted(self) -> list[str]:
        """Every moment a GPU lost a clock ceiling or got a higher one, or a higher power limit."""
        found = []
        for (_, c0, p0), (t1, c1, p1) in zip(self.samples, self.samples[1:], strict=False):
            for gpu, (before, after) in enumerate(zip(c0, c1, strict=True)):
                if before is not None and (after is None or after > before):
                    found.append(f"t={t1:.2f} GPU {gpu} ceiling {before} -> {after}")
            for gpu, (before_w, after_w) in enumerate(zip(p0, p1, strict=True)):
                if before_w is not None and after_w is not None and after_w > before_w:
                    found.append(f"t={t1:.2f} GPU {gpu} power limit {before_w} -> {after_w}")
        return found


def log_time(path: Path, fragment: str) -> float:
    """When the daemon logged its first line containing `fragment` (Unix time)."""
    line = next(line for line in path.read_text().splitlines() if fragment in line)
    # logging's asctime: local time, milliseconds after a comma; naive on purpose (same host).
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # noqa: DTZ007


def test_restart_during_an_outage_resumes_the_guard_from_the_checkpoint(
    api: KubeClient, sim: SimNodes, cleanup: Callable[..., None],
    unique_name: Callable[[str], str], outage: Cluster,
) -> None:  # fmt: skip
    domain, policy = unique_name("dom"), unique_name("policy")
    cleanup(f"powerpolicy/{policy}")
    node = sim.add(unique_name("gpu"), labels={DOMAIN_LABEL: domain}, profile="H100-SXM:4",
                   guard_period_s=GUARD_PERIOD_S)  # fmt: skip
    create_guarded_policy(api, policy, domain)
    set_stage(api, policy, "stage1", 1)
    eventually("stage 1 on the GPUs", lambda: node.clock_ceilings_mhz() == [STAGE1_MHZ] * 4, 30)
    eventually("stage 1 in the checkpoint", lambda: checkpointed_stage(node) == "stage1", 30)

    # The API server goes down; the daemon dies and is started again while it is down, with
    # the node's load far above the guard's 1.2 kW trigger.
    outage.stop_apiserver()
    node.stop_daemon()
    node.set_load(LOADED)
    with GpuSampler(node) as sampler:
        node.start_daemon()  # returns once /healthz answers
        eventually(
            "the daemon to resume from its checkpoint",
            lambda: "resuming from the checkpoint" in node.daemon_log.read_text(), 30,
        )  # fmt: skip
        resumed_s = log_time(node.daemon_log, "resuming from the checkpoint")
        eventually(
            "the guard to throttle from the checkpoint",
            lambda: any(c is not None and c < STAGE1_MHZ for c in node.clock_ceilings_mhz()),
            timeout_s=15, interval_s=0.02,
        )  # fmt: skip
        throttled = lambda c: any(x is not None and x < STAGE1_MHZ for x in c)  # noqa: E731
        # The sampler thread may be a sample behind the check above (a loaded machine).
        throttled_s = float(  # eventually returns only a found (truthy) time
            eventually("the sampler to see it", lambda: sampler.first_time(throttled, 0), 5) or 0
        )
        # Keep the outage (and the sampling) going a while: the guard climbs, nothing lifts.
        eventually(
            "two more seconds of sampling in the outage",
            lambda: time.time() - throttled_s >= 2.0, timeout_s=10,
        )  # fmt: skip
        assert not outage.ready()  # the API server was down for the whole restart
    print(
        f"guard throttled {throttled_s - resumed_s:.2f} s after the restarted daemon resumed "
        f"from its checkpoint (API server down); {len(sampler.samples)} GPU samples"
    )
    assert throttled_s - resumed_s <= GUARD_BOUND_S
    assert sampler.lifted() == []
    assert all(c is not None for c in sampler.samples[0][1])  # stage 1 held from the start
    log = node.daemon_log.read_text()
    assert "resuming from the checkpoint" in log
    assert "guard of " in log

    # The API server returns: the daemon reports, enforcing again, the guard's limits kept.
    outage.start_apiserver()
    eventually("the daemon to report again", lambda: ready_reason(api, node.name) == "Enforce", 60)
    assert all(c is not None and c <= STAGE1_MHZ for c in node.clock_ceilings_mhz())


def test_a_stage_change_after_an_outage_reaches_the_gpus_within_the_bound(
    api: KubeClient, sim: SimNodes, cleanup: Callable[..., None],
    unique_name: Callable[[str], str], outage: Cluster,
) -> None:  # fmt: skip
    domain, policy = unique_name("dom"), unique_name("policy")
    cleanup(f"powerpolicy/{policy}")
    node = sim.add(unique_name("gpu"), labels={DOMAIN_LABEL: domain}, profile="H100-SXM:2")
    create_guarded_policy(api, policy, domain)
    set_stage(api, policy, "stage1", 1)
    eventually("stage 1 on the GPUs", lambda: node.clock_ceilings_mhz() == [STAGE1_MHZ] * 2, 30)

    outage.stop_apiserver()
    down_s = time.monotonic()
    log_before = node.daemon_log.read_text()
    # The outage lasts OUTAGE_S: long enough for a 30 s-capped backoff to have grown past 8 s.
    eventually(
        f"{OUTAGE_S:g} s of outage with the daemon's watches failing",
        lambda: time.monotonic() - down_s >= OUTAGE_S
        and "retrying in" in node.daemon_log.read_text()[len(log_before):],
        timeout_s=OUTAGE_S + 30,
    )  # fmt: skip
    outage.start_apiserver(wait=False)
    # "The server answers again": the first moment the policy can be written, polled every
    # 20 ms (readiness would come seconds later, and the daemons do not wait for it either).
    eventually(
        "the API server to take the stage change",
        lambda: try_set_stage(api, policy, "stage2", 2), timeout_s=90, interval_s=0.02,
    )  # fmt: skip
    answered_s = time.monotonic()
    eventually(
        "stage 2 on the GPUs", lambda: node.clock_ceilings_mhz() == [STAGE2_MHZ] * 2,
        timeout_s=30, interval_s=0.02,
    )  # fmt: skip
    reached_s = time.monotonic()
    print(
        f"after a {answered_s - down_s:.1f} s outage: stage change reached the GPUs "
        f"{reached_s - answered_s:.2f} s after the API server first answered (and took it)"
    )
    assert reached_s - answered_s <= RECOVERY_ASSERT_S
