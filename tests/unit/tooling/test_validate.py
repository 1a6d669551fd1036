"""`polca validate`: documents, field paths, exit codes, semantic checks with --nodes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from polca.cli import main

REPO = Path(__file__).resolve().parents[3]
GOOD = """\
apiVersion: polca.dev/v1alpha1
kind: PowerPolicy
metadata: {name: row-a}
spec:
  nodeSelector: {matchLabels: {polca.dev/power-domain: row-a}}
  budgetWatts: 40000
  nodePower: {overheadWatts: 3000}
"""
BAD_RELEASE = """\
apiVersion: polca.dev/v1alpha1
kind: PowerPolicy
metadata: {name: bad}
spec:
  allNodes: true
  budgetWatts: 1000
  failsafeStage: s1
  stages:
    - {name: normal}
    - {name: s1, triggerPercent: 80, releasePercent: 85}
"""
NODES = """\
apiVersion: v1
kind: List
items:
  - {kind: Node, metadata: {name: n1, labels: {polca.dev/power-domain: row-a}}}
  - {kind: Node, metadata: {name: n2, labels: {polca.dev/power-domain: row-b}}}
"""


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["validate", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_every_example_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_json(capsys, "-f", str(REPO / "examples"))
    assert code == 0
    docs = report["documents"]
    assert isinstance(docs, list)
    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert len(docs) == sum(len(list(yaml.safe_load_all(p.read_text()))) for p in examples)
    assert all(doc["valid"] for doc in docs)
    assert report["semantic_checks"] is False


def test_invalid_document_is_named_with_its_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(GOOD + "---\n" + BAD_RELEASE)
    code = main(["validate", "-f", str(path)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{path}:0 PowerPolicy/row-a: valid" in out
    assert f"{path}:1 PowerPolicy/bad: INVALID" in out
    assert "spec.stages[1].releasePercent: releasePercent must be below triggerPercent" in out


def test_directories_are_read_recursively_and_other_kinds_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "p.yml").write_text(GOOD)
    (tmp_path / "a" / "ns.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"
    )
    (tmp_path / "README.md").write_text("not a manifest")
    code, report = run_json(capsys, "-f", str(tmp_path))
    assert code == 0
    docs = {d["kind"]: d for d in report["documents"]}
    assert docs["Namespace"]["skipped"] == "not a POLCA kind (Namespace)"
    assert docs["PowerPolicy"]["valid"] is True


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(BAD_RELEASE))
    code, report = run_json(capsys, "-f", "-")
    assert code == 1
    (doc,) = report["documents"]
    assert doc["document"] == "-:0"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("metadata: {}\nspec: {allNodes: true, budgetWatts: 1000}", "metadata.name"),
        ("metadata: {name: x}\nspec: {allNodes: true, budgetWatts: '1000'}", "spec.budgetWatts"),
        ("metadata: {name: x}\nspec: {allNodes: true, budgetWatts: 1, dryRun: 'y'}",
         "spec.dryRun"),
        ("metadata: {name: x}\nspec: {allNodes: true, budgetWatts: 1, failsafeStage: x}",
         "spec.failsafeStage"),
    ],
)  # fmt: skip
def test_strict_like_the_api_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("apiVersion: polca.dev/v1alpha1\nkind: PowerPolicy\n" + text)
    code, report = run_json(capsys, "-f", str(path))
    assert code == 1
    fields = [e["field"] for e in report["documents"][0]["errors"]]
    assert field in fields


def test_each_cross_field_rule_names_its_own_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "apiVersion: polca.dev/v1alpha1\nkind: PowerPolicy\nmetadata: {name: x}\n"
        "spec: {nodeSelector: {}, budgetWatts: 1, failsafeStage: x}\n"
    )
    code, report = run_json(capsys, "-f", str(path))
    assert code == 1
    fields = [e["field"] for e in report["documents"][0]["errors"]]
    assert fields == ["spec.nodeSelector", "spec.failsafeStage"]


def test_semantic_checks_with_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(GOOD.replace("row-a}}", "row-c}}"))
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(NODES)
    code, report = run_json(capsys, "-f", str(policy), "--nodes", str(nodes))
    assert code == 1
    (error,) = report["documents"][0]["errors"]
    assert error["message"].startswith("NoNodesSelected: spec.nodeSelector matches none of the 2")
    policy.write_text(GOOD)
    code, _ = run_json(capsys, "-f", str(policy), "--nodes", str(nodes))
    assert code == 0


@pytest.mark.parametrize("content", [None, "key: [unclosed"])
def test_unreadable_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    path = tmp_path / "p.yaml"
    if content is not None:
        path.write_text(content)
    assert main(["validate", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
