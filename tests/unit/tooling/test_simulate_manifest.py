"""`polca simulate -f policy.yaml` and `--plan policy.yaml`: the user's own PowerPolicy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from polca.api.convert import plan_from_spec
from polca.api.powerpolicy import PowerPolicy
from polca.cli import main
from polca.tooling.manifests import load_policy

REPO = Path(__file__).resolve().parents[3]
DEFAULT = REPO / "examples" / "polca-default.yaml"
SHORT = ["--duration", "120", "--load-scale", "8", "--no-progress", "--json"]


def simulate(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["simulate", *argv, *SHORT]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_plan_accepts_a_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    out = simulate(
        capsys, "--plan", str(DEFAULT), "--policy", "polca-k8s", "--servers", "4",
        "--no-derive-triggers",
    )  # fmt: skip
    (run,) = out["results"]
    assert len(run["stage_time_pct"]) == 5  # normal, stage1..3, brake: the manifest's stages


def test_filename_sizes_the_row_from_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "p.yaml"
    text = DEFAULT.read_text().replace("budgetWatts: 250000", "budgetWatts: 30000")
    manifest.write_text(text.replace("overheadWatts: 0", "overheadWatts: 1400"))
    out = simulate(capsys, "-f", str(manifest), "--oversubscription", "0.5")
    scenario = out["scenario"]
    # H100-SXM: 8 x 700 W + 1400 W = 7000 W per server; 30 kW holds 4 of them.
    assert scenario["base_servers"] == 4
    assert scenario["server_overhead_w"] == 1400
    assert [r["policy"] for r in out["results"]] == ["none", "polca-k8s"]
    assert all(r["servers"] == 6 for r in out["results"])
    k8s = out["results"][1]
    assert k8s["top_trigger_pct"] is None  # triggers as written, not derived


def test_the_manifest_plan_is_the_operators(tmp_path: Path) -> None:
    from polca.tooling.policyfile import read_policy

    manifest = read_policy(str(DEFAULT))
    doc = load_policy(str(DEFAULT))
    assert manifest.plan == plan_from_spec(PowerPolicy.model_validate(doc.data).spec)
    assert manifest.plan.settle_s == 5.0


def test_an_invalid_manifest_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "p.yaml"
    manifest.write_text(DEFAULT.read_text().replace("releasePercent: 75", "releasePercent: 85"))
    assert main(["simulate", "-f", str(manifest), *SHORT]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "spec.stages[1].releasePercent" in err
    assert "does not validate" in err


PODS = """\
apiVersion: v1
kind: List
items:
  - kind: Pod
    metadata: {name: chat-0, namespace: serve}
    spec: {containers: [{name: m, resources: {limits: {nvidia.com/gpu: 8}}}]}
  - kind: Pod
    metadata: {name: batch-0, namespace: batch}
    spec:
      priority: -10
      containers: [{name: m, resources: {limits: {nvidia.com/gpu: 8}}}]
  - kind: Pod
    metadata: {name: batch-1, namespace: batch}
    spec:
      priority: -10
      containers: [{name: m, resources: {limits: {nvidia.com/gpu: 8}}}]
  - kind: Pod
    metadata: {name: train-0, namespace: ml, labels: {training.kubeflow.org/job-name: llm}}
    spec: {containers: [{name: m, resources: {limits: {nvidia.com/gpu: 8}}}]}
  - kind: Pod
    metadata: {name: web, namespace: serve}
    spec: {containers: [{name: m}]}
"""


def test_pods_set_the_mix_by_the_manifests_tier_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from polca.tooling.manifests import read_documents
    from polca.tooling.policyfile import mix_from_pods, read_policy

    pods = tmp_path / "pods.yaml"
    pods.write_text(PODS)
    mix = mix_from_pods(read_policy(str(DEFAULT)), read_documents([str(pods)]))
    # chat-0: default tier high; batch-*: priority -10 → low; train-0: a Kubeflow job.
    assert mix == "high=8,low=16,train=8"
    out = simulate(capsys, "-f", str(DEFAULT), "--pods", str(pods), "--servers", "4")
    assert out["scenario"]["mix"] == mix


def test_pods_need_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pods = tmp_path / "pods.yaml"
    pods.write_text(PODS)
    assert main(["simulate", "--pods", str(pods), *SHORT]) == 2
    assert "--pods needs -f" in capsys.readouterr().err
