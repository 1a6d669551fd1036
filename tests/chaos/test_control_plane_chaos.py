"""The API server, then etcd, stopped under a running daemon and started again: the daemon keeps
every cap its policy demands through the outage and the relist after it, and a tighter stage
decided once the API answers again reaches the GPUs.

The outage lasts a seeded random 2-5 s: long enough for the watches to fail and back off, short
enough for the suite's time budget.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from polca_node.kube_client import KubeClient
from polca_testbed.cluster import Cluster
from polca_testbed.kube_objects import try_set_stage
from polca_testbed.limits_watch import LimitsWatch
from polca_testbed.polling import eventually
from polca_testbed.scenarios import BRAKE, TIGHTEN_GRACE_S, CappedNode

pytestmark = pytest.mark.timeout(120)
STOP_GRACE_S = 1.0


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_control_plane_outage_lifts_no_cap(
    component: str, api: KubeClient, capped_node: Callable[..., CappedNode],
    rng: random.Random, cluster_logs: Path, control_plane: Cluster,
) -> None:  # fmt: skip
    capped = capped_node()
    node = capped.node
    down_s = rng.uniform(2.0, 5.0)
    # A short grace: the API server would drain its watches for longer than the case lasts.
    stop, start = {
        "kube-apiserver": (control_plane.stop_apiserver, control_plane.start_apiserver),
        "etcd": (control_plane.stop_etcd, control_plane.start_etcd),
    }[component]
    with LimitsWatch([node], logs=[cluster_logs]) as watch:
        watch.demand(node, capped.decision.demand, why=capped.decision.stage)
        stop(grace_s=STOP_GRACE_S)
        stopped_s = time.monotonic()
        eventually(f"{down_s:.1f} s of outage", lambda: time.monotonic() - stopped_s >= down_s,
                   down_s + 5, interval_s=0.05)  # fmt: skip
        start()
        # The first moment the server takes the decision; the daemons must follow it.
        braked = lambda: try_set_stage(api, capped.policy, BRAKE.stage, BRAKE.index)  # noqa: E731
        eventually("the API server to take a tighter stage", braked, 90, interval_s=0.05)
        watch.demand(node, BRAKE.demand, grace_s=TIGHTEN_GRACE_S, why="brake after the outage")
        applied = [k.clock_ceiling_mhz for k in BRAKE.demand]
        eventually("the brake on the GPUs", lambda: node.clock_ceilings_mhz() == applied, 30,
                   interval_s=0.02)  # fmt: skip
    print(f"{component} down {down_s:.1f} s: {watch.assert_held()}")
