"""Differential fuzzing: random PowerPolicy specs through the models and the real API server.

Hypothesis draws specs that are valid, near-valid (a valid one with a few mutations: a field
set to a null, a near-integer such as 1110.000001, a wrong type or an out-of-range number, a
key removed, an unknown field added, an odd selector or stage table) or plainly invalid, and
sends each through
- `polca validate` (`polca.tooling.validate.validate_document`: the strict user-facing models),
- the real kube-apiserver with the CRD from crds/, as a server-side dry run (`dryRun=All`,
  `fieldValidation=Strict`, as `kubectl apply --dry-run=server` sends it).

Properties:
1. every spec the server would store is readable by the node daemon (`ObservedCluster`, its
   guard and checkpoint, and a decision that enforces it at its stage) and by the operator
   (`parse_spec`, the semantic checks), also with fields of a newer CRD added, without an
   exception and never as "unreadable";
2. the two verdicts agree, except for the deliberate disagreements listed (with reasons) in
   data/validate_vs_apiserver_disagreements.yaml and docs/api.md.

Bounded for CI: `derandomize=True` (the same examples every run) and FUZZ_EXAMPLES examples;
`POLCA_FUZZ_EXAMPLES=2000` runs more locally. One API server for the module (the session's).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from polca.api.base import server_integer
from polca.api.powerpolicy import PowerPolicy
from polca.api.semantic import semantic_problems
from polca.control.tiers import PodFacts
from polca.power.profiles import get_profile
from polca.sim.domain import gpu_limits
from polca.tooling.manifests import Document
from polca.tooling.validate import DocumentReport, validate_document
from polca_node.checkpoint import Checkpoint, from_document, to_document
from polca_node.guard_loop import guard_config
from polca_node.kube_client import ApiError, KubeClient, kubeconfig_credentials
from polca_node.observed import ObservedCluster
from polca_node.policies import DecisionInputs, Mode, decide_node
from polca_operator.validation import ParsedSpec, parse_spec
from polca_testbed.cluster import Cluster
from polca_testbed.polling import eventually

FUZZ_EXAMPLES = int(os.environ.get("POLCA_FUZZ_EXAMPLES", "200"))
DISAGREEMENTS: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "data" / "validate_vs_apiserver_disagreements.yaml").read_text()
)
DOCUMENTED = {row["id"] for row in DISAGREEMENTS}
REPO = Path(__file__).resolve().parents[2]
CRD = "powerpolicies.polca.dev"
POLICIES = "/apis/polca.dev/v1alpha1/powerpolicies"
NODE = "fuzz-node"
A100 = gpu_limits(get_profile("A100-80GB"))


# --- the two sides -----------------------------------------------------------------------


@dataclass(frozen=True)
class ServerVerdict:
    stored: dict[str, Any] | None  # the object the server would store; None: refused
    error: str = ""
    status: int = 201

    @property
    def accepted(self) -> bool:
        return self.stored is not None


def established(client: KubeClient, crd: str) -> bool:
    got = client.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
    conditions = (got.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def api_server(cluster: Cluster) -> Iterator[KubeClient]:
    """The session's API server with the CRD of crds/ installed and served."""
    applied = cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"), check=False
    )
    assert applied.returncode == 0, applied.stderr
    client = KubeClient(kubeconfig_credentials(cluster.kubeconfig))
    eventually("the PowerPolicy CRD is established", lambda: established(client, CRD))
    yield client
    client.close()


def manifest_of(spec: Any, name: str = "fuzz") -> dict[str, Any]:
    return {
        "apiVersion": "polca.dev/v1alpha1",
        "kind": "PowerPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def dry_run(
    client: KubeClient, manifest: Mapping[str, Any], field_validation: str = "Strict"
) -> ServerVerdict:
    """The server's verdict; `Strict` as `kubectl apply` asks, `Ignore` as older clients do
    (unknown fields are then pruned and the rest stored)."""
    params = {"dryRun": "All", "fieldValidation": field_validation}
    try:
        stored = client.request("POST", POLICIES, params=params, body=manifest)
    except ApiError as exc:
        # 400: strict decoding (unknown field, wrong JSON type); 422: schema and CEL. Anything
        # else is a failure of the test set-up, not a verdict.
        if exc.status not in (400, 422):
            raise
        return ServerVerdict(None, str(exc), exc.status)
    assert isinstance(stored, dict)
    return ServerVerdict(stored)


def validate(manifest: Mapping[str, Any]) -> DocumentReport:
    return validate_document(Document("fuzz", 0, copy.deepcopy(dict(manifest))))


# --- how a disagreement is explained -----------------------------------------------------

_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


def value_at(document: Any, field_path: str) -> tuple[bool, Any]:
    """(found, value) at a finding's path such as `spec.stages[1].actions.low.clockCeilingMHz`."""
    node = document
    for key, index in _STEP.findall(field_path):
        if index:
            if not isinstance(node, list) or int(index) >= len(node):
                return False, None
            node = node[int(index)]
        elif isinstance(node, Mapping) and key in node:
            node = node[key]
        else:
            return False, None
    return True, node


def finding_cause(manifest: Mapping[str, Any], field_path: str) -> str:
    """Why polca validate refused a field the API server took (a row id, or "unexplained")."""
    found, value = value_at(manifest, field_path)
    if not found:
        return f"unexplained ({field_path})"
    if value is None:
        return "null-pruned"
    if isinstance(value, float) and server_integer(value) is not None:
        return "server-integer"
    return f"unexplained ({field_path}: {value!r})"


def disagreement(manifest: Mapping[str, Any], report: DocumentReport, server: ServerVerdict) -> str:
    """The cause of a disagreement, "" when both sides agree."""
    if report.valid == server.accepted:
        return ""
    if report.valid:
        return f"unexplained (polca validate accepts, the API server refuses: {server.error})"
    causes = sorted({finding_cause(manifest, f.field) for f in report.errors})
    return causes[0] if len(causes) == 1 else " + ".join(causes)


# --- the read paths ----------------------------------------------------------------------


def with_future_fields(stored: Mapping[str, Any]) -> dict[str, Any]:
    """`stored` as a newer CRD might serve it: extra fields in the spec and in a stage."""
    skewed = copy.deepcopy(dict(stored))
    skewed["spec"]["futureField"] = {"enabled": True}
    skewed["spec"]["stages"][0]["futureKnob"] = 3
    return skewed


def labels_selected_by(policy: PowerPolicy) -> dict[str, str]:
    """Node labels the policy's selector is likely to select (best effort: any labels do)."""
    selector = policy.spec.node_selector
    if selector is None:
        return {"polca.dev/row": "a"}
    labels = dict(selector.match_labels or {})
    for requirement in selector.match_expressions or ():
        if requirement.operator in ("In", "Exists"):
            labels.setdefault(requirement.key, min(requirement.values or ["x"]))
    return labels


def assert_daemon_reads(stored: Mapping[str, Any]) -> None:
    name = stored["metadata"]["name"]
    observed = ObservedCluster(NODE)
    observed.replace_policies([dict(stored)])
    assert name in observed.policies, observed.unreadable
    policy = observed.policies[name]
    assert PowerPolicy.from_stored(with_future_fields(stored)) == policy
    labels = labels_selected_by(policy)
    pods = {0: (), 1: (PodFacts("default", "llm", {"app": "llm"}, 100),)}
    for stage in policy.spec.stages:
        decided = PowerPolicy.from_stored(
            {**stored, "status": {"stage": stage.name, "nodeCount": 2}}
        )
        guard = guard_config(decided)
        assert guard is None or guard.budget_w > 0
        decision = decide_node(
            DecisionInputs(
                node_labels=labels,
                policies=[decided],
                gpu_limits={0: A100, 1: A100},
                gpu_pods=pods,
                previously_managed=False,
            )
        )
        # A stored policy is decided at its stage (reported only, in dry run), never held as
        # unknown.
        selected = policy.spec.selects(labels)
        enforced = selected and not policy.spec.dry_run
        assert decision.mode is (Mode.ENFORCE if enforced else Mode.UNMANAGED), decision.reason
        assert [p.stage for p in decision.policies] == ([stage.name] if selected else [])
    saved = to_document(Checkpoint(NODE, labels, policies=(policy,)))
    assert from_document(json.loads(json.dumps(saved)), NODE).policies == (policy,)


def assert_operator_reads(stored: Mapping[str, Any]) -> None:
    meta = stored["metadata"]
    parsed = parse_spec(stored["spec"], meta.get("generation"), meta.get("annotations"))
    assert isinstance(parsed, ParsedSpec), parsed
    skewed = with_future_fields(stored)["spec"]
    assert isinstance(parse_spec(skewed, meta.get("generation")), ParsedSpec)
    semantic_problems(parsed.spec, [labels_selected_by(PowerPolicy.from_stored(dict(stored)))])


# --- the specs -----------------------------------------------------------------------------

DNS_LABEL = st.from_regex(r"\A[a-z]([-a-z0-9]{0,6}[a-z0-9])?\Z")
LABEL_KEY = st.sampled_from(["polca.dev/row", "zone", "a", "node.kubernetes.io/gpu", "Rack_1"])
LABEL_VALUE = st.sampled_from(["a", "", "row-1", "x.y_z", "A9"])
POSITIVE = st.floats(min_value=0, max_value=1e9, allow_subnormal=False)


def optional(
    draw: st.DrawFn, out: dict[str, Any], key: str, values: st.SearchStrategy[Any]
) -> None:
    if draw(st.booleans()):
        out[key] = draw(values)


@st.composite
def label_selectors(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    optional(draw, out, "matchLabels", st.dictionaries(LABEL_KEY, LABEL_VALUE, max_size=2))
    expression = st.one_of(
        st.fixed_dictionaries(
            {
                "key": LABEL_KEY,
                "operator": st.sampled_from(["In", "NotIn"]),
                "values": st.lists(LABEL_VALUE, min_size=1, max_size=2),
            }
        ),
        st.fixed_dictionaries(
            {"key": LABEL_KEY, "operator": st.sampled_from(["Exists", "DoesNotExist"])}
        ),
    )
    optional(draw, out, "matchExpressions", st.lists(expression, max_size=2))
    return out


@st.composite
def tier_actions(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    clock = draw(st.sampled_from(["clockCeilingMHz", "clockCeilingPercent", None]))
    if clock == "clockCeilingMHz":
        out[clock] = draw(st.integers(1, 10_000))
    elif clock is not None:
        out[clock] = draw(st.floats(min_value=0.5, max_value=100))
    power = draw(st.sampled_from(["powerLimitWatts", "powerLimitPercent", None]))
    if power is not None:
        out[power] = draw(
            st.floats(min_value=1, max_value=5000 if power.endswith("Watts") else 100)
        )
    return out


@st.composite
def tiers(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(
        st.lists(DNS_LABEL.filter(lambda n: n != "idle"), min_size=1, max_size=3, unique=True)
    )
    out = []
    for name in names:
        tier: dict[str, Any] = {"name": name}
        rule = st.one_of(
            st.fixed_dictionaries({"podSelector": label_selectors()}),
            st.fixed_dictionaries(
                {
                    "priority": st.fixed_dictionaries(
                        {}, optional={"min": st.integers(-100, 0), "max": st.integers(0, 2**31 - 1)}
                    )
                }
            ),
            st.fixed_dictionaries({"namespaces": st.lists(DNS_LABEL, min_size=1, max_size=2)}),
        )
        optional(draw, tier, "rules", st.lists(rule, max_size=2))
        optional(draw, tier, "description", st.text(max_size=8))
        out.append(tier)
    return out


@st.composite
def stages(draw: st.DrawFn, tier_names: list[str]) -> list[dict[str, Any]]:
    count = draw(st.integers(2, 4))
    names = draw(st.lists(DNS_LABEL, min_size=count, max_size=count, unique=True))
    triggers = sorted(
        draw(
            st.lists(st.floats(min_value=1, max_value=200), min_size=count - 1, max_size=count - 1)
        )
    )
    out: list[dict[str, Any]] = [{"name": names[0]}]
    for name, trigger in zip(names[1:], triggers, strict=True):
        release = draw(st.floats(min_value=0, max_value=trigger, exclude_max=True))
        limited = draw(st.lists(st.sampled_from([*tier_names, "idle"]), unique=True, max_size=3))
        actions = {tier: draw(tier_actions()) for tier in limited}
        out.append(
            {"name": name, "triggerPercent": trigger, "releasePercent": release, "actions": actions}
        )
    return out


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"budgetWatts": draw(st.floats(min_value=1, max_value=1e9))}
    if draw(st.booleans()):
        spec["allNodes"] = True
    else:
        spec["nodeSelector"] = {
            "matchLabels": draw(st.dictionaries(LABEL_KEY, LABEL_VALUE, min_size=1, max_size=2))
        }
    if draw(st.booleans()):
        spec["tiers"] = draw(tiers())
        names = [t["name"] for t in spec["tiers"]]
        spec["defaultTier"] = draw(st.sampled_from(names))
        spec["stages"] = draw(stages(names))
        spec["failsafeStage"] = draw(st.sampled_from([s["name"] for s in spec["stages"][1:]]))
    if draw(st.booleans()):
        spec["telemetry"] = {"source": "prometheus", "prometheusURL": "http://prom:9090"}
        optional(
            draw, spec, "nodePower", st.just({"source": "promql", "query": "node_power_watts"})
        )
    guard = {
        "enabled": st.booleans(),
        "nodeBudgetWatts": POSITIVE,
        "intervalSeconds": st.floats(0.05, 10),
    }
    optional(draw, spec, "guard", st.fixed_dictionaries({}, optional=guard))
    optional(draw, spec, "controlIntervalSeconds", st.floats(0.1, 60))
    optional(draw, spec, "settleSeconds", st.floats(0, 600))
    optional(draw, spec, "holdSeconds", st.integers(0, 3600))
    optional(draw, spec, "dryRun", st.booleans())
    return spec


# Values a mutation puts in place of a field: nulls, near-integers, wrong types, edges.
ODD_VALUES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            0,
            -1,
            0.0,
            1110.000001,
            1110.0,
            1e9,
            1e9 + 1,
            2**31,
            2**63,
            1e-9,
            "",
            "1000",
            "idle",
            "stage1\n",  # RE2 and Python differ on `$` before a final newline
            "é" * 256,  # at a 256-character limit, 512 bytes
            "x" * 257,
            [],
            {},
        ]
    ),
    st.booleans(),
    st.integers(-(2**33), 2**33),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
).map(copy.deepcopy)  # a later mutation may change a drawn [] or {}: never the constant
ODD_SELECTORS = st.sampled_from([
    {}, {"matchLabels": {}}, {"matchLabels": {}, "matchExpressions": []},
    {"matchLabels": {"a": None}}, {"matchLabels": {"a": ""}},
    {"matchExpressions": [{"key": "a", "operator": "In"}]},
    {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
    {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
    {"matchLabels": {"bad key!": "a"}}, {"matchLabels": {"a": "-bad-"}},
]).map(copy.deepcopy)  # fmt: skip


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def nudged(value: Any) -> st.SearchStrategy[Any]:
    """Numbers just off a value: what `kubectl patch` or float arithmetic produce."""
    if not _is_number(value):
        return ODD_VALUES
    return st.sampled_from(
        [value * (1 + 1e-12), value + 1e-6, float(value), -value, value + 1, value - 1]
    )


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key and list index in a JSON document, parents first."""
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in children:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key))


def parent_of(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        document = document[key]
    return document


ODD_STAGES = ["duplicate", "reverse", "trigger-first", "failsafe-first", "only-one", "empty"]
ODD_TIERS = ["duplicate", "idle", "empty", "unknown-default"]


def _table(spec: dict[str, Any], key: str, default: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """spec[key] as a non-empty list of objects, set to `default` when it is not one."""
    table = spec.get(key)
    if not isinstance(table, list) or not table or not all(isinstance(t, dict) for t in table):
        table = spec[key] = default
    return table


def odd_stages(odd: str, spec: dict[str, Any]) -> None:
    table = _table(
        spec,
        "stages",
        [{"name": "normal"}, {"name": "stage2", "triggerPercent": 80, "releasePercent": 75}],
    )
    if odd == "duplicate":
        table.append(copy.deepcopy(table[-1]))
    elif odd == "reverse":
        table.reverse()
    elif odd == "trigger-first":
        table[0].update(triggerPercent=10, releasePercent=5)
    elif odd == "failsafe-first":
        spec["failsafeStage"] = table[0].get("name")
    else:
        del table[1 if odd == "only-one" else 0 :]


def odd_tiers(odd: str, spec: dict[str, Any]) -> None:
    table = _table(spec, "tiers", [{"name": "low"}, {"name": "high"}])
    if odd == "duplicate":
        table.append(copy.deepcopy(table[0]))
    elif odd == "idle":
        table.append({"name": "idle"})
    elif odd == "empty":
        table.clear()
    else:
        spec["defaultTier"] = "no-such-tier"


@st.composite
def mutated(draw: st.DrawFn, spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with one mutation: a value replaced, nulled or nudged, a key removed or added,
    an odd selector, stage table or tier table."""
    kind = draw(
        st.sampled_from(
            ["replace", "null", "nudge", "delete", "unknown", "selector", "stages", "tiers"]
        )
    )
    if kind == "selector":
        spec.pop("allNodes", None)
        spec["nodeSelector"] = draw(ODD_SELECTORS)
        optional(draw, spec, "allNodes", st.booleans())
        return spec
    if kind == "stages":
        odd_stages(draw(st.sampled_from(ODD_STAGES)), spec)
        return spec
    if kind == "tiers":
        odd_tiers(draw(st.sampled_from(ODD_TIERS)), spec)
        return spec
    candidates = list(paths(spec))
    if kind == "nudge":  # numbers only: near-integers where integers belong, edges of bounds
        numbers = [p for p in candidates if _is_number(parent_of(spec, p)[p[-1]])]
        integers = [p for p in numbers if isinstance(parent_of(spec, p)[p[-1]], int)]
        prefer_integers = bool(integers) and draw(st.booleans())
        candidates = integers if prefer_integers else numbers
    where = draw(st.sampled_from([(), *candidates]))
    parent = parent_of(spec, where) if where else spec
    if kind == "unknown" or not where:
        target = parent if isinstance(parent, dict) else spec
        target[draw(st.sampled_from(["futureField", "budgetWat", "Name"]))] = draw(ODD_VALUES)
    elif kind == "delete":
        del parent[where[-1]]
    elif kind == "null":
        parent[where[-1]] = None
    elif kind == "nudge":
        parent[where[-1]] = draw(nudged(parent[where[-1]]))
    else:
        parent[where[-1]] = draw(ODD_VALUES)
    return spec


@st.composite
def specs(draw: st.DrawFn) -> Any:
    """A valid spec with 0-3 mutations, or (now and then) any JSON value at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(
            st.recursive(
                ODD_VALUES,
                lambda inner: st.dictionaries(st.text(max_size=4), inner, max_size=3),
                max_leaves=5,
            )
        )
    spec = draw(valid_specs())
    for _ in range(draw(st.integers(0, 3))):
        spec = draw(mutated(spec))
    return spec


# --- the tests ---------------------------------------------------------------------------


def check_spec(client: KubeClient, spec: Any) -> str:
    """Both verdicts and the read paths for one spec; the cause of any disagreement."""
    manifest = manifest_of(spec)
    server = dry_run(client, manifest)
    report = validate(manifest)
    event(f"api server {'accepts' if server.accepted else 'refuses'}")
    stored = server.stored
    if server.status == 400:  # what a client without strict field validation stores
        stored = dry_run(client, manifest, "Ignore").stored
        event(f"without strict field validation: {'stored' if stored else 'refused'}")
    if stored is not None:
        assert_daemon_reads(stored)
        assert_operator_reads(stored)
    return disagreement(manifest, report, server)


@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=specs())
def test_stored_specs_are_readable_and_verdicts_agree(api_server: KubeClient, spec: Any) -> None:
    cause = check_spec(api_server, spec)
    # `pytest --hypothesis-show-statistics` shows how the examples split.
    event(f"disagree: {cause}" if cause else "agree")
    assert not cause or cause in DOCUMENTED, f"undocumented disagreement: {cause}"


@pytest.mark.parametrize("row", DISAGREEMENTS, ids=[row["id"] for row in DISAGREEMENTS])
def test_each_documented_disagreement_still_occurs(
    api_server: KubeClient, row: dict[str, Any]
) -> None:
    """The table stays true: its example disagrees, for the row's reason, on the row's side."""
    manifest = manifest_of(row["example"])
    server = dry_run(api_server, manifest)
    report = validate(manifest)
    assert row["accepted_by"] == "api-server"
    assert server.accepted, server.error
    assert not report.valid
    assert disagreement(manifest, report, server) == row["id"]
    assert server.stored is not None
    assert_daemon_reads(server.stored)
    assert_operator_reads(server.stored)


def test_the_documented_table_matches_docs() -> None:
    api_doc = (REPO / "docs" / "api.md").read_text()
    for row in DISAGREEMENTS:
        assert f"`{row['id']}`" in api_doc, f"docs/api.md does not list {row['id']}"
