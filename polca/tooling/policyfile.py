"""A user's PowerPolicy manifest as the tools run it: validated like ``polca validate``, then
turned into the control plan the operator runs (:func:`polca.api.convert.plan_from_spec`)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from polca.api.convert import plan_from_spec, tier_set_from_spec
from polca.api.powerpolicy import PowerPolicy
from polca.control.plan import ControlPlan
from polca.control.tiers import TRAINING_SELECTORS, PodFacts, resolve_tier
from polca.power.profiles import get_profile
from polca.sim.policies import PolicyConfig
from polca.tooling.manifests import Document, ManifestError, load_policy, read_documents
from polca.tooling.validate import DocumentReport, validate_document

__all__ = [
    "ManifestPolicy",
    "PolicyInvalidError",
    "apply_to_simulation",
    "is_policy_manifest",
    "keep_manifest_timing",
    "mix_from_pods",
    "read_policy",
]

GPU_RESOURCE = "nvidia.com/gpu"

MANIFEST_POLICY = "polca-k8s"  # the simulator's name for the controller the operator runs


class PolicyInvalidError(ManifestError):
    """The manifest was read but does not validate; `report` says why."""

    def __init__(self, report: DocumentReport) -> None:
        lines = [f"{f.field}: {f.message}" for f in report.errors]
        super().__init__(
            f"{report.document} {report.kind}/{report.name} does not validate "
            f"(run polca validate): " + "; ".join(lines)
        )
        self.report = report


@dataclass(frozen=True, slots=True)
class ManifestPolicy:
    source: str  # file:index
    policy: PowerPolicy
    plan: ControlPlan

    @property
    def name(self) -> str:
        return self.policy.metadata.name or "?"


def read_policy(target: str, name: str | None = None) -> ManifestPolicy:
    """The PowerPolicy of `target`, validated; raises ManifestError (PolicyInvalidError)."""
    doc = load_policy(target, name)
    report = validate_document(doc)
    if not report.valid:
        raise PolicyInvalidError(report)
    policy = PowerPolicy.model_validate(doc.data)
    return ManifestPolicy(doc.where, policy, plan_from_spec(policy.spec))


def is_policy_manifest(data: object) -> bool:
    return isinstance(data, dict) and data.get("kind") == "PowerPolicy"


def apply_to_simulation(args: argparse.Namespace) -> ManifestPolicy | None:
    """Set `polca simulate`'s options from ``-f``: the manifest's plan runs as polca-k8s with
    its triggers as written (what the operator would enforce), next to ``none``; the row is
    the servers its budgetWatts is provisioned for (each server: GPUs at their maximum limit
    plus the manifest's overheadWatts when nodePower counts GPU power), its telemetry path
    (``--telemetry``) is the manifest's ``telemetry.source`` unless given, and
    ``--oversubscription`` adds servers under that budget. None without ``-f``."""
    if args.filename is None:
        if args.pods:
            raise ValueError("--pods needs -f: the pods' tiers come from the manifest's rules")
        return None
    manifest = read_policy(str(args.filename))
    spec = manifest.policy.spec
    if spec.node_power.source == "gpu" and spec.node_power.overhead_watts > 0:
        args.server_overhead_w = spec.node_power.overhead_watts
    server_w = args.gpus_per_server * get_profile(args.profile).max_limit_w + args.server_overhead_w
    servers = math.floor(spec.budget_watts / server_w)
    if servers < 1:
        raise ValueError(
            f"{manifest.source}: budgetWatts {spec.budget_watts:g} W is less than one "
            f"{args.profile} server ({server_w:g} W)"
        )
    args.servers = servers
    if args.pods:
        args.mix = mix_from_pods(manifest, read_documents([args.pods]))
    args.plan = args.filename
    args.policy = args.policy or ["none", MANIFEST_POLICY]
    args.no_derive_triggers = True
    args.no_guard = args.no_guard or not spec.guard.enabled
    if args.telemetry is None:  # the reaction of the path the operator will read power from
        args.telemetry = "prometheus" if spec.telemetry.source == "prometheus" else "stream"
    return manifest


def keep_manifest_timing(
    policies: Sequence[PolicyConfig], manifest: ManifestPolicy
) -> list[PolicyConfig]:
    """The manifest's settleSeconds, not the simulator's derived one, for its plan."""
    return [replace(p, plan=manifest.plan) if p.name == MANIFEST_POLICY else p for p in policies]


def _gpus(pod: dict[str, object]) -> int:
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    total = 0
    for container in containers if isinstance(containers, list) else ():
        limits = (container.get("resources") or {}).get("limits") or {}
        total += int(limits.get(GPU_RESOURCE, 0) or 0)
    return total


def mix_from_pods(manifest: ManifestPolicy, documents: Sequence[Document]) -> str:
    """``--mix`` from a pod list: GPUs per simulator workload. Training pods (the training
    operators' labels) are ``train``; other pods take the manifest's tier: its last tier (the
    one throttled last) is ``high``, every other tier ``low``."""
    tier_set = tier_set_from_spec(manifest.policy.spec)
    high = manifest.policy.spec.tiers[-1].name
    gpus = {"high": 0, "low": 0, "train": 0}
    for doc in documents:
        data = doc.data if isinstance(doc.data, dict) else {}
        pods = data.get("items") if data.get("kind") == "List" else [data]
        for pod in pods or ():
            if not isinstance(pod, dict) or pod.get("kind", "Pod") != "Pod":
                continue
            count = _gpus(pod)
            if count == 0:
                continue
            meta = pod.get("metadata") or {}
            labels = dict(meta.get("labels") or {})
            priority = (pod.get("spec") or {}).get("priority")
            facts = PodFacts(str(meta.get("namespace", "")), str(meta.get("name", "")),
                             labels, priority)  # fmt: skip
            if any(selector.matches(labels) for selector in TRAINING_SELECTORS):
                gpus["train"] += count
            else:
                gpus["high" if resolve_tier(tier_set, facts) == high else "low"] += count
    if not any(gpus.values()):
        raise ManifestError(f"no pod in the pods file requests {GPU_RESOURCE}")
    return ",".join(f"{k}={v}" for k, v in gpus.items())
