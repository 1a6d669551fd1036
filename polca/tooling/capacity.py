"""How many servers a row holds, from its own replayed history. Pure.

The row as recorded has N nodes (the nodes of the history). For k = 0, 1, 2, … the history is
scaled to N + k servers (:func:`polca.tooling.replay.replay`, scale (N + k) / N) and replayed
through the policy; a size is **safe** when the replay has zero brake-level moments and each
tier's throttled share of its GPU-hours is within its bound. The answer is the largest k such
that every size up to N + k is safe (a size past the first unsafe one is not offered, even if
it happens to pass), with its margin: how far its peak stays below the budget, and what fails
at the next size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from polca.control.plan import ControlPlan
from polca.tooling.history import History
from polca.tooling.replay import ReplayResult, ShedModel, replay, with_independent_servers

__all__ = ["DEFAULT_MAX_THROTTLED_SHARE", "CapacityResult", "Criteria", "Level", "search"]

# Tier impact bounds as shares of each tier's GPU-hours spent throttled. High priority: POLCA's
# high-priority P50 bound is +1%, and a throttled hour costs at most the throttle's slowdown, so
# throttling it at most 1% of the time keeps its impact far inside. Low priority: POLCA keeps
# its throughput within 2%; a throttled low-tier GPU loses ≤ ~20% speed at POLCA's clocks, so 10%
# of the time at that cost stays within 2%.
DEFAULT_MAX_THROTTLED_SHARE: Mapping[str, float] = MappingProxyType({"high": 0.01, "low": 0.10})


@dataclass(frozen=True, slots=True)
class Criteria:
    max_brake_moments: int = 0
    max_throttled_share: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_MAX_THROTTLED_SHARE)
    )

    def failures(self, result: ReplayResult) -> list[str]:
        out = []
        if result.brake_moments > self.max_brake_moments:
            out.append(f"{result.brake_moments} brake-level moments")
        for tier, bound in self.max_throttled_share.items():
            use = result.tiers.get(tier)
            if use is not None and use.throttled_share > bound:
                out.append(f"{tier} throttled {100 * use.throttled_share:.2f}% > {100 * bound:g}%")
        if result.gap_steps:
            out.append(f"{result.gap_steps} steps in gaps (failsafe, not judged)")
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "max_brake_moments": self.max_brake_moments,
            "max_throttled_share": dict(self.max_throttled_share),
        }


@dataclass(frozen=True, slots=True)
class Level:
    servers: int
    result: ReplayResult
    failures: tuple[str, ...]

    @property
    def safe(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, object]:
        return {
            "servers": self.servers,
            "safe": self.safe,
            "failures": list(self.failures),
            **self.result.summary(),
        }


@dataclass(frozen=True, slots=True)
class CapacityResult:
    base_servers: int
    levels: tuple[Level, ...]
    criteria: Criteria

    @property
    def largest_safe(self) -> Level | None:
        best = None
        for level in self.levels:
            if not level.safe:
                break
            best = level
        return best

    @property
    def first_unsafe(self) -> Level | None:
        return next((level for level in self.levels if not level.safe), None)

    def as_dict(self) -> dict[str, object]:
        best, nxt = self.largest_safe, self.first_unsafe
        return {
            "base_servers": self.base_servers,
            "largest_safe_servers": best.servers if best else None,
            "extra_servers": best.servers - self.base_servers if best else None,
            "oversubscription": (best.servers / self.base_servers - 1.0) if best else None,
            "margin_pct": best.result.summary()["margin_pct"] if best else None,
            "next_size_fails": list(nxt.failures) if nxt else None,
            "criteria": self.criteria.as_dict(),
            "levels": [level.as_dict() for level in self.levels],
        }


def search(
    plan: ControlPlan,
    budget_w: float,
    history: History,
    *,
    criteria: Criteria,
    shed: ShedModel | None,
    max_extra: int,
    progress: Callable[[int, int], None] | None = None,
    independent: bool = False,
) -> CapacityResult:
    """Sizes N, N+1, … N+max_extra until the first unsafe one (it is kept, as the margin).

    Added servers are the row's average server scaled in (correlated: conservative), or with
    `independent`, recorded nodes shifted in time (:func:`with_independent_servers`:
    optimistic); the two bound the answer's uncertainty from correlation."""
    base = len(history.nodes)
    levels: list[Level] = []
    for extra in range(max_extra + 1):
        servers = base + extra
        if independent:
            grown = with_independent_servers(history, extra)
            result = replay(plan, budget_w, grown, shed=shed)
        else:
            result = replay(plan, budget_w, history, scale=servers / base, shed=shed)
        level = Level(servers, result, tuple(criteria.failures(result)))
        levels.append(level)
        if progress is not None:
            progress(extra + 1, max_extra + 1)
        if not level.safe:
            break
    return CapacityResult(base, tuple(levels), criteria)
