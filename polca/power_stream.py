"""The node daemon's power stream (`GET /power/stream`): its wire format, pure.

The daemon writes one line per completed GPU sample on a long-lived HTTP response, so the
operator learns a node's power within milliseconds of the sample instead of at its next scrape:

    seq=41 power_w=5123.4 source=instant age_s=0.002

- ``seq``: the sample's number since the daemon started (a restarted daemon starts again at 1);
- ``power_w``: the node's GPU board power, watts, summed over the GPUs read in that sample
  (the same sum as the daemon's ``polca_gpu_power_watts`` series);
- ``source``: ``instant`` when every GPU gave its instant field (the last 100 ms), else
  ``average`` (``nvmlDeviceGetPowerUsage``, the last ~1 s) — the slower reading wins;
- ``age_s``: how old the sample was when written. Only the first line after connecting is
  older than a few ms: the daemon starts every stream with its latest sample. The reader dates a
  sample by its own clock at arrival minus this, so no two machines' clocks are compared.

Unknown keys are ignored (a later daemon may add some); an empty line is a keep-alive, which
the daemon writes while no sample comes so a vanished reader is noticed and its slot freed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "STREAM_PATH",
    "PowerLine",
    "PowerLineError",
    "PowerSource",
    "format_line",
    "parse_line",
]

STREAM_PATH = "/power/stream"
PowerSource = Literal["instant", "average"]
_SOURCES: frozenset[str] = frozenset(("instant", "average"))
# A line is a few dozen bytes; anything much longer is not ours.
MAX_LINE_BYTES = 512


class PowerLineError(ValueError):
    """A line that is not a power-stream line."""


@dataclass(frozen=True, slots=True)
class PowerLine:
    seq: int
    power_w: float
    source: PowerSource
    age_s: float = 0.0


def format_line(line: PowerLine) -> bytes:
    return (
        f"seq={line.seq} power_w={line.power_w:.1f} source={line.source} age_s={line.age_s:.3f}\n"
    ).encode()


def parse_line(raw: bytes) -> PowerLine | None:
    """The sample a line carries; None for a keep-alive (empty line).

    Raises PowerLineError for anything else that is not a valid line: a reader must not count
    a garbled or negative power.
    """
    if len(raw) > MAX_LINE_BYTES:
        raise PowerLineError(f"line of {len(raw)} bytes (at most {MAX_LINE_BYTES})")
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise PowerLineError("not ASCII") from exc
    if not text:
        return None
    fields: dict[str, str] = {}
    for part in text.split():
        key, sep, value = part.partition("=")
        if not sep:
            raise PowerLineError(f"{part!r} is not key=value")
        fields[key] = value
    try:
        seq = int(fields["seq"])
        power_w = float(fields["power_w"])
        source = fields["source"]
        age_s = float(fields.get("age_s", "0"))
    except KeyError as exc:
        raise PowerLineError(f"no {exc.args[0]} in {text[:80]!r}") from exc
    except ValueError as exc:
        raise PowerLineError(f"bad number in {text[:80]!r}") from exc
    if not math.isfinite(power_w) or power_w < 0:
        raise PowerLineError(f"power_w {fields['power_w']} is not a power")
    if not math.isfinite(age_s) or age_s < 0:
        raise PowerLineError(f"age_s {fields['age_s']} is not an age")
    if seq < 1:
        raise PowerLineError(f"seq {seq} is not a sample number")
    if source not in _SOURCES:
        raise PowerLineError(f"source {source!r} is not instant or average")
    return PowerLine(seq, power_w, "instant" if source == "instant" else "average", age_s)
