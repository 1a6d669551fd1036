"""Find the largest oversubscription each policy sustains under POLCA's criteria.

Levels are whole servers (``extra`` servers on top of ``base_servers``). For each policy the
search climbs in coarse steps until a level fails, then bisects between the last passing and the
first failing level. It assumes that, for a policy, passing is monotone in the number of
servers (more servers under the same budget never make things easier); every evaluated level is
reported so a non-monotone case is visible. Baselines are shared between policies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from polca.sim.engine import SimResult
from polca.sim.metrics import Metrics
from polca.sim.policies import PolicyConfig
from polca.sim.runner import Progress, Scenario, baseline_run, calibrate_load, run_policy

__all__ = ["PolicySearch", "SearchResult", "search"]


def _no_progress(_label: str, _fraction: float) -> None:
    return None


@dataclass(frozen=True, slots=True)
class PolicySearch:
    policy: str
    best_extra_servers: int | None  # None: even the base row fails
    best: Metrics | None
    evaluated: tuple[Metrics, ...]  # every level run, in server order

    def best_oversubscription(self, base_servers: int) -> float | None:
        if self.best_extra_servers is None:
            return None
        return self.best_extra_servers / base_servers


@dataclass(frozen=True, slots=True)
class SearchResult:
    load_scale: float
    base_servers: int
    policies: tuple[PolicySearch, ...]


def search(
    scenario: Scenario,
    policies: Sequence[PolicyConfig],
    *,
    coarse_step: float = 0.1,
    max_oversubscription: float = 1.0,
    progress: Progress = _no_progress,
) -> SearchResult:
    """The largest passing oversubscription per policy (see the module docstring)."""
    if coarse_step <= 0 or max_oversubscription < 0:
        raise ValueError("coarse_step must be positive and max_oversubscription non-negative")
    base = scenario.domain.base_servers
    step = max(1, round(base * coarse_step))
    max_extra = round(base * max_oversubscription)
    load_scale = calibrate_load(scenario, progress)
    baselines: dict[int, SimResult] = {}

    def baseline(extra: int) -> SimResult:
        if extra not in baselines:
            domain = replace(scenario.domain, oversubscription=extra / base)
            baselines[extra] = baseline_run(scenario, domain, load_scale, progress)
        return baselines[extra]

    results = []
    for policy in policies:
        cache: dict[int, Metrics] = {}

        def evaluate(
            extra: int, policy: PolicyConfig = policy, cache: dict[int, Metrics] = cache
        ) -> bool:
            if extra not in cache:
                domain = replace(scenario.domain, oversubscription=extra / base)
                run = run_policy(
                    scenario,
                    domain,
                    policy,
                    load_scale=load_scale,
                    baseline=baseline(extra),
                    progress=progress,
                )
                cache[extra] = run.metrics
            return cache[extra].passed

        best = _climb(evaluate, step=step, max_extra=max_extra)
        results.append(
            PolicySearch(
                policy=policy.name,
                best_extra_servers=best,
                best=cache[best] if best is not None else None,
                evaluated=tuple(cache[e] for e in sorted(cache)),
            )
        )
    return SearchResult(load_scale=load_scale, base_servers=base, policies=tuple(results))


def _climb(passes: Callable[[int], bool], *, step: int, max_extra: int) -> int | None:
    """Largest ``extra`` in [0, max_extra] with ``passes(extra)``, assuming monotonicity."""
    if not passes(0):
        return None
    good, bad = 0, None
    extra = step
    while extra <= max_extra:
        if passes(extra):
            good = extra
            extra += step
        else:
            bad = extra
            break
    if bad is None:
        if good < max_extra and passes(max_extra):
            return max_extra
        bad = min(good + step, max_extra)
    while bad - good > 1:
        mid = (good + bad) // 2
        if passes(mid):
            good = mid
        else:
            bad = mid
    return good
