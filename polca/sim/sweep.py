"""``polca sweep``'s engine: policies × traces × seeds × oversubscription levels, and the worst
case per policy.

**Cells.** One cell is one member of the evaluation set (:mod:`polca.sim.evalset`), one seed and
one row size: its uncapped baseline and every policy, as ``polca simulate --oversubscription``
runs them (:func:`polca.sim.runner.run_level`), so a cell can be rerun on its own. Cells run in
parallel in a :class:`concurrent.futures.ProcessPoolExecutor` (the engine is single-threaded
NumPy; processes, not threads, use every core), or on a Dask cluster
(:mod:`polca.sim.sweep_backends`); the results do not depend on where a cell ran.

**Load.** Unless a load scale is given, the load of each (member, seed) is calibrated, as
``polca simulate`` calibrates it, so that its base row peaks at the target share of the budget:
every row is provisioned for its own workload, and what the seeds vary is the workload's detail
at that peak. ``calibrate_once`` instead calibrates each member on the first seed and replays
the other seeds at that load (other days of the same service): a seed that peaks higher then
leaves every policy, ``none`` included, less headroom, which folds day-to-day load variation
into the result.

**Worst case** (:func:`worst_cases`, pure): per policy, the largest level such that every cell
at that level *and every lower level of the grid* meets all criteria, for every trace and every
seed. Requiring the lower levels too means a lucky pass above a failure is not credited. The
**binding criterion** is the one failed by the most (trace, seed) cells at the first failing
level. The **gain over none** is the difference of the worst cases in servers, as a share of the
base row.
"""

from __future__ import annotations

import copyreg
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass, field, replace
from functools import lru_cache
from types import MappingProxyType

from polca.sim.domain import DomainConfig
from polca.sim.evalset import EvalTrace, load_eval_trace
from polca.sim.metrics import CRITERIA_KEYS, Criteria, Metrics
from polca.sim.policies import PolicyConfig
from polca.sim.runner import Scenario, calibrate_load, run_level
from polca.sim.sweep_backends import DEFAULT_BACKEND, sweep_executor
from polca.sim.trace import Trace

__all__ = [
    "Cell",
    "Outcome",
    "SweepProgress",
    "SweepResult",
    "SweepSpec",
    "WorstCase",
    "run_sweep",
    "worst_cases",
]

SweepProgress = Callable[[int, int, str], None]  # (done, total, what just finished)


def _mapping_proxy(items: dict[object, object]) -> MappingProxyType[object, object]:
    return MappingProxyType(items)


def _reduce_mapping_proxy(
    proxy: MappingProxyType[object, object],
) -> tuple[Callable[[dict[object, object]], MappingProxyType[object, object]], tuple[object]]:
    return _mapping_proxy, (dict(proxy),)


# Plans keep their per-tier actions in read-only MappingProxyType views, which pickle cannot
# send to a worker process; rebuilding the view from a dict copy keeps them read-only there.
copyreg.pickle(MappingProxyType, _reduce_mapping_proxy)
NONE_POLICY = "none"


def _quiet(_done: int, _total: int, _label: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """Everything a sweep runs; picklable, so workers get it whole."""

    members: tuple[EvalTrace, ...]
    seeds: tuple[int, ...]
    extra_servers: tuple[int, ...]  # the grid of row sizes, as servers over the base row
    policies: tuple[PolicyConfig, ...]
    domain: DomainConfig  # oversubscription and mix are set per cell
    duration_s: float
    dt_s: float = 0.1
    load_scale: float | None = None  # None: calibrate (see calibrate_once)
    calibrate_once: bool = False  # True: per member on the first seed; False: per seed
    target_peak_pct: float = 79.0
    meter_window_s: float = 1.0
    brake_hold_s: float = 10.0
    criteria: Criteria = field(default_factory=Criteria)
    engine: str = "request"  # polca.sim.runner.ENGINES

    def __post_init__(self) -> None:
        if not self.members or not self.seeds or not self.extra_servers or not self.policies:
            raise ValueError("a sweep needs at least one trace, seed, level and policy")
        if min(self.extra_servers) < 0:
            raise ValueError("oversubscription levels must not be negative")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"trace names must be unique, got {names}")

    def scenario(self, member: EvalTrace, trace: Trace, seed: int) -> Scenario:
        return Scenario(
            trace=trace,
            domain=replace(self.domain, mix=member.mix),
            duration_s=self.duration_s,
            dt_s=self.dt_s,
            seed=seed,
            load_scale=self.load_scale,
            target_peak_pct=self.target_peak_pct,
            meter_window_s=self.meter_window_s,
            brake_hold_s=self.brake_hold_s,
            criteria=self.criteria,
            engine=self.engine,
        )

    @property
    def cells(self) -> int:
        return len(self.members) * len(self.seeds) * len(self.extra_servers)


@dataclass(frozen=True, slots=True)
class Cell:
    """One policy's run in one cell, with its full metrics."""

    trace: str
    seed: int
    extra_servers: int
    metrics: Metrics


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the worst case needs of a cell (tests build these by hand)."""

    policy: str
    trace: str
    seed: int
    extra_servers: int
    passed: bool
    failed_criteria: tuple[str, ...] = ()
    high_e2e_p50_impact: float = 0.0
    low_e2e_p50_impact: float = 0.0
    low_throughput_rel: float = 1.0
    ttft_p99_s: tuple[tuple[str, float], ...] = ()  # (tier, P99 time to first token)

    @classmethod
    def of(cls, cell: Cell) -> Outcome:
        m = cell.metrics
        high, low = m.tiers.get("high"), m.tiers.get("low")
        return cls(
            policy=m.policy,
            trace=cell.trace,
            seed=cell.seed,
            extra_servers=cell.extra_servers,
            passed=m.passed,
            failed_criteria=m.failed_criteria,
            high_e2e_p50_impact=high.e2e_p50_impact if high and high.requests else 0.0,
            low_e2e_p50_impact=low.e2e_p50_impact if low and low.requests else 0.0,
            low_throughput_rel=low.throughput_rel if low and low.requests else 1.0,
            ttft_p99_s=tuple((t, v.ttft_p99_s) for t, v in m.tiers.items() if v.requests),
        )


@dataclass(frozen=True, slots=True)
class WorstCase:
    """One policy's worst case over every trace and seed of a sweep."""

    policy: str
    extra_servers: int | None  # None: even the grid's lowest level fails somewhere
    oversubscription: float | None
    gain_over_none: float | None  # oversubscription − none's; None without a none row
    first_failing_extra: int | None  # None: every level passes everywhere
    binding: str | None  # the criterion most cells fail at the first failing level
    failures_at_first_failing: tuple[tuple[str, int], ...]  # (criterion, cells), most first
    failing_traces: tuple[str, ...]  # traces with a failing seed at the first failing level
    per_trace_extra: tuple[tuple[str, int | None], ...]  # each trace's own worst case (seeds)
    # At the worst-case level, the worst over its cells (None when no level passes):
    high_e2e_p50_impact: float | None
    low_e2e_p50_impact: float | None
    low_throughput_rel: float | None
    ttft_p99_s: tuple[tuple[str, float], ...]  # per tier, the largest P99 TTFT


def _safe_extra(outcomes: Iterable[Outcome], levels: Sequence[int]) -> int | None:
    """Largest level such that it and every lower level pass in every given outcome."""
    failing = {o.extra_servers for o in outcomes if not o.passed}
    best: int | None = None
    for level in levels:
        if level in failing:
            break
        best = level
    return best


def worst_cases(outcomes: Sequence[Outcome], *, base_servers: int) -> tuple[WorstCase, ...]:
    """Per policy (in order of appearance), the worst case over traces and seeds."""
    if base_servers < 1:
        raise ValueError("base_servers must be at least 1")
    levels = sorted({o.extra_servers for o in outcomes})
    policies = list(dict.fromkeys(o.policy for o in outcomes))
    traces = list(dict.fromkeys(o.trace for o in outcomes))
    partial: list[WorstCase] = []
    for policy in policies:
        mine = [o for o in outcomes if o.policy == policy]
        best = _safe_extra(mine, levels)
        above = [lv for lv in levels if best is None or lv > best]
        first_failing = above[0] if above else None
        failing_cells = [o for o in mine if o.extra_servers == first_failing and not o.passed]
        counts = Counter(c for o in failing_cells for c in o.failed_criteria)
        # Most cells first; ties in the criteria's own order (brakes first), deterministic.
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], _criterion_rank(kv[0])))
        at_best = [o for o in mine if o.extra_servers == best]
        partial.append(
            WorstCase(
                policy=policy,
                extra_servers=best,
                oversubscription=None if best is None else best / base_servers,
                gain_over_none=None,
                first_failing_extra=first_failing,
                binding=ranked[0][0] if ranked else None,
                failures_at_first_failing=tuple(ranked),
                failing_traces=tuple(t for t in traces if any(o.trace == t for o in failing_cells)),
                per_trace_extra=tuple(
                    (t, _safe_extra([o for o in mine if o.trace == t], levels)) for t in traces
                ),
                high_e2e_p50_impact=_worst(at_best, lambda o: o.high_e2e_p50_impact, max),
                low_e2e_p50_impact=_worst(at_best, lambda o: o.low_e2e_p50_impact, max),
                low_throughput_rel=_worst(at_best, lambda o: o.low_throughput_rel, min),
                ttft_p99_s=_worst_ttft(at_best),
            )
        )
    none = next((w for w in partial if w.policy == NONE_POLICY), None)
    return tuple(replace(w, gain_over_none=_gain(w, none)) for w in partial)


def _criterion_rank(key: str) -> int:
    return CRITERIA_KEYS.index(key) if key in CRITERIA_KEYS else len(CRITERIA_KEYS)


def _worst(
    outcomes: Sequence[Outcome],
    value: Callable[[Outcome], float],
    pick: Callable[[Iterable[float]], float],
) -> float | None:
    values = [value(o) for o in outcomes if not math.isnan(value(o))]
    return pick(values) if values else None


def _worst_ttft(outcomes: Sequence[Outcome]) -> tuple[tuple[str, float], ...]:
    worst: dict[str, float] = {}
    for o in outcomes:
        for tier, value in o.ttft_p99_s:
            worst[tier] = max(worst.get(tier, value), value)
    return tuple(worst.items())


def _gain(w: WorstCase, none: WorstCase | None) -> float | None:
    if none is None or w.oversubscription is None or none.oversubscription is None:
        return None
    return w.oversubscription - none.oversubscription


@dataclass(frozen=True, slots=True)
class SweepResult:
    spec: SweepSpec
    load_scales: tuple[tuple[str, int, float], ...]  # (trace, seed, load scale)
    cells: tuple[Cell, ...]

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        return tuple(Outcome.of(c) for c in self.cells)

    def worst_cases(self) -> tuple[WorstCase, ...]:
        return worst_cases(self.outcomes, base_servers=self.spec.domain.base_servers)


# --- running (each function below runs in a worker process) ---------------------------------


@lru_cache(maxsize=4)
def _trace(member: EvalTrace, duration_s: float, seed: int) -> Trace:
    # A worker runs many cells of one trace and seed in a row: read or generate it once.
    return load_eval_trace(member, duration_s, seed)


def _calibrate(spec: SweepSpec, member: EvalTrace, seed: int) -> float:
    return calibrate_load(spec.scenario(member, _trace(member, spec.duration_s, seed), seed))


def _run_cell(
    spec: SweepSpec, member: EvalTrace, seed: int, extra: int, load_scale: float
) -> list[Cell]:
    scenario = spec.scenario(member, _trace(member, spec.duration_s, seed), seed)
    base = spec.domain.base_servers
    level = run_level(scenario, extra / base, spec.policies, load_scale=load_scale)
    return [Cell(member.name, seed, extra, run.metrics) for run in level.runs.values()]


def run_sweep(
    spec: SweepSpec,
    *,
    workers: int | None = None,
    progress: SweepProgress = _quiet,
    backend: str = DEFAULT_BACKEND,
    scheduler_address: str | None = None,
) -> SweepResult:
    """Run every cell of ``spec`` on ``workers`` local processes (default: every core), or on
    a Dask cluster (``backend="dask"``: a local one, or the scheduler at ``scheduler_address``).
    """
    with sweep_executor(backend, workers=workers, scheduler_address=scheduler_address) as pool:
        scales = _load_scales(spec, pool, progress)
        futures: dict[Future[list[Cell]], str] = {}
        # Largest rows first: they take longest, so the pool drains evenly at the end.
        for extra in sorted(spec.extra_servers, reverse=True):
            for member in spec.members:
                for seed in spec.seeds:
                    future = pool.submit(
                        _run_cell, spec, member, seed, extra, scales[member.name, seed]
                    )
                    futures[future] = (
                        f"{member.name}, seed {seed}, {spec.domain.base_servers + extra} servers"
                    )
        cells: list[Cell] = []
        for done, future in enumerate(as_completed(futures), start=1):
            cells.extend(future.result())
            progress(done, len(futures), futures[future])
    order = {m.name: i for i, m in enumerate(spec.members)}
    cells.sort(key=lambda c: (order[c.trace], c.seed, c.extra_servers))
    return SweepResult(
        spec=spec,
        load_scales=tuple(
            (m.name, seed, scales[m.name, seed]) for m in spec.members for seed in spec.seeds
        ),
        cells=tuple(cells),
    )


def _load_scales(
    spec: SweepSpec, pool: Executor, progress: SweepProgress
) -> dict[tuple[str, int], float]:
    """Load scale per (member name, seed)."""
    if spec.load_scale is not None:
        return {(m.name, seed): spec.load_scale for m in spec.members for seed in spec.seeds}
    calibrated = spec.seeds[:1] if spec.calibrate_once else spec.seeds
    futures = {
        pool.submit(_calibrate, spec, m, seed): (m.name, seed)
        for m in spec.members
        for seed in calibrated
    }
    scales: dict[tuple[str, int], float] = {}
    for done, future in enumerate(as_completed(futures), start=1):
        name, seed = futures[future]
        scales[name, seed] = future.result()
        progress(done, len(futures), f"load calibrated: {name}, seed {seed}")
    for m in spec.members:  # calibrate_once: the first seed's load for every seed
        for seed in spec.seeds:
            scales.setdefault((m.name, seed), scales[m.name, spec.seeds[0]])
    return scales
