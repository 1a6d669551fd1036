"""``polca validate``: check PowerPolicy manifests offline with the API server's rules.

The CRD is generated from the models (:mod:`polca.api.crdgen`), and every CEL rule of the CRD is
a :class:`~polca.api.base.CelRule` that the models also check in Python with the same message
(map keys: pydantic checks the same key pattern the generated rule matches). So validating a
document with the models, strictly (no type coercion, unknown fields rejected, as ``kubectl
apply`` with server-side strict field validation), gives the API server's verdict; the test
``tests/integration/test_validate_vs_apiserver.py`` compares both on every example and every
invalid manifest of the shared table. With ``--nodes`` (the output of ``kubectl get nodes -o
yaml``) the operator's semantic checks (:mod:`polca.api.semantic`) run too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from polca.api import base, meta, powerpolicy, stages, tiers
from polca.api.nodepowerstate import NodePowerState
from polca.api.powerpolicy import PowerPolicy
from polca.api.semantic import semantic_problems
from polca.tooling.manifests import Document, ManifestError, read_documents

__all__ = ["DocumentReport", "Finding", "register", "validate_document"]

EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2
KINDS: Mapping[str, type[BaseModel]] = {
    "PowerPolicy": PowerPolicy,
    "NodePowerState": NodePowerState,
}
_VALUE_ERROR = "Value error, "
_SPEC_RULES = re.compile(r"; (?=spec\.)")

# A rule's message → the field its CRD rule names (fieldPath), to point at the field as the
# API server does rather than at the object holding it.
_RULE_FIELDS = {
    rule.message: rule.field_path
    for module in (meta, powerpolicy, stages, tiers)
    for rule in vars(module).values()
    if isinstance(rule, base.CelRule) and rule.field_path
}


@dataclass(frozen=True, slots=True)
class Finding:
    field: str  # e.g. spec.stages[1].releasePercent
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class DocumentReport:
    document: str  # file:index
    kind: str | None
    name: str | None
    errors: tuple[Finding, ...] = ()
    skipped: str | None = None  # why the document was not validated (not a POLCA kind)

    @property
    def valid(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "document": self.document,
            "kind": self.kind,
            "name": self.name,
            "valid": self.valid,
            "skipped": self.skipped,
            "errors": [f.as_dict() for f in self.errors],
        }


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _findings(error: Mapping[str, Any]) -> list[Finding]:
    where = _path(error["loc"])
    message = str(error["msg"]).removeprefix(_VALUE_ERROR)
    if error["type"] != "value_error":
        return [Finding(where or "(document)", message)]
    # Cross-field rules of the spec name their field first: "spec.x: message; spec.y: …".
    parts = _SPEC_RULES.split(message)
    if all(p.startswith("spec.") and ": " in p for p in parts):
        return [Finding(*p.split(": ", 1)) for p in parts]
    return [Finding((where + _RULE_FIELDS.get(message, "")) or "(document)", message)]


def _node_labels(nodes: Sequence[Document]) -> list[dict[str, str]]:
    """Labels of each Node in `kubectl get nodes -o yaml|json` output (a List or Nodes)."""
    items: list[Any] = []
    for doc in nodes:
        data = doc.data if isinstance(doc.data, dict) else {}
        items.extend(data.get("items") or ([data] if data.get("kind") == "Node" else []))
    return [dict((item.get("metadata") or {}).get("labels") or {}) for item in items]


@dataclass
class _Validator:
    node_labels: list[dict[str, str]] | None = None
    reports: list[DocumentReport] = field(default_factory=list)

    def check(self, doc: Document) -> DocumentReport:
        data = doc.data
        if not isinstance(data, dict):
            return DocumentReport(
                doc.where, None, None, (Finding("(document)", "not a YAML mapping"),)
            )
        kind = data.get("kind")
        name = (
            (data.get("metadata") or {}).get("name")
            if isinstance(data.get("metadata"), dict)
            else None
        )
        model = KINDS.get(str(kind))
        if model is None:
            return DocumentReport(doc.where, kind, name, skipped=f"not a POLCA kind ({kind})")
        errors: list[Finding] = []
        if not name:
            errors.append(Finding("metadata.name", "Required value: name is required"))
        try:
            # JSON mode, strict: what the API server accepts (no "1000" for a number, no "yes"
            # for a boolean), while timestamps may be strings as they are on the wire.
            parsed = model.model_validate_json(json.dumps(data), strict=True)
        except ValidationError as exc:
            errors.extend(f for e in exc.errors() for f in _findings(e))
            return DocumentReport(doc.where, kind, name, tuple(errors))
        if isinstance(parsed, PowerPolicy) and self.node_labels is not None:
            errors.extend(
                Finding("spec", f"{problem.reason}: {problem.message}")
                for problem in semantic_problems(parsed.spec, self.node_labels)
            )
        return DocumentReport(doc.where, kind, name, tuple(errors))


def validate_document(
    doc: Document, node_labels: list[dict[str, str]] | None = None
) -> DocumentReport:
    """The verdict on one document; `node_labels` (one mapping per node) enables semantic checks."""
    return _Validator(node_labels).check(doc)


_EPILOG = """\
Examples:
  polca validate -f examples/polca-default.yaml
  polca validate -f deploy/policies/ --json            (every *.yaml/*.yml, recursively)
  kubectl get nodes -o yaml > nodes.yaml && polca validate -f policy.yaml --nodes nodes.yaml
  helm template … | polca validate -f -
Documents of other kinds are skipped (and listed). Exit status: 0 every POLCA document is valid,
1 at least one is invalid, 2 a file could not be read (nothing is judged then).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check PowerPolicy manifests offline with the API server's rules (schema, CEL)",
        description=(__doc__ or "").split("\n\n")[0],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR|-",
        help="manifest file, directory (recursive) or - for stdin; repeatable",
    )
    p.add_argument(
        "--nodes",
        metavar="FILE",
        help="the cluster's nodes (kubectl get nodes -o yaml): also run the operator's "
        "semantic checks (a selector matching no node, overhead above the budget, …)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        docs = read_documents(args.filename)
        labels = _node_labels(read_documents([args.nodes])) if args.nodes else None
    except ManifestError as exc:
        print(f"polca validate: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    reports = [validate_document(d, labels) for d in docs]
    judged = [r for r in reports if r.skipped is None]
    valid = all(r.valid for r in judged)
    if args.json:
        print(
            json.dumps(
                {
                    "valid": valid,
                    "semantic_checks": labels is not None,
                    "documents": [r.as_dict() for r in reports],
                },
                indent=2,
            )
        )
    else:
        for r in reports:
            title = f"{r.document} {r.kind or '?'}/{r.name or '?'}"
            verdict = f"skipped: {r.skipped}" if r.skipped else ("valid" if r.valid else "INVALID")
            print(f"{title}: {verdict}")
            for f in r.errors:
                print(f"  error   {f.field}: {f.message}")
        print(f"{len(judged)} POLCA document(s), {sum(not r.valid for r in judged)} invalid")
        if labels is None:
            print("(semantic checks against the cluster's nodes need --nodes)")
    if not judged:
        print("polca validate: no PowerPolicy or NodePowerState documents found", file=sys.stderr)
    return EXIT_VALID if valid else EXIT_INVALID
