"""When the daemon reads the GPUs' energy counters: at the status heartbeat, not every tick.

One `nvmlDeviceGetTotalEnergyConsumption` costs 3.9 ms on an H200 (docs/measurements), i.e.
~31 ms of every 0.5 s tick on 8 GPUs, where every other read costs microseconds. Energy is only
exported as a counter, so the daemon reads it once per heartbeat and carries the last value in
between: the series stays, the cost falls by the ratio of the two periods.
"""

from __future__ import annotations

from dataclasses import replace

from polca_node.gpu.backend import GpuReading

__all__ = ["EnergyCadence"]


class EnergyCadence:
    """Says whether this sample reads energy; fills skipped samples from the last reading."""

    def __init__(self, interval_s: float) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must not be negative")
        self.interval_s = interval_s
        self._read_at_s: float | None = None

    def due(self, now_s: float) -> bool:
        return self._read_at_s is None or now_s - self._read_at_s >= self.interval_s

    def done(self, now_s: float) -> None:
        """Energy was read at `now_s`."""
        self._read_at_s = now_s

    @staticmethod
    def carried(reading: GpuReading, previous: GpuReading | None) -> GpuReading:
        """`reading`, with the previous energy value where this one skipped the counter."""
        if reading.energy_j is not None or previous is None:
            return reading
        return replace(reading, energy_j=previous.energy_j)
