"""The generated CRDs on a real kube-apiserver: examples, invalid input, explain, columns."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from polca.api.crdgen import KINDS
from polca.api.nodepowerstate import NodePowerState, NodePowerStateStatus
from polca.api.powerpolicy import PowerPolicy, PowerPolicyStatus
from polca_testbed.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
INVALID_CASES: list[dict[str, Any]] = yaml.safe_load(
    (REPO / "tests" / "unit" / "api" / "invalid_policies.yaml").read_text()
)
EXAMPLES = [
    pytest.param(doc, id=f"{path.stem}-{i}")
    for path in sorted((REPO / "examples").glob("*.yaml"))
    for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Apply = Callable[[str], subprocess.CompletedProcess[str]]
Names = Callable[[str], str]
Cleanup = Callable[..., None]


@pytest.fixture(scope="module", autouse=True)
def crds(cluster: Cluster) -> None:
    """Install the checked-in CRDs (what `make crds` wrote) and wait until they serve."""
    cluster.install_crds(REPO / "crds", names=[kind.crd_name for kind in KINDS])


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "polca.dev/v1alpha1",
        "kind": "PowerPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def get_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return result


def test_both_kinds_are_cluster_scoped_with_short_names(cluster: Cluster) -> None:
    resources = cluster.kubectl("api-resources", "--api-group=polca.dev", "-o", "wide").stdout
    rows = {line.split()[0]: line.split() for line in resources.splitlines()[1:]}
    assert rows["powerpolicies"][1:4] == ["pp", "polca.dev/v1alpha1", "false"]
    assert rows["nodepowerstates"][1:4] == ["nps", "polca.dev/v1alpha1", "false"]
    assert "polca" in rows["powerpolicies"][-1]  # categories


@pytest.mark.parametrize("doc", EXAMPLES)
def test_examples_are_accepted_and_round_trip(
    cluster: Cluster, apply: Apply, unique_name: Names, cleanup: Cleanup, doc: dict[str, Any]
) -> None:
    name = unique_name(doc["metadata"]["name"][:20])
    cleanup(f"powerpolicy/{name}")
    result = apply(json.dumps({**doc, "metadata": {"name": name}}))
    assert result.returncode == 0, result.stderr

    stored = get_json(cluster, "powerpolicy", name)
    # The apiserver's defaults are the models' defaults: the stored spec is the model's wire form.
    assert stored["spec"] == PowerPolicy.model_validate(doc).spec.to_wire()
    # And what the cluster serves parses and serialises back unchanged.
    assert PowerPolicy.model_validate(stored).to_wire() == stored


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c["id"] for c in INVALID_CASES])
def test_invalid_policies_are_rejected_naming_the_field(
    cluster: Cluster, apply: Apply, unique_name: Names, cleanup: Cleanup, case: dict[str, Any]
) -> None:
    name = unique_name("invalid")
    cleanup(f"powerpolicy/{name}")
    result = apply(json.dumps(policy(name, case["spec"])))
    assert result.returncode != 0, f"{case['id']} was accepted"
    for expected in (case["field"], *case.get("mentions", ())):
        assert expected in result.stderr, f"{case['id']}: {expected!r} not in {result.stderr}"
    missing = cluster.kubectl("get", "powerpolicy", name, check=False)
    assert missing.returncode != 0


def test_explain_teaches_the_stages(cluster: Cluster) -> None:
    explained = cluster.kubectl("explain", "powerpolicy.spec.stages").stdout
    flat = " ".join(explained.split())
    assert "Stages in escalation order" in flat
    assert (
        "stage1 at 80% (release 75%): idle, low at 90.43% (A100 1275 MHz, H100/H200 1790 MHz)"
        in flat
    )
    for field in ("triggerPercent", "releasePercent", "actions", "name"):
        assert f"{field}\t<" in explained or f"{field} <" in explained, field
    assert "the gap is the hysteresis" in flat
    action = " ".join(cluster.kubectl("explain", "powerpolicy.spec.stages.actions").stdout.split())
    assert "clockCeilingPercent" in action
    assert "percentage of the GPU's maximum SM clock" in action


def test_get_pp_shows_the_printer_columns(
    cluster: Cluster, apply: Apply, unique_name: Names, cleanup: Cleanup
) -> None:
    name = unique_name("columns")
    cleanup(f"powerpolicy/{name}")
    result = apply(json.dumps(policy(name, {"allNodes": True, "budgetWatts": 40000})))
    assert result.returncode == 0, result.stderr
    status = PowerPolicyStatus(
        stage="stage1",
        stage_index=1,
        stage_since=NOW,
        power_watts=32500.0,
        utilization_percent=81.25,
        node_count=5,
        gpu_count=40,
        throttled_gpu_count=12,
    ).with_condition("Throttling", "True", "StageEntered", "power at 81% of budget", now=NOW)
    cluster.kubectl(
        "patch", "powerpolicy", name, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status.to_wire()}),
    )  # fmt: skip

    table = cluster.kubectl("get", "pp", name).stdout.splitlines()
    assert table[0].split() == ["NAME", "NODES", "BUDGET", "POWER", "UTIL", "STAGE", "AGE"]
    assert table[1].split()[:6] == [name, "5", "40000", "32500", "81.25", "stage1"]

    stored = PowerPolicy.model_validate(get_json(cluster, "powerpolicy", name))
    assert stored.status == status


def test_status_keeps_kopf_fields_and_prunes_unknown_ones(
    cluster: Cluster, apply: Apply, unique_name: Names, cleanup: Cleanup
) -> None:
    name = unique_name("kopf")
    cleanup(f"powerpolicy/{name}")
    assert apply(json.dumps(policy(name, {"allNodes": True, "budgetWatts": 1000}))).returncode == 0
    kopf = {"progress": {"on_update": {"started": "2026-03-01T12:00:00Z", "retries": 1}}}
    # What Kopf sends: a merge patch of the status without field validation.
    patched = cluster.kubectl(
        "patch", "powerpolicy", name, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"kopf": kopf, "handlerResult": {"a": 1}}}),
    )  # fmt: skip
    assert 'unknown field "status.handlerResult"' in patched.stderr  # a warning, then pruned
    stored = get_json(cluster, "powerpolicy", name)
    assert stored["status"] == {"kopf": kopf}
    assert PowerPolicy.model_validate(stored).status == PowerPolicyStatus(kopf=kopf)


def test_strict_clients_get_an_error_for_unknown_status_fields(
    cluster: Cluster, apply: Apply, unique_name: Names, cleanup: Cleanup
) -> None:
    name = unique_name("strict")
    cleanup(f"powerpolicy/{name}")
    assert apply(json.dumps(policy(name, {"allNodes": True, "budgetWatts": 1000}))).returncode == 0
    stored = get_json(cluster, "powerpolicy", name)
    result = cluster.kubectl(
        "replace", "--subresource=status", "--validate=strict", "-f", "-",
        input=json.dumps({**stored, "status": {"stagee": "stage1"}}), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert 'unknown field "status.stagee"' in result.stderr


def test_node_power_state_columns_and_name_rule(
    cluster: Cluster, apply: Apply, unique_name: Names, cleanup: Cleanup
) -> None:
    node = unique_name("gpu-node")
    cleanup(f"nodepowerstate/{node}")
    state = NodePowerState.model_validate({"metadata": {"name": node}, "spec": {"nodeName": node}})
    assert apply(json.dumps(state.to_wire())).returncode == 0
    status = NodePowerStateStatus.model_validate(
        {
            "policies": [
                {"name": "hall-1", "stage": "normal"},
                {"name": "row-a", "stage": "stage2"},
            ],
            "gpuCount": 8,
            "throttledGpuCount": 3,
            "powerWatts": 4210.5,
            "heartbeatTime": datetime.now(UTC).isoformat(),
        }
    )
    cluster.kubectl(
        "patch", "nodepowerstate", node, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status.to_wire()}),
    )  # fmt: skip
    table = cluster.kubectl("get", "nps", node).stdout.splitlines()
    assert table[0].split() == [
        "NAME", "POLICY", "STAGE", "GPUS", "POWER", "THROTTLED", "HEARTBEAT",
    ]  # fmt: skip
    assert table[1].split()[:6] == [node, "hall-1,row-a", "normal,stage2", "8", "4210.5", "3"]
    stored = NodePowerState.model_validate(get_json(cluster, "nodepowerstate", node))
    assert stored.status == status

    other = unique_name("gpu-node")
    cleanup(f"nodepowerstate/{other}")
    wrong = apply(json.dumps({**state.to_wire(), "metadata": {"name": other}}))
    assert wrong.returncode != 0
    assert "spec.nodeName" in wrong.stderr


def test_the_polca_category_lists_both_kinds(
    cluster: Cluster, apply: Apply, unique_name: Names, cleanup: Cleanup
) -> None:
    name = unique_name("category")
    cleanup(f"powerpolicy/{name}")
    assert apply(json.dumps(policy(name, {"allNodes": True, "budgetWatts": 1000}))).returncode == 0
    listed = cluster.kubectl("get", "polca", "-o", "name").stdout.split()
    assert f"powerpolicy.polca.dev/{name}" in listed


def null_label_manifest(name: str, *, beside: str | None) -> str:
    """A manifest whose selector has `polca.dev/row:` with no value (a null) in YAML."""
    other = f"      rack: {beside}\n" if beside else ""
    return (
        "apiVersion: polca.dev/v1alpha1\nkind: PowerPolicy\n"
        f"metadata: {{name: {name}}}\nspec:\n  nodeSelector:\n    matchLabels:\n"
        f"{other}      polca.dev/row:\n  budgetWatts: 1000\n"
    )


WRITE_PATHS = [("create",), ("apply",), ("apply", "--server-side")]


def test_a_null_label_value_never_widens_the_domain(
    cluster: Cluster, apply: Apply, unique_name: Names, cleanup: Cleanup
) -> None:
    """Safety rule 7 (issue 12, finding 5): `key: ` never makes a wider domain, on any path."""
    # Alone, whatever drops the null leaves an empty selector: refused on every write path.
    for verb in WRITE_PATHS:
        name = unique_name("lone-null")
        cleanup(f"powerpolicy/{name}")
        lone = null_label_manifest(name, beside=None)
        result = cluster.kubectl(*verb, "-f", "-", input=lone, check=False)
        assert result.returncode != 0, f"{verb} accepted an empty selector"
        assert "spec.nodeSelector" in result.stderr

    # Beside another label: where the null reaches the server, the CRD keeps it and refuses it.
    for verb in (("create",), ("apply", "--server-side")):
        name = unique_name("null")
        cleanup(f"powerpolicy/{name}")
        result = cluster.kubectl(
            *verb, "-f", "-", input=null_label_manifest(name, beside="r1"), check=False
        )
        assert result.returncode != 0, f"{verb} accepted a null label value"
        assert "every label value must be a string" in result.stderr

    # Client-side `kubectl apply` drops the null itself: the server stores a wider selector...
    name = unique_name("null")
    cleanup(f"powerpolicy/{name}")
    assert apply(null_label_manifest(name, beside="r1")).returncode == 0
    stored = get_json(cluster, "powerpolicy", name)
    assert stored["spec"]["nodeSelector"] == {"matchLabels": {"rack": "r1"}}
    # ... which the operator and the daemons refuse to read as such (kubectl's annotation
    # keeps the null): the policy is unknown, so nothing is widened.
    with pytest.raises(ValidationError, match=r"kubectl apply dropped polca\.dev/row"):
        PowerPolicy.from_stored(stored)
