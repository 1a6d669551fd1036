"""checkov's Kubernetes checks over the rendered chart: each finding fixed or justified here.

The chart is rendered with every optional part on (`ci/all-features-values.yaml`: the image by
digest, which also settles "pull policy Always", NetworkPolicies, monitors). What checkov still
reports must be exactly the justified findings below: a new finding fails the test, and so does
a justification that no longer applies (so the list cannot rot). `make checkov` installs
checkov into its own venv (`tools/install-checkov.sh`); `make test` passes its path in
POLCA_CHECKOV.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

CHART_DIR = Path(__file__).resolve().parents[3] / "charts" / "polca"
HelmTemplate = Callable[..., subprocess.CompletedProcess[str]]

PRIVILEGED_NODE = (
    "NVML sets clocks and power limits only for root with CAP_SYS_ADMIN; the daemon alone gets "
    "it (docs/install.md, Privileges); the operator and the hook run as non-root"
)
# (check id, kind.name of the rendered object) -> why it stays.
JUSTIFIED: dict[tuple[str, str], str] = {
    **{
        (check, "DaemonSet.polca-node"): PRIVILEGED_NODE
        for check in ("CKV_K8S_20", "CKV_K8S_23", "CKV_K8S_25", "CKV_K8S_39", "CKV_K8S_40")
    },
    **{
        ("CKV_K8S_11", workload): "no CPU limit: CFS throttling would delay the guard loop and "
        "the control cycle exactly when the node is busy; requests are set"
        for workload in ("DaemonSet.polca-node", "Deployment.polca-operator", "Job.polca-restore")
    },
    **{
        ("CKV_K8S_38", workload): "all three talk to the API server (watch policies, write "
        "status, delete policies on uninstall): they need their token"
        for workload in ("DaemonSet.polca-node", "Deployment.polca-operator", "Job.polca-restore")
    },
    **{
        ("CKV_K8S_21", obj): "events about cluster-scoped objects are accepted only in `default` "
        "(the API server refuses them elsewhere); the Role grants events:create there, nothing else"
        for obj in (
            "Role.polca-node-events",
            "Role.polca-operator-events",
            "RoleBinding.polca-node-events",
            "RoleBinding.polca-operator-events",
        )
    },
}


def _checkov() -> Path:
    found = os.environ.get("POLCA_CHECKOV")
    if not found:
        cache = Path.home() / ".cache" / "polca"
        found = next((str(p) for p in sorted(cache.glob("checkov-*/bin/checkov"))), "")
    assert found, "checkov is missing: run `make checkov` (make test does)"
    return Path(found)


def test_checkov_findings_are_exactly_the_justified_ones(
    helm_template: HelmTemplate, tmp_path: Path
) -> None:
    rendered = helm_template([CHART_DIR / "ci" / "all-features-values.yaml"])
    assert rendered.returncode == 0, rendered.stderr
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(rendered.stdout)
    result = subprocess.run(
        [
            str(_checkov()),
            "-f",
            str(manifest),
            "--framework",
            "kubernetes",
            "--quiet",
            "--compact",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    found = set()
    for failed in report["results"]["failed_checks"]:
        kind, namespace_or_name, *rest = failed["resource"].split(".")
        # checkov names objects kind.namespace.name (namespaced) or kind.name.
        name = rest[0] if rest else namespace_or_name
        found.add((failed["check_id"], f"{kind}.{name}"))
    unexplained = sorted(found - JUSTIFIED.keys())
    assert not unexplained, f"new checkov findings, fix or justify: {unexplained}"
    stale = sorted(JUSTIFIED.keys() - found)
    assert not stale, f"justified findings checkov no longer reports, drop them: {stale}"


@pytest.mark.parametrize("check", sorted({c for c, _ in JUSTIFIED}))
def test_each_justification_says_why(check: str) -> None:
    reasons = [why for (c, _), why in JUSTIFIED.items() if c == check]
    assert all(len(why) > 40 for why in reasons)
