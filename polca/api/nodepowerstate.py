"""The NodePowerState kind: one per node, written by that node's daemon."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from polca.api.base import ApiModel, CelRule
from polca.api.conditions import ConditionedStatus
from polca.api.meta import ObjectMeta
from polca.api.powerpolicy import API_VERSION, KOPF_STATUS_DESCRIPTION
from polca.control.tiers import IDLE_TIER

MAX_GPUS = 64
MAX_POLICIES = 16
MAX_SUPPORTED_CLOCKS = 512

NODE_NAME_MATCHES = CelRule(
    rule="!has(self.spec) || self.spec.nodeName == self.metadata.name",
    message="spec.nodeName must equal metadata.name: a NodePowerState is named after its node",
    field_path=".spec.nodeName",
)


class NodePowerStateSpec(ApiModel):
    """Which node this object describes."""

    node_name: str = Field(
        min_length=1, max_length=253, description="The node; equal to metadata.name."
    )


class PodRef(ApiModel):
    """The pod that holds a GPU (from the kubelet's PodResources API)."""

    namespace: str = Field(min_length=1, max_length=63, description="The pod's namespace.")
    name: str = Field(min_length=1, max_length=253, description="The pod's name.")
    uid: str | None = Field(default=None, max_length=128, description="The pod's UID.")


class GpuWriteError(ApiModel):
    """The last NVML write the GPU rejected."""

    knob: Literal["clockCeiling", "powerLimit"] = Field(description="What was being set.")
    message: str = Field(max_length=1024, description="The error, as NVML reported it.")
    time: datetime = Field(description="When the write failed.")


class GpuStatus(ApiModel):
    """One GPU: its inventory (what it accepts), who uses it, and what is applied."""

    index: int = Field(ge=0, le=1023, description="NVML device index.")
    uuid: str = Field(min_length=1, max_length=128, description="GPU UUID (GPU-...).")
    model: str = Field(max_length=128, description="Product name, e.g. NVIDIA H100 80GB HBM3.")
    max_clock_mhz: int = Field(
        alias="maxClockMHz", gt=0, description="Maximum SM clock in MHz (100% for percentages)."
    )
    min_clock_mhz: int | None = Field(
        default=None, alias="minClockMHz", gt=0, description="Lowest supported SM clock in MHz."
    )
    supported_clocks_mhz: Annotated[list[int], Field(max_length=MAX_SUPPORTED_CLOCKS)] | None = (
        Field(
            default=None,
            alias="supportedClocksMHz",
            description="Supported SM clocks in MHz, highest first, as NVML lists them.",
        )
    )
    default_power_limit_watts: float = Field(
        gt=0, description="Default power limit in watts (100% for percentages)."
    )
    min_power_limit_watts: float = Field(gt=0, description="Lowest settable power limit, W.")
    max_power_limit_watts: float = Field(gt=0, description="Highest settable power limit, W.")
    pod: PodRef | None = Field(default=None, description="The pod holding the GPU, if any.")
    tier: str | None = Field(
        default=None,
        max_length=63,
        description=f"The GPU's tier ({IDLE_TIER} when no pod holds it).",
    )
    policy: str | None = Field(
        default=None,
        max_length=253,
        description="The policy whose action is applied (the most restrictive one when "
        "several policies select the node).",
    )
    stage: str | None = Field(
        default=None, max_length=63, description="That policy's stage when it was applied."
    )
    clock_ceiling_mhz: int | None = Field(
        default=None,
        alias="clockCeilingMHz",
        gt=0,
        description="Applied SM clock ceiling in MHz; absent when clocks are not locked.",
    )
    power_limit_watts: float | None = Field(
        default=None, gt=0, description="Enforced power limit in watts, as read back."
    )
    power_watts: float | None = Field(
        default=None, ge=0, description="Last observed board power in watts."
    )
    last_error: GpuWriteError | None = Field(
        default=None, description="The last rejected write, until a write succeeds."
    )

    @property
    def throttled(self) -> bool:
        """Limited below what the GPU would do on its own."""
        clock_limited = (
            self.clock_ceiling_mhz is not None and self.clock_ceiling_mhz < self.max_clock_mhz
        )
        power_limited = (
            self.power_limit_watts is not None
            and self.power_limit_watts < self.default_power_limit_watts
        )
        return clock_limited or power_limited


class AppliedPolicy(ApiModel):
    """A policy that selects this node, and the stage of it the daemon applied."""

    name: str = Field(min_length=1, max_length=253, description="The PowerPolicy.")
    stage: str = Field(min_length=1, max_length=63, description="The stage applied.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The policy's metadata.generation that was applied."
    )
    dry_run: bool = Field(default=False, description="The policy only reports; nothing set.")


class GuardState(ApiModel):
    """The local guard on this node."""

    active: bool = Field(description="The guard is limiting the node now.")
    since: datetime | None = Field(default=None, description="When it last changed.")
    node_power_watts: float | None = Field(
        default=None, ge=0, description="Node power the guard last measured, W."
    )
    node_budget_watts: float | None = Field(
        default=None, gt=0, description="The node budget the guard enforces, W."
    )


class NodePowerStateStatus(ConditionedStatus):
    """What the daemon found and applied. `policy` and `stage` summarise `policies`."""

    policies: Annotated[list[AppliedPolicy], Field(max_length=MAX_POLICIES)] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="The policies that select this node and the stage applied for each.",
    )
    policy: str | None = Field(
        default=None,
        max_length=4096,
        description="Names in policies, comma-separated (for kubectl get; derived).",
    )
    stage: str | None = Field(
        default=None,
        max_length=1024,
        description="Stages in policies, comma-separated, in the same order (derived).",
    )
    gpus: Annotated[list[GpuStatus], Field(max_length=MAX_GPUS)] | None = Field(
        default=None,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["index"],
        },
        description="Every GPU on the node.",
    )
    gpu_count: int | None = Field(default=None, ge=0, description="GPUs on the node.")
    throttled_gpu_count: int | None = Field(
        default=None, ge=0, description="GPUs with a limit below their default."
    )
    power_watts: float | None = Field(
        default=None, ge=0, description="Sum of the GPUs' last observed power, W."
    )
    guard: GuardState | None = Field(default=None, description="The local guard's state.")
    heartbeat_time: datetime | None = Field(
        default=None, description="When the daemon last wrote this status."
    )
    metrics_endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="URL of this node daemon's Prometheus metrics (/metrics); the operator "
        "reads the daemon's power stream beside it (/power/stream, same host and port) when "
        "spec.telemetry.source is direct or Prometheus fails.",
    )
    kopf: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        description=KOPF_STATUS_DESCRIPTION,
    )

    @model_validator(mode="before")
    @classmethod
    def _summarise(cls, data: Any) -> Any:
        """Derive the printer-column summaries so they can never disagree with `policies`."""
        if not isinstance(data, dict):
            return data
        policies = data.get("policies")
        if not policies:
            return {k: v for k, v in data.items() if k not in ("policy", "stage")}
        pairs: list[tuple[Any, Any]] = []
        for p in policies:
            if isinstance(p, AppliedPolicy):
                pairs.append((p.name, p.stage))
            elif isinstance(p, dict):
                pairs.append((p.get("name"), p.get("stage")))
        if not all(isinstance(v, str) for pair in pairs for v in pair):
            return data  # malformed entries: let field validation report them
        return {
            **data,
            "policy": ",".join(name for name, _ in pairs),
            "stage": ",".join(stage for _, stage in pairs),
        }


class NodePowerState(ApiModel):
    """One node's GPUs, as its POLCA daemon found and set them."""

    api_version: Literal["polca.dev/v1alpha1"] = API_VERSION
    kind: Literal["NodePowerState"] = "NodePowerState"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: NodePowerStateSpec | None = None
    status: NodePowerStateStatus | None = None
