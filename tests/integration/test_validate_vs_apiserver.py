"""`polca validate` agrees with the real API server (`kubectl apply --dry-run=server`).

Every example and every invalid manifest of the shared table goes through both; the verdicts
must be equal, and for invalid manifests polca must name the field the table names. Deliberate
disagreements: none today (the models mirror every CEL rule of the generated CRD); `polca
validate --nodes` adds the operator's semantic checks, which the API server does not make.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from polca.api.crdgen import KINDS
from polca_testbed.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
INVALID_CASES: list[dict[str, Any]] = yaml.safe_load(
    (REPO / "tests" / "unit" / "api" / "invalid_policies.yaml").read_text()
)
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
POLCA = [str(REPO / ".venv" / "bin" / "polca")]


@pytest.fixture(scope="module", autouse=True)
def crds(cluster: Cluster) -> None:
    cluster.install_crds(REPO / "crds", names=[kind.crd_name for kind in KINDS])


def polca_validate(path: Path) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [*POLCA, "validate", "-f", str(path), "--json"], capture_output=True, text=True, check=False
    )
    return result.returncode, json.loads(result.stdout)


def server_accepts(cluster: Cluster, path: Path) -> tuple[bool, str]:
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    return result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_valid_for_both(cluster: Cluster, path: Path) -> None:
    accepted, stderr = server_accepts(cluster, path)
    code, report = polca_validate(path)
    assert accepted, stderr
    assert code == 0, report
    assert all(d["valid"] for d in report["documents"])


def leaf(field_path: str) -> str:
    return re.sub(r"\[\d+\]$", "", field_path.rsplit(".", 1)[-1])


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c["id"] for c in INVALID_CASES])
def test_invalid_manifests_rejected_by_both(
    cluster: Cluster, tmp_path: Path, case: dict[str, Any]
) -> None:
    manifest = {
        "apiVersion": "polca.dev/v1alpha1",
        "kind": "PowerPolicy",
        "metadata": {"name": f"invalid-{case['id']}"},
        "spec": case["spec"],
    }
    path = tmp_path / f"{case['id']}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    accepted, stderr = server_accepts(cluster, path)
    code, report = polca_validate(path)
    assert not accepted, f"the API server accepted {case['id']}"
    assert code == 1, report
    (doc,) = report["documents"]
    assert doc["document"] == f"{path}:0"
    assert doc["name"] == f"invalid-{case['id']}"
    text = " ".join(f"{e['field']}: {e['message']}" for e in doc["errors"])
    for word in (leaf(case["field"]), *case.get("mentions", ())):
        assert word in text, f"{case['id']}: {word!r} not in {text} (server: {stderr})"


def test_a_quoted_number_is_rejected_by_both(cluster: Cluster, tmp_path: Path) -> None:
    """Strict types: YAML `"1000"` is a string; the API server does not coerce it."""
    path = tmp_path / "quoted.yaml"
    path.write_text(
        "apiVersion: polca.dev/v1alpha1\nkind: PowerPolicy\nmetadata: {name: quoted}\n"
        "spec: {allNodes: true, budgetWatts: '1000'}\n"
    )
    accepted, _ = server_accepts(cluster, path)
    code, report = polca_validate(path)
    assert not accepted
    assert code == 1
    assert report["documents"][0]["errors"][0]["field"] == "spec.budgetWatts"
