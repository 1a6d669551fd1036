"""Rules that depend on the cluster: reasons for Ready=False."""

from __future__ import annotations

from typing import Any

from polca.api.powerpolicy import PowerPolicySpec
from polca.api.semantic import (
    GUARD_BELOW_BUDGET,
    NO_NODES_SELECTED,
    OVERHEAD_EXCEEDS_BUDGET,
    semantic_problems,
)

ROW_A = {"polca.dev/power-domain": "row-a", "kubernetes.io/hostname": "n1"}
ROW_B = {"polca.dev/power-domain": "row-b", "kubernetes.io/hostname": "n2"}


def spec(**extra: Any) -> PowerPolicySpec:
    return PowerPolicySpec.model_validate(
        {
            "nodeSelector": {"matchLabels": {"polca.dev/power-domain": "row-a"}},
            "budgetWatts": 10000,
            **extra,
        }
    )


def test_a_valid_policy_has_no_problems() -> None:
    assert semantic_problems(spec(), [ROW_A, ROW_B]) == []


def test_a_selector_matching_no_node() -> None:
    problems = semantic_problems(spec(), [ROW_B])
    assert [p.reason for p in problems] == [NO_NODES_SELECTED]
    assert "spec.nodeSelector" in problems[0].message
    assert "1 nodes" in problems[0].message


def test_an_empty_cluster_selects_nothing() -> None:
    assert [p.reason for p in semantic_problems(spec(), [])] == [NO_NODES_SELECTED]


def test_match_expressions_count() -> None:
    by_expression = spec(
        nodeSelector={
            "matchExpressions": [
                {"key": "polca.dev/power-domain", "operator": "NotIn", "values": ["row-a"]}
            ]
        }
    )
    assert semantic_problems(by_expression, [ROW_B]) == []
    assert [p.reason for p in semantic_problems(by_expression, [ROW_A])] == [NO_NODES_SELECTED]


def test_overhead_alone_over_budget() -> None:
    heavy = spec(nodePower={"overheadWatts": 6000})
    assert semantic_problems(heavy, [ROW_A]) == []
    two_nodes = [ROW_A, {**ROW_A, "kubernetes.io/hostname": "n3"}]
    problems = semantic_problems(heavy, two_nodes)
    assert [p.reason for p in problems] == [OVERHEAD_EXCEEDS_BUDGET]
    assert "overheadWatts" in problems[0].message


def test_guard_budgets_below_the_domain_budget() -> None:
    tight = spec(guard={"nodeBudgetWatts": 4000, "triggerPercent": 100, "releasePercent": 90})
    problems = semantic_problems(tight, [ROW_A, {**ROW_A, "kubernetes.io/hostname": "n3"}])
    assert [p.reason for p in problems] == [GUARD_BELOW_BUDGET]
    assert "guard.nodeBudgetWatts" in problems[0].message
    disabled = spec(guard={"enabled": False, "nodeBudgetWatts": 4000})
    assert semantic_problems(disabled, [ROW_A]) == []
