"""Spec checks beyond the CRD schema: parse the spec into a plan, and check it against the cluster.

The schema and CEL catch nearly every mistake at `kubectl apply` time. The spec is read as
stored (`from_stored`: unknown fields of a newer CRD ignored, near-integers taken as the server
takes them), so only what the models really refuse is left to catch here (schema drift, an
old CRD), with the rules that depend on the cluster (`polca.api.semantic`). Any problem sets
`Ready=False` with its reason.

A spec that does not parse is not used: the operator keeps enforcing the last valid plan.
A spec with cluster-dependent problems is used, because each of them can only make it
throttle more, never less (an overhead that exceeds the budget inflates domain power, guard
budgets below the domain's make the daemons act sooner, a domain without nodes has no
telemetry and so sits at its failsafe stage). Either way a bad edit never lifts limits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from polca.api.convert import plan_from_spec
from polca.api.powerpolicy import (
    PowerPolicySpec,
    dropped_labels_message,
    labels_dropped_by_kubectl,
)
from polca.api.semantic import NO_NODES_SELECTED, Problem, semantic_problems
from polca.control.plan import ControlPlan
from polca.control.selectors import Selector

__all__ = [
    "INVALID_SPEC",
    "ParsedSpec",
    "SemanticCache",
    "is_invalid",
    "parse_spec",
]

INVALID_SPEC = "InvalidSpec"
MAX_ERRORS_SHOWN = 5


@dataclass(frozen=True)
class ParsedSpec:
    """A valid spec and what the control loop derives from it once per generation."""

    spec: PowerPolicySpec
    plan: ControlPlan
    selector: Selector
    generation: int | None


def _describe(exc: ValidationError) -> str:
    errors = exc.errors()
    parts = [
        f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
        for e in errors[:MAX_ERRORS_SHOWN]
    ]
    more = len(errors) - MAX_ERRORS_SHOWN
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_spec(
    raw: Mapping[str, Any],
    generation: int | None,
    annotations: Mapping[str, str] | None = None,
) -> ParsedSpec | Problem:
    """The spec as a plan, or the problem that keeps it from being one. `annotations` (the
    object's) tell whether kubectl dropped a null label value of the selector."""
    try:
        spec = PowerPolicySpec.from_stored(dict(raw))
        plan = plan_from_spec(spec)
    except ValidationError as exc:
        return Problem(INVALID_SPEC, _describe(exc))
    except ValueError as exc:  # the plan's own invariants
        return Problem(INVALID_SPEC, str(exc))
    selector = spec.node_selector
    dropped = labels_dropped_by_kubectl(
        annotations, selector.match_labels if selector is not None else None
    )
    if dropped:
        return Problem(INVALID_SPEC, dropped_labels_message(dropped))
    return ParsedSpec(spec, plan, spec.selector(), generation)


def is_invalid(problem: Problem) -> bool:
    """Whether a problem is a fault of the spec (Invalid=True), not of the cluster around it."""
    return problem.reason != NO_NODES_SELECTED


class SemanticCache:
    """`semantic_problems`, recomputed only when the spec or the domain's size changes."""

    def __init__(self) -> None:
        self._key: tuple[int, int | None, int, int] | None = None
        self._problems: tuple[Problem, ...] = ()

    def problems(
        self,
        parsed: ParsedSpec,
        selected: int,
        all_node_labels: Sequence[Mapping[str, str]],
    ) -> tuple[Problem, ...]:
        key = (id(parsed.spec), parsed.generation, selected, len(all_node_labels))
        if key != self._key:
            self._problems = tuple(semantic_problems(parsed.spec, all_node_labels))
            self._key = key
        return self._problems
