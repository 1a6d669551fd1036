"""The demo's PowerPolicy: a policy file (POLCA's stages by default) sized for the demo's domain.

The domain is oversubscribed: the budget provisions ``nodes / (1 + oversubscription)`` servers'
GPU power (every GPU at its maximum power limit), and the demo runs ``nodes`` of them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from polca.api.powerpolicy import PowerPolicy
from polca.power.profiles import GpuProfile

__all__ = [
    "DOMAIN_LABEL",
    "StageLine",
    "budget_w",
    "demo_policy",
    "load_policy_file",
    "stage_lines",
]

DOMAIN_LABEL = ("polca.dev/power-domain", "polca-demo")


@dataclass(frozen=True, slots=True)
class StageLine:
    """A stage as the view and the plot draw it: where it is entered, in % of the budget."""

    index: int
    name: str
    trigger_pct: float | None  # None for the resting stage


def budget_w(profile: GpuProfile, *, nodes: int, gpus: int, oversubscription: float) -> float:
    """GPU power provisioned for the domain's base servers (nodes without the extra share)."""
    if nodes < 1 or gpus < 1 or oversubscription < 0:
        raise ValueError("need nodes ≥ 1, gpus ≥ 1 and a non-negative oversubscription")
    return nodes / (1.0 + oversubscription) * gpus * profile.max_limit_w


def load_policy_file(path: Path) -> dict[str, Any]:
    """The first PowerPolicy document of a YAML file."""
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if isinstance(document, dict) and document.get("kind") == "PowerPolicy":
            return document
    raise ValueError(f"{path}: no PowerPolicy document")


def demo_policy(
    document: Mapping[str, Any],
    *,
    name: str,
    budget_watts: float,
    telemetry: Literal["prometheus", "direct"],
    prometheus_url: str | None = None,
) -> dict[str, Any]:
    """`document` aimed at the demo's nodes, with the demo's budget and telemetry; the rest
    (stages, tiers, guard) is the file's own.

    Raises ValueError (pydantic's) when the result is not a valid PowerPolicy.
    """
    policy = copy.deepcopy(dict(document))
    policy["metadata"] = {"name": name}
    spec = policy.setdefault("spec", {})
    spec["nodeSelector"] = {"matchLabels": {DOMAIN_LABEL[0]: DOMAIN_LABEL[1]}}
    spec.pop("allNodes", None)  # the demo's nodes, never every node of the cluster
    spec["budgetWatts"] = round(budget_watts, 1)
    wanted: dict[str, Any] = {**spec.get("telemetry", {}), "source": telemetry}
    # The demo's Prometheus, where it runs: the source, or direct telemetry's fallback.
    if prometheus_url is not None:
        wanted["prometheusURL"] = prometheus_url
    else:
        wanted.pop("prometheusURL", None)
    spec["telemetry"] = wanted
    PowerPolicy.model_validate(policy)
    return policy


def stage_lines(policy: Mapping[str, Any]) -> tuple[StageLine, ...]:
    """The policy's stages (defaults filled in) with their triggers."""
    model = PowerPolicy.model_validate(policy)
    return tuple(
        StageLine(index=i, name=stage.name, trigger_pct=stage.trigger_percent)
        for i, stage in enumerate(model.spec.stages)
    )
