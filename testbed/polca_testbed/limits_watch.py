"""Watching the fake GPUs' limits for the whole of a disturbance, against what is demanded.

`LimitsWatch` samples every node's applied clock ceilings and power limits in a background
thread (every 20 ms by default), the test records what the policy demands as it changes it
(`demand`), and `assert_held` checks every sample with `limits_invariant.violations`. A
failure lists the violating samples and the logs of the processes involved.

    with LimitsWatch([node], logs=[cluster.state_dir / "logs"]) as watch:
        watch.demand(node, ceilings(1305, 1110, 1110, 1110), why="stage3")
        ...  # kill, stop, corrupt
    watch.assert_held()
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from polca_testbed.limits_invariant import (
    Demand,
    GpuKnobs,
    LimitsSample,
    describe_violations,
    violations,
)
from polca_testbed.nodes import SimNode
from polca_testbed.sampling import BackgroundSampler

__all__ = ["LimitsWatch", "ceilings"]

SAMPLE_INTERVAL_S = 0.02


def ceilings(*mhz: int | None) -> tuple[GpuKnobs, ...]:
    """A demand of clock ceilings alone, by GPU index (None: nothing demanded of that GPU)."""
    return tuple(GpuKnobs(clock_ceiling_mhz=m) for m in mhz)


class LimitsWatch:
    """Samples `nodes`' GPU limits from `with` to its end; see the module doc."""

    def __init__(
        self,
        nodes: Sequence[SimNode],
        *,
        logs: Iterable[Path] = (),
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self.nodes = list(nodes)
        self.logs = [*(n.directory for n in self.nodes), *logs]
        self.demands: list[Demand] = []
        self._sampler = BackgroundSampler(self._read, interval_s=interval_s)

    def _read(self) -> dict[str, tuple[GpuKnobs, ...] | None]:
        return {node.name: node.gpu_knobs() for node in self.nodes}

    def __enter__(self) -> LimitsWatch:
        self._sampler.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._sampler.__exit__(*exc_info)

    def demand(
        self, node: SimNode, gpus: Sequence[GpuKnobs], *, grace_s: float = 0.0, why: str = ""
    ) -> None:
        """From now on the policy demands `gpus` of `node` (a tightening within `grace_s`)."""
        self.demands.append(Demand(time.monotonic(), node.name, tuple(gpus), grace_s, why))

    @property
    def samples(self) -> list[LimitsSample]:
        return [
            LimitsSample(at_s, name, gpus)
            for at_s, by_node in list(self._sampler.samples)
            for name, gpus in by_node.items()
        ]

    def summary(self) -> str:
        """How many samples, over how long, and the longest gap between two (a loaded machine
        may starve the sampling thread: the gap says how continuous the watch really was)."""
        times = [at_s for at_s, _ in list(self._sampler.samples)]
        if len(times) < 2:
            return f"{len(times)} samples"
        gap_s = max(b - a for a, b in itertools.pairwise(times))
        return (
            f"{len(times)} samples of {len(self.nodes)} node(s) over {times[-1] - times[0]:.1f} s, "
            f"longest gap {gap_s * 1000:.0f} ms"
        )

    def assert_held(self) -> str:
        """Raise with every violating sample and the logs to read; else return the summary."""
        assert self.demands, "nothing was demanded: the watch checks nothing"
        found = violations(self.samples, self.demands)
        if found:
            logs = "\n".join(f"  {path}" for path in self.logs)
            raise AssertionError(
                f"a GPU limit the policy still demands was lifted ({self.summary()}):\n"
                f"{describe_violations(found)}\ndemands:\n"
                + "\n".join(f"  {d}" for d in self.demands)
                + f"\nlogs of the processes involved:\n{logs}"
            )
        return self.summary()
