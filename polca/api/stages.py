"""Stages: power thresholds (percent of the budget) and what each does to each tier's GPUs."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from polca.api.base import ApiModel, CelRule, cel_rules
from polca.api.meta import DnsLabel
from polca.control.plan import A100_MAX_SM_CLOCK_MHZ, a100_clock_percent
from polca.control.tiers import IDLE_TIER

MAX_STAGES = 16
MAX_ACTIONS = 17  # every declared tier (at most 16) plus idle
MAX_PERCENT_OF_BUDGET = 200.0

ONE_CLOCK_KNOB = CelRule(
    rule="!(has(self.clockCeilingMHz) && has(self.clockCeilingPercent))",
    message="set clockCeilingMHz or clockCeilingPercent, not both",
    field_path=".clockCeilingPercent",
)
ONE_POWER_KNOB = CelRule(
    rule="!(has(self.powerLimitWatts) && has(self.powerLimitPercent))",
    message="set powerLimitWatts or powerLimitPercent, not both",
    field_path=".powerLimitPercent",
)
TRIGGER_AND_RELEASE_TOGETHER = CelRule(
    rule="has(self.triggerPercent) == has(self.releasePercent)",
    message="triggerPercent and releasePercent are set together (both are omitted only on "
    "the first stage)",
    field_path=".releasePercent",
)
RELEASE_BELOW_TRIGGER = CelRule(
    rule="!has(self.triggerPercent) || !has(self.releasePercent) || "
    "self.releasePercent < self.triggerPercent",
    message="releasePercent must be below triggerPercent (the gap is the hysteresis)",
    field_path=".releasePercent",
)


class TierAction(ApiModel):
    """Limits for the GPUs of one tier in one stage. An empty action means no limit.

    A clock ceiling locks the GPU's graphics (SM) clock at or below a value; a power limit
    caps board power. Absolute values suit a uniform fleet, percentages suit mixed fleets:
    `clockCeilingPercent` is of each GPU's maximum SM clock, `powerLimitPercent` of each
    GPU's default power limit. The node daemon clamps every value to what the GPU accepts.
    """

    model_config = ConfigDict(json_schema_extra=cel_rules(ONE_CLOCK_KNOB, ONE_POWER_KNOB))

    clock_ceiling_mhz: int | None = Field(
        default=None,
        alias="clockCeilingMHz",
        ge=1,
        le=10_000,
        description="Maximum SM clock in MHz, the same on every GPU: for a fleet of one GPU "
        f"model (POLCA's A100 clocks: 1275, 1110 or 1305 MHz of {A100_MAX_SM_CLOCK_MHZ} MHz). "
        "On other or mixed models use clockCeilingPercent, as the defaults do.",
    )
    clock_ceiling_percent: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="Maximum SM clock as a percentage of the GPU's maximum SM clock, so one "
        "value means the same on every GPU model. The defaults are POLCA's A100 ceilings made "
        "relative: "
        + ", ".join(f"{mhz} MHz = {a100_clock_percent(mhz):g}%" for mhz in (1275, 1110, 1305))
        + f" of {A100_MAX_SM_CLOCK_MHZ} MHz (rounded up, so an A100 gets exactly these).",
    )
    power_limit_watts: float | None = Field(
        default=None,
        gt=0,
        le=5_000,
        description="Board power limit in watts.",
    )
    power_limit_percent: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="Board power limit as a percentage of the GPU's default power limit.",
    )

    @model_validator(mode="after")
    def _one_knob_each(self) -> TierAction:
        if self.clock_ceiling_mhz is not None and self.clock_ceiling_percent is not None:
            raise ValueError(ONE_CLOCK_KNOB.message)
        if self.power_limit_watts is not None and self.power_limit_percent is not None:
            raise ValueError(ONE_POWER_KNOB.message)
        return self

    @property
    def is_limit(self) -> bool:
        return any(
            v is not None
            for v in (
                self.clock_ceiling_mhz,
                self.clock_ceiling_percent,
                self.power_limit_watts,
                self.power_limit_percent,
            )
        )


Percent = Annotated[float, Field(ge=0, le=MAX_PERCENT_OF_BUDGET)]


class Stage(ApiModel):
    """One step of the policy: entered at `triggerPercent`, left below `releasePercent`."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(TRIGGER_AND_RELEASE_TOGETHER, RELEASE_BELOW_TRIGGER)
    )

    name: DnsLabel = Field(description="Stage name, unique within the policy (e.g. stage1).")
    description: str | None = Field(
        default=None, max_length=256, description="What the stage is for (free text)."
    )
    trigger_percent: Percent | None = Field(
        default=None,
        description="Domain power, in percent of spec.budgetWatts, at or above which the "
        "domain enters this stage. Omitted on the first stage (the resting state). "
        "Triggers never decrease along the list; a stage with the same trigger as the one "
        "before it is entered when power stays at or above that trigger for "
        "spec.settleSeconds after the earlier stage was entered (POLCA's stage 3).",
    )
    release_percent: Percent | None = Field(
        default=None,
        description="Domain power, in percent of spec.budgetWatts, below which the domain "
        "leaves this stage for the one before it. Must be below triggerPercent: the gap is "
        "the hysteresis (POLCA: 5 points). Omitted on the first stage.",
    )
    actions: Annotated[dict[DnsLabel, TierAction], Field(max_length=MAX_ACTIONS)] = Field(
        default_factory=dict,
        json_schema_extra={"default": {}},
        description=f"Limits per tier while this stage is active, keyed by tier name (a "
        f"tier in spec.tiers, or `{IDLE_TIER}` for GPUs without a pod). A tier that is not "
        "listed is not limited in this stage: list every limited tier in every stage.",
    )

    @model_validator(mode="after")
    def _trigger_and_release(self) -> Stage:
        if (self.trigger_percent is None) != (self.release_percent is None):
            raise ValueError(TRIGGER_AND_RELEASE_TOGETHER.message)
        if (
            self.trigger_percent is not None
            and self.release_percent is not None
            and self.release_percent >= self.trigger_percent
        ):
            raise ValueError(RELEASE_BELOW_TRIGGER.message)
        return self
