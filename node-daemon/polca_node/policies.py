"""What this node's GPUs should be set to, from the PowerPolicies that select the node. Pure.

Rules (issue 4, DESIGN.md safety rules):
- a policy selects the node when its `spec.nodeSelector` matches the Node's labels;
- its current stage is `status.stage` (written by the operator); the stage's action for a GPU's
  tier (per the policy's own tier rules; `idle` for a GPU without a pod) is resolved against
  that GPU's limits; the local guard's extra action for the policy combines with it, stronger
  wins;
- across policies, each GPU gets knob by knob the most restrictive action
  (`polca.control.actions.most_restrictive`); a tier no policy throttles gets no limit;
- a `dryRun` policy is computed and reported, never enforced;
- a policy without a decision yet (no status, or a stage its spec no longer has) contributes
  nothing, and while one exists the node only tightens (mode TIGHTEN): the daemon never lifts a
  limit for lack of information. Likewise nothing is written until the node's labels, the
  policies, the pods and the record of what the node had before are all known (mode HOLD);
- a stored policy the daemon cannot read is *unknown*, never absent (safety rule 6): while one
  may select the node, the node only tightens (TIGHTEN) or, without a readable enforcing
  policy, holds (HOLD) — it never restores for it;
- a GPU whose holder the kubelet and the pod watch disagree about (`owner_conflict`) is only
  tightened, whatever the mode says for the others (`polca_node.tiering.check_owners`);
- defaults are restored only when the node was managed and no enforcing policy selects it any
  more (mode RESTORE).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from polca.api.convert import action_from_api, tier_set_from_spec
from polca.api.powerpolicy import PowerPolicy
from polca.api.stages import Stage
from polca.control.actions import UNLIMITED, most_restrictive
from polca.control.plan import GpuLimits, ResolvedAction
from polca.control.tiers import PodFacts
from polca_node.observed import UnreadablePolicy
from polca_node.tiering import GpuTier, OwnerConflict, gpu_tiers

__all__ = [
    "DecisionInputs",
    "GpuDecision",
    "GpuPolicyAction",
    "Mode",
    "NodeDecision",
    "PolicyOutcome",
    "current_stage",
    "decide_node",
    "selecting_policies",
]


class Mode(StrEnum):
    """What the actuator may do with a decision."""

    HOLD = "Hold"  # something is not known yet: write nothing
    UNMANAGED = "Unmanaged"  # no enforcing policy selects the node, and none did: write nothing
    TIGHTEN = "TightenOnly"  # a selecting policy has no decision yet: only lower limits
    ENFORCE = "Enforce"  # set every GPU to its decided action
    RESTORE = "Restore"  # the node left every enforcing policy: restore the defaults

    @property
    def writes(self) -> bool:
        return self in (Mode.TIGHTEN, Mode.ENFORCE, Mode.RESTORE)


@dataclass(frozen=True)
class DecisionInputs:
    """Everything a decision depends on. None means "not observed yet"."""

    node_labels: Mapping[str, str] | None
    policies: Sequence[PowerPolicy] | None
    gpu_limits: Mapping[int, GpuLimits]
    gpu_pods: Mapping[int, Sequence[PodFacts]] | None
    # Was the node managed (under an enforcing policy) before? From this process's own history
    # or, after a restart, from the NodePowerState it wrote.
    previously_managed: bool | None
    # Per policy name, the local guard's extra action per GPU index.
    guard_actions: Mapping[str, Mapping[int, ResolvedAction]] = field(default_factory=dict)
    # Stored policies whose latest version cannot be read.
    unreadable: Sequence[UnreadablePolicy] = ()
    # GPUs whose holder the kubelet and the pod watch disagree about (`gpu_pods` names the
    # candidate holders): they may only be tightened.
    owner_conflict: OwnerConflict | None = None


@dataclass(frozen=True)
class GpuPolicyAction:
    """What one policy wants for one GPU."""

    tier: str
    pod: PodFacts | None
    action: ResolvedAction  # stage action and guard action combined


@dataclass(frozen=True)
class PolicyOutcome:
    """One selecting policy and what it wants for each GPU."""

    name: str
    dry_run: bool
    stage: str | None  # None: the operator has not decided yet
    generation: int | None
    gpus: Mapping[int, GpuPolicyAction]

    @property
    def enforcing(self) -> bool:
        return not self.dry_run


@dataclass(frozen=True)
class GpuDecision:
    """One GPU: the settings to enforce, the settings to report, and where they come from."""

    index: int
    enforce: ResolvedAction  # from enforcing policies only
    report: ResolvedAction  # dry-run policies included
    tier: str | None = None
    pod: PodFacts | None = None
    policy: str | None = None  # the policy whose action decides (the most restrictive)
    stage: str | None = None


@dataclass(frozen=True)
class NodeDecision:
    mode: Mode
    reason: str
    policies: tuple[PolicyOutcome, ...] = ()
    gpus: Mapping[int, GpuDecision] = field(default_factory=dict)
    # Unreadable policies that may select the node: the reason it holds or only tightens.
    unreadable: tuple[UnreadablePolicy, ...] = ()
    # GPUs whose holder is unknown: in ENFORCE they are only tightened, like all in TIGHTEN.
    owner_conflict: OwnerConflict | None = None

    @property
    def unconfirmed_gpus(self) -> frozenset[int]:
        conflict = self.owner_conflict
        return conflict.gpus if conflict is not None else frozenset()

    @property
    def managed(self) -> bool:
        """The node is under at least one enforcing policy."""
        return any(p.enforcing for p in self.policies)

    @property
    def waiting_for(self) -> tuple[str, ...]:
        """Enforcing policies without a decision yet."""
        return tuple(p.name for p in self.policies if p.enforcing and p.stage is None)


def selecting_policies(
    policies: Sequence[PowerPolicy], node_labels: Mapping[str, str]
) -> list[PowerPolicy]:
    """The policies that select the node (nodeSelector or allNodes), by name."""
    chosen = [p for p in policies if p.spec.selects(node_labels)]
    return sorted(chosen, key=lambda p: p.metadata.name or "")


def current_stage(policy: PowerPolicy) -> Stage | None:
    """The stage the operator decided, or None when there is no usable decision."""
    name = policy.status.stage if policy.status is not None else None
    if name is None:
        return None
    return next((s for s in policy.spec.stages if s.name == name), None)


def _outcome(
    policy: PowerPolicy,
    inputs: DecisionInputs,
    gpu_pods: Mapping[int, Sequence[PodFacts]],
) -> PolicyOutcome:
    name = policy.metadata.name or ""
    stage = current_stage(policy)
    tiers: Mapping[int, GpuTier] = gpu_tiers(
        tier_set_from_spec(policy.spec), inputs.gpu_limits, gpu_pods
    )
    guard = inputs.guard_actions.get(name, {})
    gpus: dict[int, GpuPolicyAction] = {}
    for index, limits in inputs.gpu_limits.items():
        tier = tiers[index]
        stage_action = UNLIMITED
        if stage is not None and tier.tier in stage.actions:
            stage_action = action_from_api(stage.actions[tier.tier]).resolve(limits)
        action = stage_action.stronger(guard.get(index, UNLIMITED))
        gpus[index] = GpuPolicyAction(tier.tier, tier.pod, action)
    return PolicyOutcome(
        name=name,
        dry_run=policy.spec.dry_run,
        stage=stage.name if stage is not None else None,
        generation=policy.metadata.generation,
        gpus=gpus,
    )


def _deciding(outcomes: Sequence[PolicyOutcome], index: int, merged: ResolvedAction) -> int:
    """Which outcome decides a GPU: the first whose clock (else power) limit is the merged one."""
    for knob in ("clock_ceiling_mhz", "power_limit_w"):
        wanted = getattr(merged, knob)
        if wanted is None:
            continue
        for position, outcome in enumerate(outcomes):
            if getattr(outcome.gpus[index].action, knob) == wanted:
                return position
    return 0


def _gpu_decision(
    index: int, enforcing: Sequence[PolicyOutcome], everyone: Sequence[PolicyOutcome]
) -> GpuDecision:
    enforce = most_restrictive(o.gpus[index].action for o in enforcing)
    report = most_restrictive(o.gpus[index].action for o in everyone)
    # Attribute to an enforcing policy when there is one: that is what the GPU really gets.
    pool = enforcing or everyone
    chosen = pool[_deciding(pool, index, enforce if enforcing else report)]
    own = chosen.gpus[index]
    return GpuDecision(
        index=index,
        enforce=enforce,
        report=report,
        tier=own.tier,
        pod=own.pod,
        policy=chosen.name,
        stage=chosen.stage,
    )


def _unknown(inputs: DecisionInputs) -> str | None:
    """What the decision still waits for, if anything, before it may look at the policies."""
    if inputs.policies is None:
        return "PowerPolicies not listed yet"
    if inputs.node_labels is None:
        return "this node's Node object is not known yet"
    if inputs.previously_managed is None:
        return "this node's previous NodePowerState is not read yet"
    return None


def _unreadable_reason(unreadable: Sequence[UnreadablePolicy]) -> str:
    names = ", ".join(u.name for u in unreadable)
    return f"cannot read PowerPolicy {names}, which may select this node"


def decide_node(inputs: DecisionInputs) -> NodeDecision:
    """The node's decision: a mode, and per GPU the settings to enforce and to report."""
    waiting_for = _unknown(inputs)
    if waiting_for is not None or inputs.policies is None or inputs.node_labels is None:
        return NodeDecision(Mode.HOLD, waiting_for or "")
    unreadable = tuple(u for u in inputs.unreadable if u.may_select(inputs.node_labels))
    selecting = selecting_policies(inputs.policies, inputs.node_labels)
    if not any(not p.spec.dry_run for p in selecting):
        if unreadable:
            # It may be the very policy that managed the node: hold, never restore for it.
            reason = f"{_unreadable_reason(unreadable)}: holding the last applied limits"
            return NodeDecision(Mode.HOLD, reason, unreadable=unreadable)
        if inputs.previously_managed:
            return NodeDecision(Mode.RESTORE, "the node left every enforcing policy")
        if not selecting:
            return NodeDecision(Mode.UNMANAGED, "no PowerPolicy selects this node")
    if inputs.gpu_pods is None:
        return NodeDecision(
            Mode.HOLD, "which pod holds which GPU is not known yet", unreadable=unreadable
        )

    outcomes = tuple(_outcome(p, inputs, inputs.gpu_pods) for p in selecting)
    enforcing = [o for o in outcomes if o.enforcing]
    gpus = {index: _gpu_decision(index, enforcing, outcomes) for index in inputs.gpu_limits}
    waiting = [o.name for o in enforcing if o.stage is None]
    if not enforcing:
        mode, reason = Mode.UNMANAGED, "only dry-run policies select this node"
    elif unreadable:
        mode, reason = Mode.TIGHTEN, f"{_unreadable_reason(unreadable)}: only tightening"
    elif waiting:
        mode, reason = Mode.TIGHTEN, f"no decision yet from {', '.join(waiting)}: only tightening"
    else:
        mode, reason = (
            Mode.ENFORCE,
            "enforcing " + ", ".join(f"{o.name}/{o.stage}" for o in enforcing),
        )
    return NodeDecision(mode, reason, outcomes, gpus, unreadable, inputs.owner_conflict)
