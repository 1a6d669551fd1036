"""Every Grafana dashboard panel's PromQL against a live Prometheus scraping real daemons and
a real operator: each query returns data, and every series carries the labels its legend uses.

Two simulated nodes (fake NVML, fake kubelet, real `polca-node`), one with a high-tier pod, one
PowerPolicy, the real operator on Prometheus telemetry, Debian's Prometheus scraping all three.
The dashboard's variables (`$node`, `$policy`) are "All", i.e. the regex `.*`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from polca_testbed.cluster import Cluster
from polca_testbed.nodes import SimNodes
from polca_testbed.operators import operator_healthy, start_operator
from polca_testbed.polling import NotInTimeError, eventually
from polca_testbed.prometheus import Prometheus, start_prometheus

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "polca" / "files" / "dashboard.json"
PEERING_CRD = REPO / "testbed" / "polca_testbed" / "manifests" / "kopf-peering.yaml"
DOMAIN_LABEL = "polca.dev/dashboard-domain"
HIGH_GPUS = [0, 1]
WAIT_S = 60.0


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[str, str, set[str]]]:
    """(panel title, PromQL with the variables set to "All", labels the legend uses)."""
    found = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", ()))  # panels inside collapsed rows
        for target in panel.get("targets", ()):
            expr = re.sub(r"\$(node|policy)\b", ".*", target["expr"])
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            found.append((panel["title"], expr, legend))
    return found


@pytest.fixture
def live(
    cluster: Cluster,
    sim: SimNodes,
    unique_name: Callable[[str], str],
    cleanup: Callable[..., None],
    tmp_path: Path,
) -> Iterator[Prometheus]:
    """Daemons, an operator enforcing a policy, and Prometheus scraping all of them."""
    cluster.kubectl("apply", "-f", str(PEERING_CRD))
    domain, policy, pod = unique_name("dom"), unique_name("pp"), unique_name("llm")
    cleanup(f"powerpolicy/{policy}")
    cleanup(f"pod/{pod}", "default")
    nodes = [sim.add(unique_name("gpu"), labels={DOMAIN_LABEL: domain}, profile="H100-SXM:4")
             for _ in range(2)]  # fmt: skip
    nodes[0].assign_pod("default", pod, HIGH_GPUS)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": "default", "labels": {"polca.dev/tier": "high"}},
        "spec": {"nodeName": nodes[0].name, "containers": [{"name": "main", "image": "none"}]},
    }))  # fmt: skip
    prom = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{n.metrics_port}" for n in nodes])
    operator = start_operator(cluster.kubeconfig, tmp_path / "operator.log")
    try:
        eventually("operator /healthz", lambda: operator_healthy(operator.metrics_port), 30)
        prom.set_targets(
            [*(f"127.0.0.1:{n.metrics_port}" for n in nodes), f"127.0.0.1:{operator.metrics_port}"]
        )
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "polca.dev/v1alpha1", "kind": "PowerPolicy",
            "metadata": {"name": policy},
            "spec": {
                "nodeSelector": {"matchLabels": {DOMAIN_LABEL: domain}},
                "budgetWatts": 100000,
                "telemetry": {"source": "prometheus", "prometheusURL": prom.url,
                              "stalenessSeconds": 5, "directFallback": False},
            },
        }))  # fmt: skip
        # The daemons know the pod (tier "high") and the operator publishes the domain.
        prom.wait_for('polca_throttled_gpus{tier="high"}', timeout_s=WAIT_S)
        prom.wait_for(f'polca_domain_power_watts{{policy="{policy}"}}', timeout_s=WAIT_S)
        yield prom
    finally:
        operator.stop()
        prom.stop()
        # No operator is left to run the policy's finalizer: drop it so the policy goes.
        cluster.kubectl("patch", "powerpolicy", policy, "--type=merge",
                        "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip


def test_every_panel_returns_data_with_its_legend_labels(live: Prometheus) -> None:
    targets = panel_targets(json.loads(DASHBOARD.read_text()))
    assert len(targets) >= 10

    def missing() -> list[str]:
        problems = []
        for title, expr, legend in targets:
            result = live.query(expr)
            if not result:
                problems.append(f"{title}: {expr} returned no data")
            for series in result:
                absent = legend - {k for k, v in series["metric"].items() if v}
                if absent:
                    problems.append(f"{title}: {expr} lacks {sorted(absent)}: {series}")
        return problems

    problems: list[str] = []

    def complete() -> bool:
        problems[:] = missing()
        return not problems

    # rate() needs two scrapes of a counter; the operator's node report needs its first cycle.
    try:
        eventually("every panel's data", complete, WAIT_S)
    except NotInTimeError:
        pytest.fail("\n".join(problems))
    tiers = {s["metric"]["tier"] for s in live.query("sum by (tier) (polca_throttled_gpus)")}
    assert tiers == {"high", "idle"}, "one series per tier present, GPUs without a pod idle"
