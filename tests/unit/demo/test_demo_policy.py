"""The demo's PowerPolicy sizing and its Kubernetes objects, checked with the real models."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import ValidationError

from polca.api.convert import tier_set_from_spec
from polca.api.powerpolicy import PowerPolicy
from polca.control.tiers import PodFacts, resolve_tier
from polca.power.profiles import get_profile
from polca.sim.domain import TIER_HIGH, TIER_LOW, TIER_TRAIN
from polca_testbed.demo import objects
from polca_testbed.demo.policy import (
    DOMAIN_LABEL,
    budget_w,
    demo_policy,
    load_policy_file,
    stage_lines,
)
from polca_testbed.demo.run import telemetry_source
from polca_testbed.prometheus import PrometheusError

REPO = Path(__file__).resolve().parents[3]
DEFAULT_POLICY = REPO / "examples" / "polca-default.yaml"
A100 = get_profile("A100-80GB")


def sized(document: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "name": "demo",
        "budget_watts": 20_000.0,
        "telemetry": "direct",
    }
    arguments.update(overrides)
    return demo_policy(document or load_policy_file(DEFAULT_POLICY), **arguments)


def test_budget_provisions_the_base_servers_only() -> None:
    # 13 nodes at +30%: the budget is that of 10 servers of 8 GPUs at 400 W.
    assert budget_w(A100, nodes=13, gpus=8, oversubscription=0.3) == pytest.approx(32_000.0)
    assert budget_w(A100, nodes=4, gpus=2, oversubscription=0.0) == pytest.approx(3_200.0)
    with pytest.raises(ValueError, match="oversubscription"):
        budget_w(A100, nodes=4, gpus=2, oversubscription=-0.1)


def test_policy_selects_the_demo_nodes_with_the_demo_budget() -> None:
    policy = sized()
    spec = policy["spec"]
    assert policy["metadata"] == {"name": "demo"}
    assert spec["nodeSelector"] == {"matchLabels": {DOMAIN_LABEL[0]: DOMAIN_LABEL[1]}}
    assert spec["budgetWatts"] == 20_000.0
    assert spec["telemetry"]["source"] == "direct"
    assert "prometheusURL" not in spec["telemetry"]
    # The file's own choices stay: stages, tiers, guard, staleness.
    original = load_policy_file(DEFAULT_POLICY)["spec"]
    assert spec["guard"] == original["guard"]
    assert spec["stages"] == original["stages"]
    assert spec["tiers"] == original["tiers"]
    assert spec["telemetry"]["stalenessSeconds"] == original["telemetry"]["stalenessSeconds"]
    PowerPolicy.model_validate(policy)


def test_prometheus_telemetry_gets_its_url() -> None:
    policy = sized(telemetry="prometheus", prometheus_url="http://127.0.0.1:9090")
    assert policy["spec"]["telemetry"]["source"] == "prometheus"
    assert policy["spec"]["telemetry"]["prometheusURL"] == "http://127.0.0.1:9090"


def test_a_guard_budget_in_the_file_is_kept() -> None:
    document = {"kind": "PowerPolicy", "spec": {"guard": {"nodeBudgetWatts": 999.0}}}
    assert sized(document)["spec"]["guard"]["nodeBudgetWatts"] == 999.0


def test_the_input_document_is_not_changed() -> None:
    document = load_policy_file(DEFAULT_POLICY)
    before = repr(document)
    sized(document)
    assert repr(document) == before


def test_a_cluster_wide_file_is_aimed_at_the_demo_nodes_only() -> None:
    document = {"kind": "PowerPolicy", "spec": {"allNodes": True, "budgetWatts": 1}}
    spec = sized(document)["spec"]
    assert "allNodes" not in spec
    assert spec["nodeSelector"] == {"matchLabels": {DOMAIN_LABEL[0]: DOMAIN_LABEL[1]}}


def test_invalid_results_are_refused() -> None:
    document = {"kind": "PowerPolicy", "spec": {"stages": [{"name": "only"}]}}
    with pytest.raises(ValidationError):
        sized(document)


def test_load_policy_file_needs_a_powerpolicy(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("kind: ConfigMap\n---\nkind: Secret\n")
    with pytest.raises(ValueError, match="no PowerPolicy"):
        load_policy_file(path)


def test_stage_lines_fill_in_defaults() -> None:
    minimal = {"kind": "PowerPolicy", "spec": {}}
    lines = stage_lines(sized(minimal))
    assert lines[0].trigger_pct is None
    assert [line.index for line in lines] == list(range(len(lines)))
    triggers = [line.trigger_pct for line in lines[1:] if line.trigger_pct is not None]
    assert len(triggers) == len(lines) - 1
    assert triggers == sorted(triggers)  # escalation order
    assert stage_lines(sized()) == lines  # the example spells the defaults out


@pytest.mark.parametrize(
    ("workload", "priority", "tier"),
    [(TIER_HIGH, None, "high"), (TIER_LOW, -1, "low"), (TIER_TRAIN, None, "low")],
)
def test_pods_land_in_their_tier_under_the_default_rules(
    workload: str, priority: int | None, tier: str
) -> None:
    pod = objects.pod(workload, "demo-01", 8)
    if workload == TIER_LOW:
        # The API server's Priority admission turns the class into spec.priority.
        assert pod["spec"]["priorityClassName"] == objects.LOW_PRIORITY_CLASS
        assert objects.priority_class()["value"] == priority
    facts = PodFacts(
        namespace=pod["metadata"]["namespace"],
        name=pod["metadata"]["name"],
        labels=pod["metadata"]["labels"],
        priority=priority,
    )
    spec = PowerPolicy.model_validate(sized()).spec
    assert resolve_tier(tier_set_from_spec(spec), facts) == tier


def test_pods_are_bound_and_hold_every_gpu() -> None:
    pod = objects.pod(TIER_TRAIN, "demo-03", 4)
    assert pod["spec"]["nodeName"] == "demo-03"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert pod["metadata"]["name"] == objects.pod_name(TIER_TRAIN, "demo-03")
    with pytest.raises(ValueError, match="unknown workload"):
        objects.pod("batch", "demo-01", 1)


@pytest.mark.parametrize(
    ("wanted", "installed", "source", "runs_prometheus"),
    [
        ("auto", True, "direct", True),  # the product's default: streams, Prometheus fallback
        ("auto", False, "direct", False),
        ("direct", True, "direct", False),
        ("prometheus", True, "prometheus", True),
    ],
)
def test_auto_telemetry_is_the_default_direct_with_prometheus_when_installed(
    wanted: Literal["auto", "prometheus", "direct"],
    installed: bool,
    source: str,
    runs_prometheus: bool,
) -> None:
    assert telemetry_source(wanted, prometheus_installed=installed) == (source, runs_prometheus)


def test_direct_telemetry_keeps_the_demo_prometheus_as_its_fallback() -> None:
    spec = sized(prometheus_url="http://127.0.0.1:9090")["spec"]
    assert spec["telemetry"]["source"] == "direct"
    assert spec["telemetry"]["prometheusURL"] == "http://127.0.0.1:9090"


def test_asking_for_a_missing_prometheus_is_an_error() -> None:
    with pytest.raises(PrometheusError, match="make prometheus"):
        telemetry_source("prometheus", prometheus_installed=False)
