"""Load sources for the fake NVML: what each fake GPU is doing, over time.

A load source answers `demand(gpu_index, elapsed_s)` with a `PhaseDemand` (shares of time in
prefill, decode and training; the rest is idle). `elapsed_s` counts from the fake's creation on
its clock, so scripted loads replay the same way under fake time. Sources are called on every
NVML call of the fake and must be cheap.

Spec strings (for the CLI and the demo), see `parse_load_spec`:
  idle                                  every GPU idle
  constant:prefill=0.1,decode=0.8       every GPU at that demand
  file:/path/load.json                  FileLoad: edit the file to change a running fake's load
  trace:PATH,server=I,servers=N,speedup=S[,profile=H100-SXM][,seed=K]
                                        TraceLoad: server I of an N-server domain replaying the
                                        request trace PATH (Azure CSV, or `synthetic`) S times
                                        faster than real time
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from polca.power.model import PhaseDemand
from polca.power.profiles import GpuProfile, get_profile
from polca.sim.demand import DemandTimeline, build_timeline
from polca.sim.domain import SERVICE_MODELS, TIER_HIGH
from polca.sim.synthetic import CONV_PARAMS, generate
from polca.sim.trace import Trace, read_trace

__all__ = [
    "IDLE",
    "ConstantLoad",
    "FileLoad",
    "LoadSource",
    "ScriptedLoad",
    "TraceLoad",
    "demand_from_mapping",
    "parse_load_spec",
]

logger = logging.getLogger(__name__)

IDLE = PhaseDemand()

_FIELDS = {"prefill": "prefill_frac", "decode": "decode_frac", "train": "train_frac"}


@runtime_checkable
class LoadSource(Protocol):
    def demand(self, gpu_index: int, elapsed_s: float) -> PhaseDemand:
        """What GPU `gpu_index` is doing `elapsed_s` seconds after the fake started."""
        ...


def demand_from_mapping(data: Mapping[str, Any]) -> PhaseDemand:
    """A PhaseDemand from {"prefill_frac": .., "decode_frac": .., "train_frac": ..}; the short
    keys "prefill", "decode", "train" work too, and "context" (true/false: whether a process
    holds a CUDA context; by default, when the GPU has work). Unknown keys are an error."""
    values: dict[str, float] = {}
    context: bool | None = None
    for key, value in data.items():
        if key == "context":
            if not isinstance(value, bool):
                raise ValueError(f"context must be true or false, got {value!r}")
            context = value
            continue
        name = _FIELDS.get(key, key)
        if name not in _FIELDS.values():
            valid = [*sorted(_FIELDS.values()), "context"]
            raise ValueError(f"unknown load field {key!r}; use {valid}")
        values[name] = float(value)
    return PhaseDemand(**values, context=context)


@dataclass(frozen=True, slots=True)
class ConstantLoad:
    """The same demand for ever; `per_gpu` overrides it for single GPUs."""

    default: PhaseDemand = IDLE
    per_gpu: Mapping[int, PhaseDemand] = field(default_factory=dict)

    def demand(self, gpu_index: int, elapsed_s: float) -> PhaseDemand:  # noqa: ARG002
        return self.per_gpu.get(gpu_index, self.default)


class ScriptedLoad:
    """A timeline of (start_s, demand) steps; each holds until the next step starts.

    Before the first step the GPU is idle. With `period_s`, the timeline repeats. `per_gpu`
    gives single GPUs their own timeline.
    """

    def __init__(
        self,
        steps: Sequence[tuple[float, PhaseDemand]],
        *,
        per_gpu: Mapping[int, Sequence[tuple[float, PhaseDemand]]] | None = None,
        period_s: float | None = None,
    ) -> None:
        if period_s is not None and period_s <= 0:
            raise ValueError("period_s must be positive")
        self._default = self._sorted(steps)
        self._per_gpu = {index: self._sorted(own) for index, own in (per_gpu or {}).items()}
        self._period_s = period_s

    @staticmethod
    def _sorted(
        steps: Sequence[tuple[float, PhaseDemand]],
    ) -> tuple[list[float], list[PhaseDemand]]:
        ordered = sorted(steps, key=lambda step: step[0])
        return [start for start, _ in ordered], [demand for _, demand in ordered]

    def demand(self, gpu_index: int, elapsed_s: float) -> PhaseDemand:
        starts, demands = self._per_gpu.get(gpu_index, self._default)
        t = elapsed_s % self._period_s if self._period_s else elapsed_s
        position = bisect.bisect_right(starts, t) - 1
        return demands[position] if position >= 0 else IDLE


class FileLoad:
    """Demand read from a small JSON file, re-read whenever the file changes::

        {"default": {"prefill_frac": 0.1, "decode_frac": 0.8},
         "gpus": {"3": {"train_frac": 1.0}}}

    Tests and the demo change a running daemon's fake load by rewriting the file (write a temp
    file and rename it over, so a reader never sees half a file). A missing or malformed file
    keeps the last good load (idle before the first) and logs once per change.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._load = ConstantLoad()

    def demand(self, gpu_index: int, elapsed_s: float) -> PhaseDemand:
        self._refresh()
        return self._load.demand(gpu_index, elapsed_s)

    def _refresh(self) -> None:
        # The inode and size join the mtime: two writes within the file system's timestamp
        # granularity still differ in one of them (rename-over gives a new inode).
        try:
            stat = os.stat(self.path)
            seen = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
        except OSError:
            seen = (-1, -1, -1)
        if seen == self._seen:
            return
        with self._lock:
            if seen == self._seen:
                return
            self._seen = seen
            try:
                self._load = self.parse(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                logger.warning("keeping the previous fake load: %s: %s", self.path, exc)

    @staticmethod
    def parse(text: str) -> ConstantLoad:
        """The load a FileLoad file describes. Raises ValueError on any mistake."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a load file holds a JSON object")  # noqa: TRY004 - one error type
        unknown = set(data) - {"default", "gpus"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; use 'default' and 'gpus'")
        default = demand_from_mapping(data.get("default", {}))
        per_gpu = {
            int(index): demand_from_mapping(entry) for index, entry in data.get("gpus", {}).items()
        }
        return ConstantLoad(default, per_gpu)


class TraceLoad:
    """One server's share of a request trace, replayed: every GPU follows that server's demand.

    The whole domain's timeline (:func:`polca.sim.demand.build_timeline`, all `servers`
    inference servers, requests round-robin, the rate calibrated so the busiest bin peaks at
    79% of a server's provisioned GPU power) is computed once here, deterministically for a
    `seed`, so the daemons of one domain given the same trace and seed agree on the whole and
    each replays its own row. GPU time `elapsed_s` is trace time `elapsed_s × speedup`; bins
    are a wall second (longer for very long replays, at most `MAX_BINS` of them) and the
    replay starts over after the trace's end. Construction costs up to a few seconds for an
    hour-long trace; `demand` is then one lookup.
    """

    MAX_BINS = 4000
    SYNTHETIC_SPAN_S = 3600.0  # the synthetic trace's length: an hour, as the Azure conv trace

    def __init__(
        self,
        trace: Trace,
        *,
        server: int,
        servers: int,
        speedup: float,
        profile: GpuProfile,
        seed: int = 0,
    ) -> None:
        if servers < 1 or not 0 <= server < servers:
            raise ValueError(f"server={server} is outside 0..{servers - 1} (servers={servers})")
        if not speedup > 0 or math.isinf(speedup):
            raise ValueError(f"speedup={speedup} must be positive and finite")
        wall_s = max(trace.duration_s / speedup, 1.0)
        update_s = max(1.0, wall_s / self.MAX_BINS)
        self.server = server
        self.timeline: DemandTimeline = build_timeline(
            trace,
            kinds=(TIER_HIGH,) * servers,
            profile=profile,
            service=SERVICE_MODELS[profile.name],
            speedup=speedup,
            duration_s=wall_s,
            update_s=update_s,
            warmup_s=0.0,  # trace time 0 is elapsed time 0
            seed=seed,
        )
        bin_s = self.timeline.bin_s
        # Bin middles, so float rounding never picks the neighbouring bin.
        self._demands = tuple(
            self.timeline.at((b + 0.5) * bin_s)[server] for b in range(self.timeline.bins)
        )

    @property
    def period_s(self) -> float:
        """Wall seconds after which the replay starts over."""
        return self.timeline.duration_s

    def demand(self, gpu_index: int, elapsed_s: float) -> PhaseDemand:  # noqa: ARG002
        b = int((elapsed_s % self.period_s) // self.timeline.bin_s)
        return self._demands[min(b, len(self._demands) - 1)]

    @classmethod
    def from_spec(cls, argument: str) -> TraceLoad:
        """From `PATH,server=I,servers=N,speedup=S[,profile=MODEL][,seed=K]` (PATH may be
        `synthetic`: the generator fitted to the Azure conv trace). Errors name the bad part."""
        where = "trace load spec"
        path, _, rest = argument.partition(",")
        path = path.strip()
        if not path or "=" in path:
            raise ValueError(f"{where} starts with the trace's PATH (or 'synthetic')")
        fields: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, separator, value = part.partition("=")
            key = key.strip()
            if not separator or not value.strip():
                raise ValueError(f"expected key=value in {where}, got {part!r}")
            if key not in _TRACE_KEYS:
                raise ValueError(f"unknown key {key!r} in {where}; use {', '.join(_TRACE_KEYS)}")
            fields[key] = value.strip()
        missing = [key for key in _TRACE_REQUIRED if key not in fields]
        if missing:
            raise ValueError(f"{where} needs {', '.join(f'{key}=...' for key in missing)}")
        server = _spec_number(fields, "server", int)
        servers = _spec_number(fields, "servers", int)
        speedup = _spec_number(fields, "speedup", float)
        seed = _spec_number(fields, "seed", int) if "seed" in fields else 0
        try:
            profile = get_profile(fields.get("profile", "H100-SXM"))
            trace = _trace(path, seed)
            return cls(
                trace, server=server, servers=servers, speedup=speedup, profile=profile, seed=seed
            )
        except OSError as exc:
            raise ValueError(f"{where}: cannot read trace {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


_TRACE_REQUIRED = ("server", "servers", "speedup")
_TRACE_KEYS = (*_TRACE_REQUIRED, "profile", "seed")


_Number = TypeVar("_Number", int, float)


def _spec_number(fields: Mapping[str, str], key: str, kind: type[_Number]) -> _Number:
    try:
        return kind(fields[key])
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ValueError(f"{key}={fields[key]!r} in trace load spec is not {noun}") from None


def _trace(path: str, seed: int) -> Trace:
    if path == "synthetic":
        rng = np.random.default_rng(seed)
        return generate(CONV_PARAMS, TraceLoad.SYNTHETIC_SPAN_S, rng)
    return read_trace(path)


def parse_load_spec(spec: str) -> LoadSource:
    """A load source from a CLI spec (see the module docstring)."""
    kind, _, argument = spec.partition(":")
    if kind == "idle" and not argument:
        return ConstantLoad()
    if kind == "constant":
        fields: dict[str, str] = {}
        for part in filter(None, argument.split(",")):
            key, separator, value = part.partition("=")
            if not separator:
                raise ValueError(f"expected key=value in load spec, got {part!r}")
            fields[key.strip()] = value.strip()
        return ConstantLoad(demand_from_mapping(fields))
    if kind == "file" and argument:
        return FileLoad(argument)
    if kind == "trace":
        return TraceLoad.from_spec(argument)
    raise ValueError(
        f"bad load spec {spec!r}; use 'idle', 'constant:prefill=0.1,decode=0.8', 'file:PATH' or "
        "'trace:PATH,server=I,servers=N,speedup=S'"
    )
