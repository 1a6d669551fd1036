"""Tier resolution, pure: which tier a GPU's pod belongs to, given a policy's tier rules.

Order of precedence (documented in docs/api.md):
1. no pod on the GPU → the `idle` tier, throttled first;
2. the pod label `polca.dev/tier` naming a declared tier;
3. the first tier, in the policy's order, with a rule that matches the pod;
4. the policy's default tier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from polca.control.selectors import Operator, Requirement, Selector

TIER_LABEL = "polca.dev/tier"
IDLE_TIER = "idle"

# Labels that training operators put on their pods (checked against their sources):
# Kubeflow training-operator v1 and MPI operator, Volcano jobs, JobSet (also used by Kubeflow
# Trainer v2), and the pods of KubeRay RayJob clusters.
KUBEFLOW_JOB_LABEL = "training.kubeflow.org/job-name"
VOLCANO_JOB_LABEL = "volcano.sh/job-name"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
RAY_ORIGIN_CRD_LABEL = "ray.io/originated-from-crd"
RAY_JOB_KIND = "RayJob"
TRAINING_SELECTORS: tuple[Selector, ...] = (
    *(
        Selector(match_expressions=(Requirement(key, Operator.EXISTS),))
        for key in (KUBEFLOW_JOB_LABEL, VOLCANO_JOB_LABEL, JOBSET_NAME_LABEL)
    ),
    Selector(match_labels={RAY_ORIGIN_CRD_LABEL: RAY_JOB_KIND}),
)


@dataclass(frozen=True)
class PodFacts:
    """What tier rules can look at: identity, labels and the priority value (spec.priority)."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    priority: int | None = None


@dataclass(frozen=True)
class PriorityRange:
    """Inclusive bounds; None is unbounded. A pod without a priority never matches."""

    min: int | None = None
    max: int | None = None

    def contains(self, priority: int | None) -> bool:
        if priority is None:
            return False
        return (self.min is None or priority >= self.min) and (
            self.max is None or priority <= self.max
        )


@dataclass(frozen=True)
class TierRule:
    """Matches when every part that is set matches (an empty rule matches every pod)."""

    pod_selector: Selector | None = None
    priority: PriorityRange | None = None
    namespaces: frozenset[str] | None = None

    def matches(self, pod: PodFacts) -> bool:
        return (
            (self.pod_selector is None or self.pod_selector.matches(pod.labels))
            and (self.priority is None or self.priority.contains(pod.priority))
            and (self.namespaces is None or pod.namespace in self.namespaces)
        )


@dataclass(frozen=True)
class Tier:
    name: str
    rules: tuple[TierRule, ...] = ()

    def matches(self, pod: PodFacts) -> bool:
        return any(rule.matches(pod) for rule in self.rules)


@dataclass(frozen=True)
class TierSet:
    """A policy's tiers, first-throttled first, and the tier of pods that match none."""

    tiers: tuple[Tier, ...]
    default_tier: str

    def __post_init__(self) -> None:
        names = [t.name for t in self.tiers]
        if self.default_tier not in names:
            raise ValueError(f"default tier {self.default_tier!r} is not one of {names}")
        if IDLE_TIER in names:
            raise ValueError(f"{IDLE_TIER!r} is implicit and cannot be declared")

    @property
    def names(self) -> tuple[str, ...]:
        """Tier names in throttling order, the implicit idle tier first."""
        return (IDLE_TIER, *(t.name for t in self.tiers))


def resolve_tier(tiers: TierSet, pod: PodFacts | None) -> str:
    """The tier of a GPU held by `pod` (None: no pod holds it)."""
    if pod is None:
        return IDLE_TIER
    labelled = pod.labels.get(TIER_LABEL)
    if labelled is not None and labelled != IDLE_TIER and labelled in tiers.names:
        return labelled
    for tier in tiers.tiers:
        if tier.matches(pod):
            return tier.name
    return tiers.default_tier
