"""The local guard: each sample period, node GPU power against each policy's node budget.

It uses only what the node has (NVML power and the policies it last saw), so it keeps working
while the API server or Prometheus is unreachable. The ladder logic is
`polca.control.guard.decide_guard`; this module builds its configuration from a policy and
keeps one guard state per policy that selects the node.

From a policy (`spec.guard`):
- node budget: `nodeBudgetWatts`, else `budgetWatts / status.nodeCount` (the operator's count
  of the domain's nodes); without either the policy's guard is off, and says so;
- it acts above `triggerPercent` of the node budget and lets go below `releasePercent` held for
  `GUARD_HOLD_S` (hysteresis), one level per sample;
- its levels are the reaction stage's actions (`reactionStage`, default `failsafeStage`) added
  tier by tier in throttling order (idle first): each level throttles one more tier, so
  high-priority pods are throttled last; then the later stages' actions the same way, up to
  the last (brake) stage, so the guard can always bring the node back under its budget.
- node power is the sum of the GPUs' power plus `nodePower.overheadWatts`.

`run_periodic` is the drift-free ticker the daemon runs its sampling and guard on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from polca.api.convert import action_from_api, tier_set_from_spec
from polca.api.powerpolicy import PowerPolicy
from polca.control.guard import GuardConfig, GuardState, GuardStep, decide_guard
from polca.control.plan import GpuLimits, ResolvedAction, TierAction

__all__ = [
    "GUARD_HOLD_S",
    "GuardBank",
    "GuardOutcome",
    "guard_config",
    "guard_steps",
    "node_budget_w",
    "run_periodic",
]

logger = logging.getLogger(__name__)

# Power must stay under the release level this long before the guard steps down a level.
GUARD_HOLD_S = 5.0


def node_budget_w(policy: PowerPolicy) -> float | None:
    """This node's guard budget (100%) in watts, or None when it cannot be known yet."""
    guard = policy.spec.guard
    if guard.node_budget_watts is not None:
        return guard.node_budget_watts
    nodes = policy.status.node_count if policy.status is not None else None
    return policy.spec.budget_watts / nodes if nodes else None


def guard_steps(policy: PowerPolicy) -> tuple[GuardStep, ...]:
    """The guard's ladder: the reaction stage's actions one tier at a time in throttling order,
    then each later stage's, up to the last (brake) stage.

    Climbing past the reaction stage matters: when the tiers it throttles are not the ones
    drawing the power, a guard that stopped there could not bring the node back under budget.
    A level is added only where it tightens (or first sets) that tier's action.
    """
    spec = policy.spec
    reaction = spec.stage_index(spec.guard.reaction_stage or spec.failsafe_stage)
    tiers = tier_set_from_spec(spec).names
    steps: list[GuardStep] = []
    current: dict[str, TierAction] = {}
    for stage in spec.stages[reaction:]:
        for tier in tiers:
            api_action = stage.actions.get(tier)
            if api_action is None or not api_action.is_limit:
                continue
            action = action_from_api(api_action)
            if current.get(tier) != action:
                current[tier] = action
                steps.append(GuardStep(frozenset({tier}), action))
    return tuple(steps)


def guard_config(policy: PowerPolicy) -> GuardConfig | None:
    """The guard of `policy` on this node, or None when it is off or cannot run."""
    guard = policy.spec.guard
    budget_w = node_budget_w(policy)
    steps = guard_steps(policy)
    if not guard.enabled or budget_w is None or not steps:
        return None
    return GuardConfig(
        budget_w=budget_w * guard.trigger_percent / 100.0,
        steps=steps,
        release_pct=100.0 * guard.release_percent / guard.trigger_percent,
        hold_s=GUARD_HOLD_S,
    )


@dataclass(frozen=True)
class GuardOutcome:
    """One policy's guard after a sample."""

    policy: str
    level: int
    activated: bool  # went from idle to acting on this sample
    changed: bool
    reason: str
    budget_w: float  # the trigger level in watts
    actions: Mapping[int, ResolvedAction] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.level > 0


class GuardBank:
    """One guard state per policy; forgets the guards of policies that went away."""

    def __init__(self) -> None:
        self._states: dict[str, GuardState] = {}
        # The config is rebuilt only when the policy object changes (the daemon replaces it on
        # every update), not on every tick of the fast loop.
        self._configs: dict[str, tuple[PowerPolicy, GuardConfig | None]] = {}
        self.outcomes: dict[str, GuardOutcome] = {}

    def _config(self, name: str, policy: PowerPolicy) -> GuardConfig | None:
        cached = self._configs.get(name)
        if cached is None or cached[0] is not policy:
            cached = (policy, guard_config(policy))
            self._configs[name] = cached
        return cached[1]

    def tick(
        self,
        *,
        now_s: float,
        gpu_power_w: float | None,
        policies: Mapping[str, PowerPolicy],
        gpu_tiers: Mapping[str, Mapping[int, str]],
        gpu_limits: Mapping[int, GpuLimits],
    ) -> dict[str, GuardOutcome]:
        """Run every policy's guard once; `gpu_tiers` gives each GPU's tier per policy."""
        outcomes: dict[str, GuardOutcome] = {}
        for name, policy in policies.items():
            config = self._config(name, policy)
            tiers = gpu_tiers.get(name)
            if config is None or tiers is None:
                continue
            indices = sorted(gpu_limits)
            node_w = None if gpu_power_w is None else gpu_power_w + self._overhead_w(policy)
            previous = self._states.get(name, GuardState())
            decision = decide_guard(
                config,
                previous,
                now_s=now_s,
                node_power_w=node_w,
                gpu_tiers=[tiers.get(i, "") for i in indices],
            )
            self._states[name] = decision.state
            actions = {
                index: action.resolve(gpu_limits[index])
                for index, action in zip(indices, decision.actions, strict=True)
                if not action.is_noop
            }
            outcome = GuardOutcome(
                policy=name,
                level=decision.level,
                activated=previous.level == 0 and decision.level > 0,
                changed=decision.changed,
                reason=decision.reason,
                budget_w=config.budget_w,
                actions=actions,
            )
            if decision.changed:
                logger.info("guard of %s: level %d (%s)", name, decision.level, decision.reason)
            outcomes[name] = outcome
        for gone in set(self._states) - set(outcomes):
            del self._states[gone]
        for gone in set(self._configs) - set(policies):
            del self._configs[gone]
        self.outcomes = outcomes
        return outcomes

    @staticmethod
    def _overhead_w(policy: PowerPolicy) -> float:
        return policy.spec.node_power.overhead_watts

    def actions(self) -> dict[str, Mapping[int, ResolvedAction]]:
        """The guards' extra actions per policy, for `policies.decide_node`."""
        return {name: o.actions for name, o in self.outcomes.items() if o.actions}


async def run_periodic(
    tick: Callable[[], Awaitable[None]],
    period_s: Callable[[], float],
    stop: asyncio.Event,
    *,
    clock: Callable[[], float],
) -> None:
    """Call `tick` every `period_s()` seconds on `clock` until `stop` is set.

    Ticks keep their schedule (no drift); a tick that overruns skips the missed ones instead
    of bunching them up. A failing tick is logged and the next one runs.
    """
    next_s = clock()
    while not stop.is_set():
        try:
            await tick()
        except Exception:
            logger.exception("sampling tick failed")
        period = period_s()
        next_s += period
        now = clock()
        if next_s < now:
            next_s = now + period - (now - next_s) % period
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_s - now))
