"""Deleting a PowerPolicy: wait until its nodes have let go of it, and record the restore.

The node daemons restore a GPU's defaults when its node leaves every policy (a deleted policy
counts as left as soon as it carries a deletionTimestamp), and drop the policy from their
NodePowerState's `status.policies`. The operator's finalizer holds the policy until no node
lists it any more, then posts an event; after `wait_s` it lets go anyway, with a warning
naming the nodes still holding it, so a dead daemon cannot block deletion (or uninstall)
forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from polca_operator.indexes import ClusterView

__all__ = ["DEFAULT_RESTORE_WAIT_S", "RestoreVerdict", "restore_verdict"]

DEFAULT_RESTORE_WAIT_S = 120.0
MAX_NODES_NAMED = 10


@dataclass(frozen=True)
class RestoreVerdict:
    outcome: Literal["wait", "restored", "gave-up"]
    holding: tuple[str, ...]

    @property
    def message(self) -> str:
        named = ", ".join(self.holding[:MAX_NODES_NAMED])
        more = len(self.holding) - MAX_NODES_NAMED
        nodes = named + (f" and {more} more" if more > 0 else "")
        if self.outcome == "restored":
            return (
                "policy deleted: every node has left it; GPUs without another policy are back "
                "at their default clocks and power limits"
            )
        if self.outcome == "wait":
            return f"waiting for {len(self.holding)} nodes to leave the policy: {nodes}"
        return (
            f"policy deleted while {len(self.holding)} nodes still report it: {nodes}; each "
            "restores its GPUs when its daemon sees the policy gone (a stopped daemon keeps "
            "them as they are)"
        )


def restore_verdict(
    policy: str, view: ClusterView, *, waited_s: float, wait_s: float
) -> RestoreVerdict:
    """Whether the deletion of `policy` may complete."""
    holding = tuple(sorted(node for node, report in view.reports() if policy in report.policies))
    if not holding:
        return RestoreVerdict("restored", ())
    return RestoreVerdict("wait" if waited_s < wait_s else "gave-up", holding)
