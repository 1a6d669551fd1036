"""When a streamed sample should run a control cycle before its interval ends. Pure.

With direct telemetry every node's samples arrive as they are taken (`power_streams`), so the
loop need not wait up to a whole control interval to see a domain cross a trigger. Escalation
is urgent and de-escalation is not: the loop wakes early only when the domain's streamed power
reaches the trigger of the next stage up (triggers never decrease, so that is "a stage above
the current one"); release stays on the interval, where the hold time is counted anyway.

The rule is edge-triggered against what the last cycle saw: power that was already over the
trigger when the cycle read it (and, say, the settle time kept the stage) wakes nothing more;
the interval's cycles take it from there. So a flood of samples cannot spin the loop, and the
loop's minimum gap between cycles bounds the rest. Silent nodes' estimates and the predicted
trend are left to the cycle itself: a hint that comes late only costs the interval it saves.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from polca.control.plan import ControlPlan

__all__ = ["EscalationWatch", "wake_at_w"]


def wake_at_w(
    plan: ControlPlan, stage: int, budget_w: float, *, overhead_w: float = 0.0
) -> float | None:
    """The streamed GPU power (the domain's, less its fixed overhead) at which to run the next
    cycle early: the next stage's trigger. None at the last stage: nothing to escalate to."""
    if stage >= plan.last_stage:
        return None
    return plan.stages[stage + 1].trigger_pct * budget_w / 100.0 - overhead_w


class EscalationWatch:
    """The domain's latest streamed power per node, and whether a sample crossed the trigger."""

    def __init__(self) -> None:
        self._power_w: dict[str, float] = {}
        self._total_w = 0.0
        self._at_w: float | None = None
        self._above = True  # nothing to cross until armed

    @property
    def total_w(self) -> float:
        """The sum of the domain nodes' latest samples (as a cycle would see it now)."""
        return self._total_w

    def retain(self, nodes: Collection[str]) -> None:
        """Forget nodes that left the domain."""
        self._power_w = {n: w for n, w in self._power_w.items() if n in nodes}
        self._total_w = math.fsum(self._power_w.values())

    def arm(self, at_w: float | None, seen_w: float) -> bool:
        """After a cycle: watch for `at_w` (None: nothing), measured against `seen_w`, the total
        when the cycle read its power. True when samples that came during the cycle already
        crossed: run the next cycle at once."""
        self._at_w = at_w
        self._above = at_w is None or seen_w >= at_w
        return self._crossed()

    def sample(self, node: str, power_w: float) -> bool:
        """A node's new sample; True when it takes the total over the armed trigger."""
        self._total_w += power_w - self._power_w.get(node, 0.0)
        self._power_w[node] = power_w
        return self._crossed()

    def _crossed(self) -> bool:
        if self._at_w is None:
            return False
        above = self._total_w >= self._at_w
        crossed = above and not self._above
        self._above = above
        return crossed
