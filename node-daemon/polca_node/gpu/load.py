"""Load sources for the fake NVML: what each fake GPU is doing, over time.

A load source answers `demand(gpu_index, elapsed_s)` with a `PhaseDemand` (shares of time in
prefill, decode and training; the rest is idle). `elapsed_s` counts from the fake's creation on
its clock, so scripted loads replay the same way under fake time. Sources are called on every
NVML call of the fake and must be cheap.

Spec strings (for the CLI and the demo), see `parse_load_spec`:
  idle                                  every GPU idle
  constant:prefill=0.1,decode=0.8       every GPU at that demand
  file:/path/load.json                  FileLoad: edit the file to change a running fake's load
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from polca.power.model import PhaseDemand

__all__ = [
    "IDLE",
    "ConstantLoad",
    "FileLoad",
    "LoadSource",
    "ScriptedLoad",
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
    keys "prefill", "decode", "train" work too. Unknown keys are an error (typos)."""
    values: dict[str, float] = {}
    for key, value in data.items():
        name = _FIELDS.get(key, key)
        if name not in _FIELDS.values():
            raise ValueError(f"unknown load field {key!r}; use {sorted(_FIELDS.values())}")
        values[name] = float(value)
    return PhaseDemand(**values)


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
    raise ValueError(
        f"bad load spec {spec!r}; use 'idle', 'constant:prefill=0.1,decode=0.8' or 'file:PATH'"
    )
