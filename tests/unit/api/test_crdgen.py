"""The generated CRDs: in sync with the models, structural, documented, defaulting alike."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from polca.api import crdgen
from polca.api.powerpolicy import PowerPolicy, PowerPolicySpec

REPO = Path(__file__).resolve().parents[3]
CRDS = {kind.kind: crdgen.crd(kind) for kind in crdgen.KINDS}
FORBIDDEN_KEYS = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "propertyNames"}


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the apiserver does it: parent defaults first, then inside."""
    if isinstance(value, dict) and "properties" in schema:
        result = dict(value)
        for name, sub in schema["properties"].items():
            if name not in result and "default" in sub:
                result[name] = copy.deepcopy(sub["default"])
            if name in result:
                result[name] = apply_defaults(sub, result[name])
        return result
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: apply_defaults(schema["additionalProperties"], v) for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def test_checked_in_files_match_the_models() -> None:
    """Fails when crds/, charts/polca/crds/ or docs/api-reference.md drift: run `make crds`."""
    expected = crdgen.targets(REPO / "crds")
    assert REPO / "charts" / "polca" / "crds" / "powerpolicies.polca.dev.yaml" in expected
    for path, text in expected.items():
        assert path.exists(), f"{path} is missing: run `make crds`"
        assert path.read_text() == text, f"{path} is out of date: run `make crds`"


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert crdgen.main(["--out", str(REPO / "crds"), "--check"]) == 0


def test_files_parse_as_the_crds() -> None:
    for kind in crdgen.KINDS:
        path = REPO / "crds" / f"{kind.crd_name}.yaml"
        assert yaml.safe_load(path.read_text()) == CRDS[kind.kind]


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schemas_are_structural(kind: str) -> None:
    for path, node in walk(schema_of(kind)):
        assert not FORBIDDEN_KEYS & node.keys(), path
        assert node.get("additionalProperties") is not False, path
        assert "type" in node, f"{path} has no type"
        if node["type"] == "object" and path != ".metadata":
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), path


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_is_described(kind: str) -> None:
    undocumented = [
        path
        for path, node in walk(schema_of(kind))
        if path.count(".") >= 1
        and not path.endswith(("[]", "{}"))
        and path != ".metadata"
        and not node.get("description")
    ]
    assert undocumented == []


def test_unknown_fields_are_preserved_only_under_status_kopf() -> None:
    preserved = [
        (kind, path)
        for kind in CRDS
        for path, node in walk(schema_of(kind))
        if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert sorted(preserved) == [
        ("NodePowerState", ".status.kopf"),
        ("PowerPolicy", ".status.kopf"),
    ]


def test_every_cel_rule_has_a_message() -> None:
    rules = [
        rule
        for kind in CRDS
        for _, node in walk(schema_of(kind))
        for rule in node.get("x-kubernetes-validations", ())
    ]
    assert len(rules) >= 15
    assert all(rule.get("message") for rule in rules)


def test_lists_that_cel_iterates_are_bounded() -> None:
    """The apiserver's cost estimator needs maxItems/maxProperties/maxLength to accept CEL."""
    spec = schema_of("PowerPolicy")["properties"]["spec"]["properties"]
    assert spec["stages"]["maxItems"] <= 16
    assert spec["tiers"]["maxItems"] <= 16
    stage = spec["stages"]["items"]["properties"]
    assert stage["name"]["maxLength"] == 63
    assert stage["actions"]["maxProperties"] <= 17


def test_names_scope_and_printer_columns() -> None:
    pp = CRDS["PowerPolicy"]["spec"]
    assert pp["scope"] == "Cluster"
    assert pp["group"] == "polca.dev"
    assert pp["names"]["shortNames"] == ["pp"]
    assert pp["names"]["categories"] == ["polca"]
    version = pp["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Nodes", "Budget", "Power", "Util", "Stage", "Age"]
    nps = CRDS["NodePowerState"]["spec"]
    assert nps["names"]["shortNames"] == ["nps"]
    columns = [c["name"] for c in nps["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Policy", "Stage", "GPUs", "Power", "Throttled", "Heartbeat"]


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_printer_columns_point_at_fields(kind: str) -> None:
    paths = {path for path, _ in walk(schema_of(kind))}
    version = CRDS[kind]["spec"]["versions"][0]
    for column in version["additionalPrinterColumns"]:
        if not column["jsonPath"].startswith(".metadata."):
            assert column["jsonPath"] in paths, column


def test_crd_defaults_equal_model_defaults() -> None:
    spec_schema = schema_of("PowerPolicy")["properties"]["spec"]
    minimal = {"allNodes": True, "budgetWatts": 1000}
    assert apply_defaults(spec_schema, minimal) == PowerPolicySpec.model_validate(minimal).to_wire()


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_default_alike_in_crd_and_model(path: Path) -> None:
    spec_schema = schema_of("PowerPolicy")["properties"]["spec"]
    for doc in yaml.safe_load_all(path.read_text()):
        model = PowerPolicy.model_validate(doc)
        assert apply_defaults(spec_schema, doc["spec"]) == model.spec.to_wire()


def test_the_field_reference_lists_every_spec_field() -> None:
    reference = crdgen.rendered_reference()
    for path, _ in walk(schema_of("PowerPolicy")["properties"]["spec"], "spec"):
        if not path.endswith(("[]", "{}")):
            shown = path.replace("[]{}", "[].<key>").replace("{}", ".<key>")
            assert f"`{shown}`" in reference, shown
