"""Rules the schema cannot express, because they depend on the cluster (e.g. which nodes exist).

The operator sets `Ready=False` with the first problem's reason and message, and keeps
enforcing what it enforced before: a problem never lifts limits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from polca.api.powerpolicy import PowerPolicySpec


@dataclass(frozen=True)
class Problem:
    reason: str  # CamelCase, for the condition's reason
    message: str


NO_NODES_SELECTED = "NoNodesSelected"
OVERHEAD_EXCEEDS_BUDGET = "OverheadExceedsBudget"
GUARD_BELOW_BUDGET = "GuardBudgetBelowDomainBudget"


def semantic_problems(
    spec: PowerPolicySpec, node_labels: Sequence[Mapping[str, str]]
) -> list[Problem]:
    """Problems of `spec` in a cluster whose nodes carry `node_labels` (one mapping per node)."""
    selected = sum(1 for labels in node_labels if spec.selects(labels))
    if selected == 0:
        return [
            Problem(
                NO_NODES_SELECTED,
                f"spec.nodeSelector matches none of the {len(node_labels)} nodes in the "
                "cluster; the policy controls nothing",
            )
        ]
    problems: list[Problem] = []
    if spec.node_power.source == "gpu":
        overhead_w = spec.node_power.overhead_watts * selected
        if overhead_w >= spec.budget_watts:
            problems.append(
                Problem(
                    OVERHEAD_EXCEEDS_BUDGET,
                    f"spec.nodePower.overheadWatts × {selected} nodes = {overhead_w:g} W, not "
                    f"below spec.budgetWatts ({spec.budget_watts:g} W): the domain would be "
                    "over budget with idle GPUs",
                )
            )
    guard = spec.guard
    if guard.enabled and guard.node_budget_watts is not None:
        guard_total_w = guard.node_budget_watts * guard.trigger_percent / 100 * selected
        if guard_total_w < spec.budget_watts:
            problems.append(
                Problem(
                    GUARD_BELOW_BUDGET,
                    f"spec.guard.nodeBudgetWatts at triggerPercent over {selected} nodes is "
                    f"{guard_total_w:g} W, below spec.budgetWatts ({spec.budget_watts:g} W): "
                    "the guards would throttle nodes before the domain needs it",
                )
            )
    return problems
