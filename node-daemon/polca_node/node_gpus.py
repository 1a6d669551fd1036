"""The node's GPUs as the daemon's components share them: what NVML found, and the actuator.

`NodeDaemon.adopt` fills it once NVML opens; until then it is empty and has no actuator. The
reconciler writes through the actuator; the sampler, the status reporter and the inputs only read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from polca.control.plan import GpuLimits
from polca_node.actuator import Actuator, GpuApplied
from polca_node.exporter import NodeMetrics
from polca_node.gpu.backend import GpuBackend, GpuInfo, Inventory

__all__ = ["NodeGpus", "gpu_limits"]


def gpu_limits(info: GpuInfo) -> GpuLimits:
    """What a stage action is resolved against for this GPU."""
    return GpuLimits(
        max_sm_clock_mhz=info.max_sm_clock_mhz,
        min_sm_clock_mhz=min(info.supported_clocks_mhz) if info.supported_clocks_mhz else 1,
        min_limit_w=info.min_limit_w,
        max_limit_w=info.max_limit_w,
        default_limit_w=info.default_limit_w,
    )


@dataclass
class NodeGpus:
    info: dict[int, GpuInfo] = field(default_factory=dict)
    limits: dict[int, GpuLimits] = field(default_factory=dict)
    unusable: dict[int, str] = field(default_factory=dict)  # GPUs NVML could not even describe
    actuator: Actuator | None = None  # None until NVML is open

    def adopt(
        self,
        inventory: Inventory,
        backend: GpuBackend,
        metrics: NodeMetrics,
        *,
        wall_clock: Callable[[], datetime],
    ) -> None:
        self.info = inventory.by_index()
        self.limits = {index: gpu_limits(info) for index, info in self.info.items()}
        self.unusable = {i: str(e) for i, e in inventory.failures.items()}
        self.actuator = Actuator(backend, self.info, metrics, wall_clock=wall_clock)

    @property
    def applied(self) -> Mapping[int, GpuApplied]:
        """What each GPU has now, as far as the actuator knows (nothing before NVML opens)."""
        return self.actuator.applied if self.actuator is not None else {}
