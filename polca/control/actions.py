"""Combining actions, pure: what one GPU gets when several policies (nested domains) act on it.

A node may be selected by several PowerPolicies (a row inside a hall). Per GPU, each policy's
current stage names an action for the GPU's tier; the GPU gets, knob by knob, the most
restrictive of them: the lowest clock ceiling and the lowest power limit, where no limit
(None) loses to any limit. Percentages are resolved against the GPU first, so "90% of max
clock" and "1275 MHz" compare as what they mean on that GPU.
"""

from __future__ import annotations

from collections.abc import Iterable

from polca.control.plan import GpuLimits, ResolvedAction, TierAction

__all__ = ["GpuLimits", "ResolvedAction", "most_restrictive", "resolve_for_gpu"]

UNLIMITED = ResolvedAction()


def most_restrictive(actions: Iterable[ResolvedAction]) -> ResolvedAction:
    """Knob-wise minimum; no actions at all means no limit."""
    result = UNLIMITED
    for action in actions:
        result = result.stronger(action)
    return result


def resolve_for_gpu(actions: Iterable[TierAction], gpu: GpuLimits) -> ResolvedAction:
    """The settings for `gpu` when each of `actions` (one per policy) applies to it."""
    return most_restrictive(action.resolve(gpu) for action in actions)
