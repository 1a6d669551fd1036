"""The user docs stand alone and say only what the code does: links resolve, metric names and
status fields exist, PromQL parses, and the install guide's worked example prints what it shows."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
USER_DOCS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
OPS_DOCS = [REPO / "docs" / name for name in ("troubleshooting.md", "runbook.md", "install.md")]
INSTALL = REPO / "docs" / "install.md"
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
CODE_DIRS = [REPO / "operator" / "polca_operator", REPO / "node-daemon" / "polca_node"]
# What prometheus_client appends to a family's name in the exposition.
SERIES_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", path.read_text(), re.MULTILINE | re.DOTALL)


# --- standing alone ---------------------------------------------------------------------------

# Internal references a user cannot follow: the team's shared folder and design notes, the
# project's issue numbers, numbered rules of a document users do not have.
INTERNAL = re.compile(r"\.\./shared|\bDESIGN\b|(?i:\bissues? \d+|safety rule \d)")


@pytest.mark.parametrize(
    "path",
    [*USER_DOCS, REPO / "charts/polca/values.yaml", REPO / "charts/polca/values.schema.json"],
    ids=rel,
)
def test_no_internal_references(path: Path) -> None:
    found = [
        f"{rel(path)}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if INTERNAL.search(line)
    ]
    assert not found, "\n".join(found)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return frozenset(slug(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE))


def links(path: Path) -> Iterator[tuple[str, str]]:
    """(target, anchor) of each relative markdown link outside code blocks."""
    text = re.sub(r"^ *```.*?^ *```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s):, mailto:
        file, _, anchor = target.partition("#")
        yield file, anchor


@pytest.mark.parametrize("path", USER_DOCS, ids=rel)
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    broken = []
    for file, anchor in links(path):
        target = (path.parent / file).resolve() if file else path
        if not target.exists():
            broken.append(f"{file}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{file}#{anchor}: no such heading")
    assert not broken, f"{rel(path)}: {broken}"


# --- metric names, status fields and PromQL the operations docs use ------------------------


@cache
def exported_metrics() -> frozenset[str]:
    """Every `polca_*` family name the operator's and the daemon's code registers."""
    names: set[str] = set()
    for directory in CODE_DIRS:
        for source in directory.rglob("*.py"):
            names.update(re.findall(r"""["'](polca_[a-z0-9_]+)["']""", source.read_text()))
    return frozenset(names)


def family(series: str) -> str:
    for suffix in SERIES_SUFFIXES:
        if series.endswith(suffix) and series.removesuffix(suffix) in exported_metrics():
            return series.removesuffix(suffix)
    return series


@pytest.mark.parametrize("path", OPS_DOCS, ids=rel)
def test_metric_names_are_the_ones_the_code_exports(path: Path) -> None:
    named = set(re.findall(r"\bpolca_[a-z0-9_]*[a-z0-9]\b", path.read_text()))
    unknown = sorted(n for n in named if family(n) not in exported_metrics())
    assert not unknown, f"{rel(path)} names metrics no code exports: {unknown}"


def test_troubleshooting_promql_parses(tmp_path: Path) -> None:
    """Every PromQL line of the page, through Prometheus' own parser (promtool check rules)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make prometheus` installs Debian's prometheus"
    exprs = [line.strip() for block in code_blocks(TROUBLESHOOTING, "promql")
             for line in block.splitlines() if line.strip()]  # fmt: skip
    assert len(exprs) >= 15
    rules = [{"record": f"doc:expr{i}", "expr": e} for i, e in enumerate(exprs)]
    (tmp_path / "rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "doc", "rules": rules}]})
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yaml")],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@cache
def status_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / f"{kind}.polca.dev.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The schema at a jsonpath like `.status.gpus[*].tier` (None: no such field)."""
    for part in re.sub(r"\[[^\]]*\]", "", path).strip(".").split("."):
        schema = schema.get("items", schema)
        properties = schema.get("properties") or {}
        if part not in properties:
            return None
        schema = properties[part]
    return schema


def kubectl_field_paths(path: Path) -> Iterator[tuple[str, str]]:
    """(CRD, jsonpath) of every field a `kubectl get` of POLCA's kinds reads in the page."""
    for block in code_blocks(path, "sh"):
        for line in block.splitlines():
            kind = re.search(r"kubectl get (powerpolic\w*|pp|nodepowerstat\w*|nps)\b", line)
            if not kind:
                continue
            crd = "powerpolicies" if kind.group(1).startswith("p") else "nodepowerstates"
            rest = line
            ranged = re.search(r"\{range (\.[\w.\[\]*]+)\}(.*?)\{end\}", line)
            if ranged:
                yield from ((crd, f"{ranged.group(1)}.{f}") for f in
                            re.findall(r"\{\.(\w+)\}", ranged.group(2)))  # fmt: skip
                rest = line.replace(ranged.group(0), "")
            yield from ((crd, p) for p in re.findall(r"(\.status(?:\.\w+|\[[^\]]*\])+)", rest))


@pytest.mark.parametrize("path", [TROUBLESHOOTING, INSTALL], ids=rel)
def test_kubectl_reads_fields_the_crds_have(path: Path) -> None:
    paths = list(kubectl_field_paths(path))
    assert paths, "no kubectl field paths found"
    missing = [f"{crd}: {p}" for crd, p in paths if walk(status_schema(crd), p) is None]
    assert not missing, missing


def test_condition_types_the_page_filters_on_exist() -> None:
    """`[?(@.type=="DryRun")]`: each condition type is one the code sets."""
    types = set(re.findall(r'@\.type=="(\w+)"', TROUBLESHOOTING.read_text() + INSTALL.read_text()))
    assert types
    code = "".join(p.read_text() for d in CODE_DIRS for p in d.rglob("*.py"))
    assert all(f'"{t}"' in code for t in types), types


# --- the install guide --------------------------------------------------------------------------

POD_SECURITY = re.compile(r"pod-security\.kubernetes\.io/enforce=(\w+)")


def test_readme_and_install_guide_label_the_namespace_alike() -> None:
    levels = {rel(p): POD_SECURITY.findall(p.read_text()) for p in (REPO / "README.md", INSTALL)}
    assert all(levels.values()), f"a guide without the namespace label: {levels}"
    # privileged: the chart's daemon needs it (tests/unit/chart/test_pod_security_doc.py)
    assert {level for found in levels.values() for level in found} == {"privileged"}


def console_transcript(path: Path, marker: str) -> list[tuple[str, list[str]]]:
    """(command, printed lines) of the ```console block whose first command has `marker`."""
    block = next(b for b in code_blocks(path, "console") if marker in b.split("\n", 1)[0])
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:].split("  #")[0].strip(), []))
        else:
            steps[-1][1].append(line)
    return steps


def test_install_worked_example_prints_what_the_guide_shows(tmp_path: Path) -> None:
    """Section 5's policy and `polca validate` transcript, rerun on 36 nodes labelled row-a."""
    policy = next(b for b in code_blocks(INSTALL, "yaml") if b.startswith("# row-a.yaml"))
    (tmp_path / "row-a.yaml").write_text(policy)
    nodes = [
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": f"gpu-{i:02d}", "labels": {"polca.dev/power-domain": "row-a"}}}
        for i in range(1, 37)
    ]  # fmt: skip
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump({"kind": "List", "items": nodes}))
    polca = str(Path(sys.executable).parent / "polca")
    steps = console_transcript(INSTALL, "kubectl get nodes -o yaml > nodes.yaml")
    assert len(steps) == 4
    for command, printed in steps[1:]:
        argv = command.replace("polca validate", f"{polca} validate", 1)
        result = subprocess.run(
            ["bash", "-c", argv], cwd=tmp_path, capture_output=True, text=True, check=False,
            timeout=60,
        )  # fmt: skip
        assert result.stdout.splitlines() == printed, command
