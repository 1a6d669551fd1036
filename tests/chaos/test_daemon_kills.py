"""The node daemon SIGKILLed at seeded random points of its life, again and again: in its
start-up (imports, NVML, the checkpoint, the first lists), in its first reconcile, and while a
stage change is being applied. No cap the policy demands is lifted at any moment, and the last
daemon enforces the last decision.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from polca_node.kube_client import KubeClient
from polca_testbed.kube_objects import ready_reason, set_stage
from polca_testbed.limits_watch import LimitsWatch
from polca_testbed.polling import eventually
from polca_testbed.scenarios import BRAKE, STAGE3, TIGHTEN_GRACE_S, CappedNode, Decision

pytestmark = pytest.mark.timeout(120)

KILLS = 4
# A daemon's start-up takes about 1-3 s here: kill points spread over it and a little beyond.
KILL_WITHIN_S = 3.0


def sleep_s(seconds: float) -> None:
    """Let the daemon run this long (the kill point), bounded and on purpose."""
    deadline = time.monotonic() + seconds
    eventually("the kill point", lambda: time.monotonic() >= deadline, seconds + 5,
               interval_s=0.01)  # fmt: skip


def test_daemon_sigkill_at_random_points_lifts_no_cap(
    api: KubeClient, capped_node: Callable[..., CappedNode], rng: random.Random,
    cluster_logs: Path,
) -> None:  # fmt: skip
    capped = capped_node()
    node = capped.node
    decisions = [STAGE3, BRAKE]
    current: Decision = capped.decision
    points = []
    with LimitsWatch([node], logs=[cluster_logs]) as watch:
        watch.demand(node, current.demand, why=current.stage)
        for _ in range(KILLS):
            point_s = rng.uniform(0.0, KILL_WITHIN_S)
            if rng.random() < 0.5:
                # A new decision just before the kill: the kill lands mid-actuation. Stage 3
                # and the brake alternate: a release (binds at once) and a tightening.
                current = decisions[1 - decisions.index(current)]
                set_stage(api, capped.policy, current.stage, current.index)
                watch.demand(node, current.demand, grace_s=TIGHTEN_GRACE_S + KILL_WITHIN_S,
                             why=f"{current.stage} before a kill")  # fmt: skip
                sleep_s(point_s)
                points.append(f"{current.stage}+{point_s:.2f}s")
            else:
                sleep_s(point_s)
                points.append(f"{point_s:.2f}s")
            node.kill_daemon()
            node.start_daemon(wait=False)
        # The last daemon (the only one alive) gets ready: it has listed and reconciled.
        eventually("the last daemon to be ready", node.daemon_ready, 60)
        applied = [k.clock_ceiling_mhz for k in current.demand]
        eventually("the last daemon to apply the last decision",
                   lambda: node.clock_ceilings_mhz() == applied, 30, interval_s=0.05)  # fmt: skip
        eventually("the last daemon to enforce",
                   lambda: ready_reason(api, node.name) == "Enforce", 30)  # fmt: skip
    print(f"kills after {', '.join(points)}: {watch.assert_held()}")
