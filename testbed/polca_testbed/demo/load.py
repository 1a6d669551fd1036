"""The demo's load files: each simulated node's phase demand, written where its fake GPUs read it.

The demand itself (trace → per-node phase shares, calibrated) is :mod:`polca.sim.demand`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from polca.power.model import PhaseDemand

__all__ = ["load_file_payload", "write_load_file"]


def load_file_payload(demand: PhaseDemand) -> dict[str, dict[str, float]]:
    """The FileLoad JSON (see polca_node.gpu.load) giving every GPU of a node `demand`."""
    # Rounded down, so the shares never sum to more than one.
    return {
        "default": {
            "prefill_frac": _floor4(demand.prefill_frac),
            "decode_frac": _floor4(demand.decode_frac),
            "train_frac": _floor4(demand.train_frac),
        }
    }


def _floor4(value: float) -> float:
    return math.floor(value * 1e4) / 1e4


def write_load_file(path: Path, payload: Mapping[str, object]) -> None:
    """Write atomically (temp file renamed over), so the daemon never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)
