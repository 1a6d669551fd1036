"""Domain power from per-node samples, pure: what the controller is fed each cycle.

Safety first: a node the domain expects but whose sample is missing or stale is not counted as
zero. It is counted at the higher of its last known power and the power of the busiest node
measured now, so a silent node (a daemon restarting, a lost scrape) can only make the domain
look fuller, never emptier, without braking the whole domain over one missing sample. With no
fresh sample at all there is no domain power (None), and the controller applies the policy's
failsafe stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["DomainNode", "DomainPower", "NodeSample", "combine"]


@dataclass(frozen=True, slots=True)
class NodeSample:
    """One node's power and when it was sampled (Unix seconds, the source's clock)."""

    power_w: float
    time_s: float


@dataclass(frozen=True, slots=True)
class DomainNode:
    """A node of the domain as the operator knows it from the cluster.

    `reporting` marks a node whose daemon registered (it has a NodePowerState): it must report
    power, and is estimated when it does not.
    """

    name: str
    reporting: bool = True


@dataclass(frozen=True, slots=True)
class DomainPower:
    """Domain power in watts, the time of its oldest sample, and how it was made up."""

    power_w: float
    sample_time_s: float
    measured_nodes: int
    estimated_nodes: int

    def age_s(self, now_s: float) -> float:
        """Seconds since the oldest sample used; never negative (clocks may disagree)."""
        return max(0.0, now_s - self.sample_time_s)


def combine(
    nodes: Iterable[DomainNode],
    samples: Mapping[str, NodeSample],
    *,
    overhead_w: float,
    now_s: float,
    staleness_s: float,
    last_known: Mapping[str, NodeSample] | None = None,
) -> DomainPower | None:
    """The domain's power: measured nodes, plus estimates for silent ones, plus overhead.

    `overhead_w` is added once per node of the domain; `last_known` holds earlier samples of
    the nodes (of any age). Samples of nodes outside the domain are ignored. None when no node
    of the domain has a fresh sample.
    """
    last_known = last_known or {}
    domain = list(nodes)
    names = {n.name for n in domain}
    oldest_s = now_s - staleness_s
    fresh = {
        node: s
        for node, s in samples.items()
        if node in names and s.time_s >= oldest_s and s.power_w >= 0
    }
    if not fresh:
        return None
    highest_w = max(s.power_w for s in fresh.values())
    silent = [n for n in domain if n.reporting and n.name not in fresh]
    estimate_w = sum(
        max(highest_w, last_known[n.name].power_w if n.name in last_known else 0.0) for n in silent
    )
    return DomainPower(
        power_w=sum(s.power_w for s in fresh.values()) + estimate_w + overhead_w * len(domain),
        sample_time_s=min(s.time_s for s in fresh.values()),
        measured_nodes=len(fresh),
        estimated_nodes=len(silent),
    )
