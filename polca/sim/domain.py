"""The simulated power domain: servers, their tiers, the budget and the LLM service model.

Assumptions (documented in docs/simulator.md):

* A server is an 8-GPU box serving one model replica with tensor parallelism, so all its GPUs
  are in the same phase; or one member of a synchronous training job.
* The budget is the power provisioned for ``base_servers``: each server's peak (every GPU at
  its maximum power limit) plus a constant non-GPU overhead. Oversubscription adds servers
  under the same budget.
* Service times (:class:`ServiceModel`) are of the order reported for 70B-class models on 8
  GPUs; because the load is calibrated to a target peak power, results depend on them only
  through the prefill/decode split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from polca.control.plan import GpuLimits
from polca.power.profiles import GpuProfile

__all__ = [
    "SERVICE_MODELS",
    "TIER_HIGH",
    "TIER_LOW",
    "TIER_TRAIN",
    "DomainConfig",
    "Mix",
    "ServiceModel",
    "gpu_limits",
]

TIER_HIGH = "high"
TIER_LOW = "low"
TIER_TRAIN = "train"
SERVER_TIERS = (TIER_HIGH, TIER_LOW, TIER_TRAIN)


@dataclass(frozen=True, slots=True)
class ServiceModel:
    """Full-speed service times of one server (8 GPUs, one replica)."""

    prefill_tokens_per_s: float
    prefill_overhead_s: float
    tbt_base_s: float  # decode iteration time of a batch of one
    tbt_per_request_s: float  # added per request in the batch
    train_compute_s: float = 1.2  # one training iteration's compute at full speed
    train_comm_s: float = 0.3  # its communication (all-reduce), clock-independent

    def prefill_s(self, context_tokens: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return self.prefill_overhead_s + context_tokens / self.prefill_tokens_per_s


# Order-of-magnitude service times for a 70B model on one 8-GPU server (our assumptions):
# the H100 prefills ~2.3x faster than the A100 (dense FP16 tensor throughput ratio); decode
# iteration time follows HBM bandwidth (A100 2.0, H100 3.35, H200 4.8 TB/s).
SERVICE_MODELS: Mapping[str, ServiceModel] = MappingProxyType(
    {
        "A100-80GB": ServiceModel(6000.0, 0.03, 0.033, 0.00067),
        "H100-SXM": ServiceModel(14000.0, 0.015, 0.020, 0.0004),
        "H200": ServiceModel(14000.0, 0.015, 0.014, 0.00028),
    }
)


@dataclass(frozen=True, slots=True)
class Mix:
    """Shares of servers per workload; normalised, so (1, 1, 0) is half high, half low."""

    high: float = 0.5
    low: float = 0.5
    train: float = 0.0

    def __post_init__(self) -> None:
        if min(self.high, self.low, self.train) < 0 or self.high + self.low + self.train <= 0:
            raise ValueError("mix shares must be non-negative and not all zero")

    def server_tiers(self, servers: int) -> tuple[str, ...]:
        """Tier of each server, interleaved so any prefix keeps the mix (adding servers to a
        row adds them in proportion)."""
        total = self.high + self.low + self.train
        shares = {
            TIER_HIGH: self.high / total,
            TIER_LOW: self.low / total,
            TIER_TRAIN: self.train / total,
        }
        counts = dict.fromkeys(shares, 0)
        tiers: list[str] = []
        for i in range(1, servers + 1):
            # Largest deficit first; ties in SERVER_TIERS order (deterministic).
            tier = max(SERVER_TIERS, key=lambda t: shares[t] * i - counts[t])
            counts[tier] += 1
            tiers.append(tier)
        return tuple(tiers)


@dataclass(frozen=True, slots=True)
class DomainConfig:
    profile: GpuProfile
    base_servers: int = 40
    oversubscription: float = 0.0
    gpus_per_server: int = 8
    server_overhead_w: float = 1500.0
    mix: Mix = field(default_factory=Mix)
    service: ServiceModel | None = None  # None: SERVICE_MODELS[profile.name]

    def __post_init__(self) -> None:
        if self.base_servers < 1 or self.gpus_per_server < 1:
            raise ValueError("need at least one server and one GPU per server")
        if self.oversubscription < 0:
            raise ValueError("oversubscription must not be negative")
        if self.server_overhead_w < 0:
            raise ValueError("server_overhead_w must not be negative")

    @property
    def servers(self) -> int:
        return self.base_servers + round(self.base_servers * self.oversubscription)

    @property
    def provisioned_server_w(self) -> float:
        return self.gpus_per_server * self.profile.max_limit_w + self.server_overhead_w

    @property
    def budget_w(self) -> float:
        return self.base_servers * self.provisioned_server_w

    @property
    def service_model(self) -> ServiceModel:
        return self.service or SERVICE_MODELS[self.profile.name]

    @property
    def tiers(self) -> tuple[str, ...]:
        return self.mix.server_tiers(self.servers)


def gpu_limits(profile: GpuProfile) -> GpuLimits:
    return profile.limits
