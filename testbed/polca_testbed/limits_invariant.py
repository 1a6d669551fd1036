"""The chaos suite's one invariant, as a pure function: no GPU limit lifted that the policy
still demands.

A test records what the policy demands of each node over time (`Demand`: from `since_s` on,
each GPU's clock ceiling and power limit may be at most this) and samples what the GPUs have
(`LimitsSample`). `violations` checks every sample against the demand binding at its moment:

- a GPU without a clock ceiling, or with a higher one, or a higher power limit, violates;
  tighter is always allowed (the node's guard may throttle further);
- a demand that tightens a GPU gets `grace_s` to reach it: until then the looser of the old
  and the new demand binds (so the old one still does: a cap held before is never excused);
- a demand that loosens binds from `since_s` on: lifting is allowed as soon as it is asked;
- a sample that could not be read (`gpus is None`) violates wherever something is demanded:
  what cannot be seen cannot be called held.

    demands = [Demand(0.0, "n1", (knobs(1110), knobs(None)))]
    assert violations(samples, demands) == []
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Demand",
    "GpuKnobs",
    "LimitsSample",
    "Violation",
    "binding_demand",
    "describe_violations",
    "violations",
]

# Power limits are set in mW and read back in W: anything within a watt's thousandth is equal.
POWER_TOLERANCE_W = 1e-3


@dataclass(frozen=True)
class GpuKnobs:
    """One GPU's limits. Applied: None ceiling = clocks unlocked, None power = not readable.
    Demanded: None = nothing demanded for that knob."""

    clock_ceiling_mhz: float | None = None
    power_limit_w: float | None = None


@dataclass(frozen=True)
class LimitsSample:
    """What one node's GPUs had at `at_s` (by GPU index), or None when it could not be read."""

    at_s: float
    node: str
    gpus: tuple[GpuKnobs, ...] | None


@dataclass(frozen=True)
class Demand:
    """From `since_s` on (until the node's next demand), what the policy demands of `node`'s
    GPUs (by index; GPUs past the end: nothing). A tightening has `grace_s` to arrive."""

    since_s: float
    node: str
    gpus: tuple[GpuKnobs, ...]
    grace_s: float = 0.0
    why: str = ""


@dataclass(frozen=True)
class Violation:
    sample: LimitsSample
    gpu: int | None  # None: the sample was unreadable
    knob: str
    applied: float | None
    demanded: float | None
    demand: Demand

    def __str__(self) -> str:
        where = f"t={self.sample.at_s:.3f} {self.sample.node}"
        why = f" ({self.demand.why})" if self.demand.why else ""
        if self.gpu is None:
            return f"{where}: GPUs unreadable while a demand{why} binds"
        applied = "unlocked" if self.applied is None else f"{self.applied:g}"
        return (
            f"{where} GPU {self.gpu}: {self.knob} {applied} above the demanded "
            f"{self.demanded:g}{why}"
        )


def _looser(a: float | None, b: float | None) -> float | None:
    """The looser of two demanded maxima (None: no demand, the loosest)."""
    return None if a is None or b is None else max(a, b)


def _loosest(a: tuple[GpuKnobs, ...], b: tuple[GpuKnobs, ...]) -> tuple[GpuKnobs, ...]:
    """Per GPU and knob, the looser of two demands (a GPU only one names: no demand)."""
    return tuple(
        GpuKnobs(
            _looser(x.clock_ceiling_mhz, y.clock_ceiling_mhz),
            _looser(x.power_limit_w, y.power_limit_w),
        )
        for x, y in zip(a, b, strict=False)
    )


def binding_demand(
    demands: Sequence[Demand], at_s: float
) -> tuple[Demand, tuple[GpuKnobs, ...]] | None:
    """The demand in force at `at_s` among one node's demands (in time order) and the limits
    that bind then; None before the first."""
    current = None
    for index, demand in enumerate(demands):
        if demand.since_s <= at_s:
            current = index
    if current is None:
        return None
    demand = demands[current]
    if current > 0 and at_s < demand.since_s + demand.grace_s:
        return demand, _loosest(demands[current - 1].gpus, demand.gpus)
    return demand, demand.gpus


def _check(
    sample: LimitsSample, demand: Demand, binding: tuple[GpuKnobs, ...]
) -> Iterable[Violation]:
    demanded_any = any(
        k.clock_ceiling_mhz is not None or k.power_limit_w is not None for k in binding
    )
    if sample.gpus is None:
        if demanded_any:
            yield Violation(sample, None, "limits", None, None, demand)
        return
    for gpu, want in enumerate(binding):
        have = sample.gpus[gpu] if gpu < len(sample.gpus) else GpuKnobs()
        ceiling = want.clock_ceiling_mhz
        if ceiling is not None and (
            have.clock_ceiling_mhz is None or have.clock_ceiling_mhz > ceiling
        ):
            yield Violation(sample, gpu, "clock ceiling MHz", have.clock_ceiling_mhz, ceiling,
                            demand)  # fmt: skip
        limit = want.power_limit_w
        if limit is not None and (
            have.power_limit_w is None or have.power_limit_w > limit + POWER_TOLERANCE_W
        ):
            yield Violation(sample, gpu, "power limit W", have.power_limit_w, limit, demand)


def violations(samples: Iterable[LimitsSample], demands: Iterable[Demand]) -> list[Violation]:
    """Every sample that breaks the demand binding at its moment (see the module doc)."""
    by_node: dict[str, list[Demand]] = {}
    for demand in sorted(demands, key=lambda d: d.since_s):
        by_node.setdefault(demand.node, []).append(demand)
    found: list[Violation] = []
    for sample in samples:
        binding = binding_demand(by_node.get(sample.node, []), sample.at_s)
        if binding is not None:
            found.extend(_check(sample, *binding))
    return found


def describe_violations(found: Sequence[Violation], *, limit: int = 20) -> str:
    """The first `limit` violations, one a line, and how many more there were."""
    lines = [str(v) for v in found[:limit]]
    if len(found) > limit:
        lines.append(f"... and {len(found) - limit} more")
    return "\n".join(lines)
