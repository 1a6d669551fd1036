"""A power domain's recorded history, as Prometheus holds it, on a regular time grid. Pure.

What is asked (:func:`expressions`) follows the operator's :class:`PrometheusSource`: node power
is the daemons' ``polca_gpu_power_watts``, each GPU counted once (``max by (node, gpu)``: the
same daemon scraped by two jobs gives each GPU two series) and summed per node, plus the
policy's ``overheadWatts`` per node; or the policy's own ``nodePower.query`` summed by its node
label. Only samples within the policy's ``stalenessSeconds`` of each step count (or within the
step, when it is longer: a step holds the last sample of its span), so Prometheus' 5-minute
lookback cannot hide a gap behind an old value: every instant selector is read through
``last_over_time(…[window])`` (:mod:`polca.tooling.promql_lookback`). GPU power and GPU count
per tier come from the same daemon series, labelled ``tier`` (empty: a GPU without a pod, the
idle tier).

A missing value is NaN, never zero: a step where a node of the domain has no fresh sample is a
*gap*, and the domain's power there is unknown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from polca.api.powerpolicy import PowerPolicySpec
from polca.control.tiers import IDLE_TIER
from polca.tooling.promql_lookback import bound_lookback

__all__ = [
    "GPU_POWER_METRIC",
    "Expressions",
    "Gap",
    "History",
    "HistoryError",
    "Series",
    "expressions",
    "history_from_series",
]

GPU_POWER_METRIC = "polca_gpu_power_watts"
FloatArray = npt.NDArray[np.float64]
# A raw counter where power is wanted: a metric named like one, outside rate()/increase()/….
_COUNTER = re.compile(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*_total\b")
_RATE_FUNCTIONS = re.compile(r"\b(rate|irate|increase|deriv|delta|idelta)\s*\(")


class HistoryError(ValueError):
    """The history cannot be replayed (nothing recorded, a counter where power is wanted)."""


@dataclass(frozen=True, slots=True)
class Series:
    """One series of a range query: its labels and values on the query's grid (NaN: none)."""

    labels: Mapping[str, str]
    values: FloatArray


@dataclass(frozen=True, slots=True)
class Expressions:
    node_power: str
    node_label: str
    tier_power: str
    tier_gpus: str


def expressions(spec: PowerPolicySpec, step_s: float, node_matcher: str = "") -> Expressions:
    """The PromQL the replay asks, for a policy; `node_matcher` e.g. ``node=~"row-a-.*"``."""
    window_s = max(spec.telemetry.staleness_seconds, step_s)
    selector = f"{GPU_POWER_METRIC}{{{node_matcher}}}" if node_matcher else GPU_POWER_METRIC
    # last_over_time over a plain selector is the freshness filter at a fraction of the cost.
    fresh_gpu = f"last_over_time({selector}[{window_s:g}s])"
    per_gpu_tier = f"max by (node, gpu, tier) ({fresh_gpu})"
    if spec.node_power.source == "promql":
        query = spec.node_power.query or ""
        if _COUNTER.search(query) and not _RATE_FUNCTIONS.search(query):
            raise HistoryError(
                f"spec.nodePower.query {query!r} reads a counter (…_total) as power: its value "
                "only grows and drops to zero when the exporter restarts (a counter reset); "
                "power is its rate, e.g. rate(…_joules_total[1m])"
            )
        label = spec.node_power.node_label
        # Every selector bounded to the window: timestamp() of a function's result would be
        # the step's own time, and a gap behind label_replace or sum would never show.
        node_power = f"sum by ({label}) ({bound_lookback(query, window_s)})"
    else:
        label = "node"
        node_power = f"sum by (node) (max by (node, gpu) ({fresh_gpu}))"
    return Expressions(
        node_power=node_power,
        node_label=label,
        tier_power=f"sum by (tier) ({per_gpu_tier})",
        tier_gpus=f"count by (tier) ({per_gpu_tier})",
    )


@dataclass(frozen=True, slots=True)
class Gap:
    """Steps [first, last] where the named nodes (all of them: "*") had no fresh sample."""

    start_s: float
    end_s: float
    nodes: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"start_s": self.start_s, "end_s": self.end_s, "nodes": list(self.nodes)}


@dataclass(frozen=True, slots=True)
class History:
    """Domain power per step (NaN in gaps), and GPU power and count per tier."""

    start_s: float  # Unix seconds of step 0
    step_s: float
    nodes: tuple[str, ...]
    node_power_w: FloatArray  # (steps, nodes), NaN: no fresh sample
    overhead_w: float  # per node, added to each node's power (nodePower.source gpu)
    tier_power_w: Mapping[str, FloatArray]  # tier → GPU power (steps), NaN: none
    tier_gpus: Mapping[str, FloatArray]  # tier → GPUs seen (steps)

    @property
    def steps(self) -> int:
        return int(self.node_power_w.shape[0])

    @property
    def times_s(self) -> FloatArray:
        return self.start_s + self.step_s * np.arange(self.steps, dtype=np.float64)

    @property
    def domain_power_w(self) -> FloatArray:
        """Sum over the domain's nodes; NaN wherever any node is missing (never a zero)."""
        total: FloatArray = self.node_power_w.sum(axis=1) + self.overhead_w * len(self.nodes)
        return total

    @property
    def gap_mask(self) -> npt.NDArray[np.bool_]:
        return np.asarray(np.isnan(self.node_power_w).any(axis=1))

    def gaps(self) -> list[Gap]:
        """Runs of steps with missing nodes, with the nodes missing in each run."""
        missing = np.isnan(self.node_power_w)
        out: list[Gap] = []
        mask = self.gap_mask
        i = 0
        while i < self.steps:
            if not mask[i]:
                i += 1
                continue
            j = i
            while j + 1 < self.steps and mask[j + 1]:
                j += 1
            absent = [bool(a) for a in np.asarray(missing[i : j + 1].any(axis=0)).ravel()]
            names = (
                ("*",)
                if all(absent)
                else tuple(n for n, a in zip(self.nodes, absent, strict=True) if a)
            )
            out.append(Gap(self.start_s + i * self.step_s, self.start_s + j * self.step_s, names))
            i = j + 1
        return out


def _tier_name(label: str | None) -> str:
    return label or IDLE_TIER  # the daemon labels a GPU without a pod with an empty tier


def history_from_series(
    *,
    start_s: float,
    step_s: float,
    steps: int,
    node_series: Sequence[Series],
    node_label: str,
    tier_power: Sequence[Series],
    tier_gpus: Sequence[Series],
    overhead_w: float,
    node_pattern: str | None = None,
) -> History:
    """The history from range-query series; raises HistoryError when no node has a sample."""
    pattern = re.compile(node_pattern) if node_pattern else None
    per_node: dict[str, FloatArray] = {}
    for series in node_series:
        node = series.labels.get(node_label)
        if node is None or (pattern is not None and not pattern.fullmatch(node)):
            continue
        if node in per_node:
            raise HistoryError(f"two series for node {node!r}: the query must sum by {node_label}")
        per_node[node] = series.values
    if not per_node:
        raise HistoryError("no node power in the range (the query returned nothing)")
    nodes = tuple(sorted(per_node))
    matrix = np.column_stack([per_node[n] for n in nodes]).astype(np.float64)
    if np.any(matrix[~np.isnan(matrix)] < 0):
        raise HistoryError("negative node power in the history: the query does not give watts")

    def by_tier(series: Sequence[Series]) -> dict[str, FloatArray]:
        out: dict[str, FloatArray] = {}
        for s in series:
            name = _tier_name(s.labels.get("tier"))
            out[name] = np.nan_to_num(s.values, nan=0.0) + out.get(name, np.zeros(steps))
        return out

    if matrix.shape[0] != steps or not math.isfinite(step_s):
        raise HistoryError(f"series of {matrix.shape[0]} steps on a grid of {steps}")
    return History(
        start_s=start_s,
        step_s=step_s,
        nodes=nodes,
        node_power_w=matrix,
        overhead_w=overhead_w,
        tier_power_w=by_tier(tier_power),
        tier_gpus=by_tier(tier_gpus),
    )
