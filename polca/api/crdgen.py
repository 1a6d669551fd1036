"""Render the CustomResourceDefinitions (and the API field reference) from the models.

    python -m polca.api.crdgen --out crds            # what `make crds` runs
    python -m polca.api.crdgen --out crds --check    # exit 1 when a file is out of date

Writes `<out>/<plural>.polca.dev.yaml` for each kind, the same files into `charts/polca/crds/`
when that directory exists, and the field reference `docs/api-reference.md`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from polca.api.fieldref import field_reference
from polca.api.nodepowerstate import NODE_NAME_MATCHES, NodePowerStateSpec, NodePowerStateStatus
from polca.api.powerpolicy import GROUP, VERSION, PowerPolicySpec, PowerPolicyStatus
from polca.api.schema import JsonDict, structural_schema

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_CRDS = REPO_ROOT / "charts" / "polca" / "crds"
FIELD_REFERENCE = REPO_ROOT / "docs" / "api-reference.md"
HEADER = "# Generated from polca/api by `make crds` (python -m polca.api.crdgen). Do not edit.\n"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


@dataclass(frozen=True)
class Kind:
    """One custom resource kind and the models behind it."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    spec_required: bool
    columns: tuple[PrinterColumn, ...]
    root_rules: tuple[Mapping[str, str], ...] = ()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

POWER_POLICY = Kind(
    kind="PowerPolicy",
    plural="powerpolicies",
    short_names=("pp",),
    description="A power domain: nodes that share a power budget, and how POLCA keeps it under "
    "the budget by throttling GPUs, lowest tier first. See docs/api.md.",
    spec=PowerPolicySpec,
    status=PowerPolicyStatus,
    spec_required=True,
    columns=(
        PrinterColumn("Nodes", "integer", ".status.nodeCount", "Nodes in the domain."),
        PrinterColumn("Budget", "number", ".spec.budgetWatts", "Budget in watts."),
        PrinterColumn("Power", "number", ".status.powerWatts", "Observed power in watts."),
        PrinterColumn("Util", "number", ".status.utilizationPercent", "Power, % of budget."),
        PrinterColumn("Stage", "string", ".status.stage", "Current stage."),
        AGE,
        PrinterColumn("DryRun", "boolean", ".spec.dryRun", "Decide only.", priority=1),
    ),
)

NODE_POWER_STATE = Kind(
    kind="NodePowerState",
    plural="nodepowerstates",
    short_names=("nps",),
    description="What the POLCA node daemon found and applied on one node, named after the "
    "node: GPU inventory, per-GPU pod, tier and limits, and a heartbeat.",
    spec=NodePowerStateSpec,
    status=NodePowerStateStatus,
    spec_required=False,
    columns=(
        PrinterColumn("Policy", "string", ".status.policy", "Policies acting on the node."),
        PrinterColumn("Stage", "string", ".status.stage", "Their stages, in the same order."),
        PrinterColumn("GPUs", "integer", ".status.gpuCount", "GPUs on the node."),
        PrinterColumn("Power", "number", ".status.powerWatts", "GPU power in watts."),
        PrinterColumn("Throttled", "integer", ".status.throttledGpuCount", "GPUs limited."),
        PrinterColumn("Heartbeat", "date", ".status.heartbeatTime", "Last daemon write."),
    ),
    root_rules=(NODE_NAME_MATCHES.to_schema(),),
)

KINDS = (POWER_POLICY, NODE_POWER_STATE)


def _root_schema(kind: Kind) -> JsonDict:
    properties: JsonDict = {
        "apiVersion": {
            "description": "APIVersion defines the versioned schema of this object.",
            "type": "string",
        },
        "kind": {"description": "Kind is the type of this object.", "type": "string"},
        "metadata": {"type": "object"},
        "spec": structural_schema(kind.spec),
        "status": structural_schema(kind.status),
    }
    root: JsonDict = {"description": kind.description, "type": "object", "properties": properties}
    if kind.spec_required:
        root["required"] = ["spec"]
    if kind.root_rules:
        root["x-kubernetes-validations"] = [dict(r) for r in kind.root_rules]
    return root


def crd(kind: Kind) -> JsonDict:
    """The CustomResourceDefinition of `kind`."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/part-of": "polca"}},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": ["polca"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.to_crd() for c in kind.columns],
                    "schema": {"openAPIV3Schema": _root_schema(kind)},
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors for repeated lists, block-style multi-line strings."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002 - the signature is PyYAML's
        return True


def to_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def rendered() -> dict[str, str]:
    """File name → content, for every generated CRD."""
    return {f"{k.crd_name}.yaml": HEADER + to_yaml(crd(k)) for k in KINDS}


def rendered_reference() -> str:
    return field_reference([(k.kind, _root_schema(k)) for k in KINDS])


def targets(out: Path) -> dict[Path, str]:
    """Every path this tool writes, with its content."""
    files = rendered()
    result = {out / name: text for name, text in files.items()}
    if CHART_CRDS.is_dir() and CHART_CRDS.resolve() != out.resolve():
        result.update({CHART_CRDS / name: text for name, text in files.items()})
    result[FIELD_REFERENCE] = rendered_reference()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "crds", help="CRD directory")
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = [path for path, text in targets(args.out).items() if _read(path) != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path} (run `make crds`)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in targets(args.out).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"wrote {path}")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


if __name__ == "__main__":
    raise SystemExit(main())
