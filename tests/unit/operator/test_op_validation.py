"""Spec checks beyond the schema."""

from __future__ import annotations

import json

from polca.api.powerpolicy import LAST_APPLIED
from polca.api.semantic import NO_NODES_SELECTED, OVERHEAD_EXCEEDS_BUDGET, Problem
from polca_operator.fakes import DOMAIN_LABEL, policy_body
from polca_operator.validation import (
    INVALID_SPEC,
    ParsedSpec,
    SemanticCache,
    is_invalid,
    parse_spec,
)


def test_valid_spec_becomes_a_plan_and_a_selector() -> None:
    parsed = parse_spec(policy_body()["spec"], 7)
    assert isinstance(parsed, ParsedSpec)
    assert parsed.generation == 7
    assert [s.name for s in parsed.plan.stages] == ["normal", "stage1", "stage2", "stage3", "brake"]
    assert parsed.selector.matches({DOMAIN_LABEL: "row-a"})
    assert not parsed.selector.matches({DOMAIN_LABEL: "row-b"})


def test_invalid_spec_names_the_fields() -> None:
    problem = parse_spec({**policy_body()["spec"], "budgetWatts": -1, "holdSeconds": "x"}, 1)
    assert isinstance(problem, Problem)
    assert problem.reason == INVALID_SPEC
    assert "spec.budgetWatts" in problem.message
    assert "spec.holdSeconds" in problem.message


def test_cross_field_rule_is_reported() -> None:
    problem = parse_spec({**policy_body()["spec"], "failsafeStage": "normal"}, 1)
    assert isinstance(problem, Problem)
    assert "must not be the first" in problem.message


def test_only_cluster_independent_problems_make_the_spec_invalid() -> None:
    assert not is_invalid(Problem(NO_NODES_SELECTED, ""))
    assert is_invalid(Problem(OVERHEAD_EXCEEDS_BUDGET, ""))


def test_semantic_problems_are_cached_until_the_domain_changes() -> None:
    parsed = parse_spec(
        {**policy_body(budget_w=1000)["spec"], "nodePower": {"overheadWatts": 600}}, 1
    )
    assert isinstance(parsed, ParsedSpec)
    cache = SemanticCache()
    labels = [{DOMAIN_LABEL: "row-a"}]
    assert cache.problems(parsed, 1, labels) == ()
    labels.append({DOMAIN_LABEL: "row-a"})
    # Same key (selected count and node count unchanged as passed): cached answer.
    assert cache.problems(parsed, 1, labels[:1]) == ()
    (problem,) = cache.problems(parsed, 2, labels)
    assert problem.reason == OVERHEAD_EXCEEDS_BUDGET


def test_a_label_kubectl_dropped_is_a_problem() -> None:
    # `kubectl apply` sent {rack: r1} for {rack: r1, row: }: the stored domain is wider.
    body = policy_body()
    written = {"spec": {"nodeSelector": {"matchLabels": {DOMAIN_LABEL: "row-a", "row": None}}}}
    problem = parse_spec(body["spec"], 1, {LAST_APPLIED: json.dumps(written)})
    assert isinstance(problem, Problem)
    assert problem.reason == INVALID_SPEC
    assert "kubectl apply dropped row" in problem.message
    assert isinstance(parse_spec(body["spec"], 1, {LAST_APPLIED: json.dumps(body)}), ParsedSpec)
