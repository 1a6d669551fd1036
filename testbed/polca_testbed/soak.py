"""The soak benchmark's parts: a seeded restart plan, per-process samples, and the growth rule.

`benchmarks/bench_soak.py` runs the demo load for a long time, restarts node daemons and the
operator on this plan, samples every process's RSS, threads and open file descriptors, and
judges each process with `growth` (pure, like the plan; `sample` is the only I/O here).

The growth rule: a process *grows without bound* when the maximum of a figure in the last third
of its life exceeds the maximum in its first third by more than 20% and by more than 10 (MB,
file descriptors or threads). Only processes sampled for at least `min_life_s` are judged, and
only POLCA's own (the operator, the node daemons and the fake kubelets): the API server, etcd
and Prometheus keep history by design (revisions between compactions, a two-hour head block),
so their figures are shown, not judged.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from polca_testbed.procstat import open_fds, rss_mb, threads

__all__ = [
    "FIGURES",
    "Incarnation",
    "Restart",
    "Sample",
    "growth",
    "judged",
    "record",
    "restart_plan",
    "sample",
    "soak_table",
]

GROWTH_RATIO: Final = 1.20
GROWTH_MIN: Final = 10.0  # MB, fds or threads
FIGURES: Final = ("rss_mb", "threads", "fds")
OPERATOR: Final = "operator"
JUDGED_ROLES: Final = ("operator", "daemon/", "kubelet/")


@dataclass(frozen=True)
class Restart:
    at_s: float  # time into the replay
    target: str  # "operator" or a node's name
    kill: bool  # SIGKILL; else SIGTERM (a graceful stop)


def restart_plan(
    seed: int,
    duration_s: float,
    churned_nodes: Sequence[str],
    every_s: float,
    warmup_s: float = 30.0,
) -> list[Restart]:
    """Restarts at seeded random times (exponential gaps, mean `every_s`) after `warmup_s`.

    The first restart in the first half of the run, and every other one there, is the
    operator's; the rest hit a random node of `churned_nodes`. The operator is never restarted
    in the second half, so its last process lives at least half the run and is judged; the
    nodes not in `churned_nodes` keep their daemons the whole run, for the same reason.
    """
    rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, not a secret
    warmup_s = min(warmup_s, duration_s / 6)
    plan: list[Restart] = []
    t_s = warmup_s
    while True:
        t_s += rng.expovariate(1.0 / every_s)
        if t_s >= duration_s - 10.0:
            break
        first_half = t_s < duration_s / 2
        operator_turn = first_half and sum(r.at_s < duration_s / 2 for r in plan) % 2 == 0
        if operator_turn or not churned_nodes:
            if not first_half:
                continue
            target = OPERATOR
        else:
            target = rng.choice(list(churned_nodes))
        plan.append(Restart(round(t_s, 1), target, kill=rng.random() < 0.5))
    if not any(r.target == OPERATOR for r in plan) and duration_s / 2 > warmup_s:
        plan.append(Restart(round(rng.uniform(warmup_s, duration_s / 2), 1), OPERATOR, False))
        plan.sort(key=lambda r: r.at_s)
    return plan


@dataclass(frozen=True)
class Sample:
    t_s: float
    rss_mb: float
    threads: float
    fds: float

    def figure(self, name: str) -> float:
        value: float = getattr(self, name)
        return value


def sample(pid: int, t_s: float) -> Sample | None:
    """The process's figures now; None when it is gone (or exiting)."""
    try:
        rss, _peak = rss_mb(pid)
    except (OSError, KeyError):
        return None
    count, fds = threads(pid), open_fds(pid)
    if count is None or fds is None:
        return None
    return Sample(t_s, rss, count, fds)


@dataclass
class Incarnation:
    """One process (a pid) in one role, and its samples."""

    role: str
    pid: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def life_s(self) -> float:
        return self.samples[-1].t_s - self.samples[0].t_s if self.samples else 0.0


def judged(incarnation: Incarnation, min_life_s: float) -> bool:
    return incarnation.role.startswith(JUDGED_ROLES) and incarnation.life_s >= min_life_s


def growth(incarnation: Incarnation) -> list[str]:
    """The figures that grow without bound (the module's rule), described; empty: none."""
    samples = incarnation.samples
    start, end = samples[0].t_s, samples[-1].t_s
    first = [s for s in samples if s.t_s <= start + (end - start) / 3]
    last = [s for s in samples if s.t_s >= end - (end - start) / 3]
    out = []
    for name in FIGURES:
        before = max(s.figure(name) for s in first)
        after = max(s.figure(name) for s in last)
        if after > before * GROWTH_RATIO and after - before > GROWTH_MIN:
            out.append(f"{name} {before:g} → {after:g}")
    return out


def _figures(name: str, lives: Sequence[Incarnation]) -> str:
    values = [s.figure(name) for life in lives for s in life.samples]
    start, end = lives[0].samples[0].figure(name), lives[-1].samples[-1].figure(name)
    return f"{start:6.0f} {end:6.0f} {max(values):6.0f}"


def soak_table(incarnations: Iterable[Incarnation], min_life_s: float) -> tuple[str, bool]:
    """A row per role: processes, start/end/max of each figure, the verdict; and whether any
    judged process grows."""
    by_role: dict[str, list[Incarnation]] = {}
    for life in incarnations:
        if life.samples:
            by_role.setdefault(life.role, []).append(life)
    header = (
        f"{'process':<16} {'runs':>4}  {'RSS MB start/end/max':>20}  "
        f"{'threads start/end/max':>21}  {'fds start/end/max':>20}  verdict"
    )
    rows, grows = [header], False
    for role, lives in sorted(by_role.items(), key=lambda item: _role_order(item[0])):
        lives.sort(key=lambda life: life.samples[0].t_s)
        verdicts = [g for life in lives if judged(life, min_life_s) for g in growth(life)]
        grows = grows or bool(verdicts)
        if verdicts:
            verdict = "GROWS: " + "; ".join(verdicts)
        elif any(judged(life, min_life_s) for life in lives):
            verdict = "bounded"
        elif role.startswith(JUDGED_ROLES):
            verdict = f"not judged (no process lived {min_life_s:.0f} s)"
        else:
            verdict = "not judged (keeps history by design)"
        rows.append(
            f"{role:<16} {len(lives):>4}  {_figures('rss_mb', lives):>20}  "
            f"{_figures('threads', lives):>21}  {_figures('fds', lives):>20}  {verdict}"
        )
    return "\n".join(rows), grows


def _role_order(role: str) -> tuple[int, str]:
    for rank, prefix in enumerate(("kube-apiserver", "etcd", "prometheus", *JUDGED_ROLES)):
        if role.startswith(prefix):
            return rank, role
    return len(JUDGED_ROLES) + 3, role


def record(
    lives: dict[tuple[str, int], Incarnation], processes: Mapping[str, int], t_s: float
) -> None:
    """Add one sample of every process in `processes` (role → pid) to `lives`."""
    for role, pid in processes.items():
        got = sample(pid, t_s)
        if got is not None:
            lives.setdefault((role, pid), Incarnation(role, pid)).samples.append(got)
