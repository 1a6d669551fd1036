"""GPU → pod → tier: which pod holds each local GPU, and which tier that makes the GPU.

Two ways to learn which pod holds a GPU:
- production: kubelet's PodResources API (`PodResourcesMapper`), polled because v1 has no
  working watch; device ids are resolved to GPU indices through the NVML inventory (UUIDs, MIG
  UUIDs, time-sliced replicas);
- kind and the demo, where no device plugin hands out fake GPUs: pods ask for them with an
  annotation (`polca.dev/fake-gpus: "2"`) and `assign_fake_gpus` gives them GPU indices,
  deterministically and stickily (a pod keeps its GPUs while it exists).

Either way a failed read keeps the last known-good mapping (safety rule 3). A read that
succeeds but disagrees with the pod watch is not trusted either (safety rule 6,
`check_owners`): when the kubelet lists no GPU for a pod the watch shows alive and holding or
asking for GPUs (an empty answer from a restarting kubelet, say), the GPUs that pod may hold
are *unconfirmed*: they keep their limits and may only be tightened, never lifted, until the
two sources agree again.

The tier is per policy (each policy has its own tier rules): `gpu_tiers` resolves it with
`polca.control.tiers.resolve_tier`; a GPU without a pod is in the `idle` tier. A GPU shared by
several pods (time-slicing, MPS) takes the tier throttled *last* among them, so sharing a GPU
with a batch job never exposes a latency-sensitive pod to the batch tier's limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from polca.control.tiers import PodFacts, TierSet, resolve_tier
from polca_node.observed import PodInfo, PodKey
from polca_node.podresources import PodResourcesClient, PodResourcesError, owners_by_gpu_index

__all__ = [
    "DEFAULT_FAKE_GPU_ANNOTATION",
    "GpuOwners",
    "GpuTier",
    "OwnerCheck",
    "OwnerConflict",
    "PodResourcesMapper",
    "assign_fake_gpus",
    "check_owners",
    "fake_gpu_owners",
    "gpu_pod_facts",
    "gpu_tiers",
]

logger = logging.getLogger(__name__)

DEFAULT_FAKE_GPU_ANNOTATION = "polca.dev/fake-gpus"

# GPU index → the pods holding it (several when the GPU is shared); GPUs without pods are absent.
GpuOwners = Mapping[int, tuple[PodKey, ...]]


def _requested_gpus(pod: PodInfo, annotation: str) -> int:
    raw = pod.annotations.get(annotation)
    if raw is None:
        return 0
    try:
        count = int(raw)
    except ValueError:
        logger.warning("pod %s/%s: %s=%r is not a number", *pod.key, annotation, raw)
        return 0
    return max(count, 0)


def assign_fake_gpus(
    pods: Iterable[PodInfo],
    annotation: str,
    gpu_count: int,
    previous: Mapping[PodKey, tuple[int, ...]] | None = None,
) -> dict[PodKey, tuple[int, ...]]:
    """GPU indices for pods that ask for fake GPUs by annotation.

    Pods keep the GPUs they had (`previous`) while they ask for the same number; the others
    are served oldest first (creation time, then namespace/name), each with the lowest free
    indices. A pod that does not fit gets nothing, as a real scheduler would not place it.
    """
    wanted = {
        pod.key: count
        for pod in sorted(pods, key=lambda p: (p.created, p.namespace, p.name))
        if not pod.finished and (count := _requested_gpus(pod, annotation)) > 0
    }
    assigned: dict[PodKey, tuple[int, ...]] = {}
    used: set[int] = set()
    for key, indices in (previous or {}).items():
        valid = all(0 <= i < gpu_count for i in indices) and not used & set(indices)
        if wanted.get(key) == len(indices) and valid:
            assigned[key] = indices
            used.update(indices)
    for key, count in wanted.items():
        if key in assigned:
            continue
        free = [i for i in range(gpu_count) if i not in used]
        if len(free) < count:
            logger.warning("pod %s/%s asks for %d fake GPUs, %d free", *key, count, len(free))
            continue
        assigned[key] = tuple(free[:count])
        used.update(free[:count])
    return assigned


def fake_gpu_owners(assignment: Mapping[PodKey, tuple[int, ...]]) -> dict[int, tuple[PodKey, ...]]:
    """The same assignment, keyed by GPU."""
    return {index: (key,) for key, indices in assignment.items() for index in indices}


def gpu_pod_facts(
    owners: GpuOwners, pods: Mapping[PodKey, PodInfo]
) -> dict[int, tuple[PodFacts, ...]]:
    """What tier rules can see of each GPU's pods.

    A pod the kubelet reports but the pod watch has not delivered yet is known by name only
    (no labels, no priority): it gets the policy's default tier until the watch catches up.
    """
    return {
        index: tuple(
            pods[key].facts() if key in pods else PodFacts(namespace=key[0], name=key[1])
            for key in keys
        )
        for index, keys in owners.items()
    }


@dataclass(frozen=True)
class OwnerConflict:
    """The kubelet and the pod watch disagree: these pods hold or ask for GPUs the kubelet
    does not give them, so these GPUs' holders are unknown."""

    gpus: frozenset[int]
    pods: tuple[PodKey, ...]

    def describe(self) -> str:
        pods = ", ".join(f"{namespace}/{name}" for namespace, name in self.pods)
        gpus = ", ".join(str(i) for i in sorted(self.gpus))
        return (
            f"the kubelet (PodResources) lists no GPU for {pods}, which the pod watch shows "
            f"holding or asking for GPUs: GPUs {gpus} keep their limits (only tightened) until "
            "the two agree"
        )


@dataclass(frozen=True)
class OwnerCheck:
    """The kubelet's GPU owners checked against the pod watch (`check_owners`)."""

    owners: dict[int, tuple[PodKey, ...]]  # what to decide with
    conflict: OwnerConflict | None
    # The GPUs each live pod held when the kubelet last listed it: the next check's memory.
    remembered: dict[PodKey, tuple[int, ...]]


def _alive(pod: PodInfo | None) -> bool:
    return pod is not None and not pod.finished


def check_owners(
    listed: GpuOwners,
    pods: Mapping[PodKey, PodInfo],
    remembered: Mapping[PodKey, tuple[int, ...]],
    gpu_indices: Iterable[int],
) -> OwnerCheck:
    """Check the kubelet's answer (`listed`) against the pod watch (`pods`). Pure.

    A pod the kubelet does not list is *missing* when the watch shows it alive and either it
    held GPUs in an earlier answer (`remembered`) or it runs asking for GPUs. A GPU the
    kubelet calls free may then be a missing pod's: one it held before, or any free GPU for
    a missing pod never listed. Such a GPU gets the missing pods as its candidate holders, so
    its tier is the one throttled last among them (as for a shared GPU), and is unconfirmed.
    """
    listed_pods = {key for keys in listed.values() for key in keys}
    # What each pod held when the kubelet last listed it; a pod listed now, what it holds now.
    memory: dict[PodKey, tuple[int, ...]] = {
        key: held
        for key, held in remembered.items()
        if key not in listed_pods and _alive(pods.get(key))
    }
    for index, keys in sorted(listed.items()):
        for key in keys:
            memory[key] = (*memory.get(key, ()), index)
    held_before = {key: held for key, held in memory.items() if key not in listed_pods}
    never_listed = tuple(
        sorted(
            key
            for key, pod in pods.items()
            if key not in listed_pods
            and key not in held_before
            and pod.phase == "Running"
            and pod.gpus_requested > 0
        )
    )
    candidates: dict[int, tuple[PodKey, ...]] = {}
    for index in gpu_indices:
        if index in listed:
            continue
        before = tuple(key for key, held in sorted(held_before.items()) if index in held)
        if before or never_listed:
            candidates[index] = (*before, *never_listed)
    owners = {**{index: tuple(keys) for index, keys in listed.items()}, **candidates}
    if not candidates:
        return OwnerCheck(owners, None, memory)
    missing = tuple(sorted({key for keys in candidates.values() for key in keys}))
    return OwnerCheck(owners, OwnerConflict(frozenset(candidates), missing), memory)


@dataclass(frozen=True)
class GpuTier:
    tier: str
    pod: PodFacts | None  # the pod that decided the tier; None for idle GPUs


def gpu_tiers(
    tier_set: TierSet, gpu_indices: Iterable[int], facts: Mapping[int, Sequence[PodFacts]]
) -> dict[int, GpuTier]:
    """Each GPU's tier under one policy's tier rules (idle when no pod holds it)."""
    order = {name: position for position, name in enumerate(tier_set.names)}
    result: dict[int, GpuTier] = {}
    for index in gpu_indices:
        holders = facts.get(index, ())
        if not holders:
            result[index] = GpuTier(resolve_tier(tier_set, None), None)
            continue
        # The tier throttled last wins for a shared GPU; ties keep the first pod.
        tiers = [(resolve_tier(tier_set, pod), pod) for pod in holders]
        tier, pod = max(tiers, key=lambda tp: order.get(tp[0], -1))
        result[index] = GpuTier(tier, pod)
    return result


class PodResourcesMapper:
    """GPU owners from the kubelet, keeping the last good answer when a read fails."""

    def __init__(self, client: PodResourcesClient, index_by_uuid: Mapping[str, int]) -> None:
        self._client = client
        self._index_by_uuid = dict(index_by_uuid)
        self.owners: dict[int, tuple[PodKey, ...]] | None = None  # None until a read succeeds
        self.last_error: PodResourcesError | None = None

    @property
    def synced(self) -> bool:
        return self.owners is not None

    def refresh(self) -> bool:
        """Read the kubelet (blocking); True when the mapping changed."""
        try:
            assignments = self._client.list_gpu_assignments()
        except PodResourcesError as exc:
            if self.last_error is None or str(exc) != str(self.last_error):
                logger.warning("keeping the last GPU→pod mapping: %s", exc)
            self.last_error = exc
            return False
        self.last_error = None
        by_index, unresolved = owners_by_gpu_index(assignments, self._index_by_uuid)
        for assignment in unresolved:
            logger.debug("device %s matches no local GPU", assignment.device.raw)
        owners = {
            index: tuple(dict.fromkeys((ref.namespace, ref.pod) for ref in refs))
            for index, refs in by_index.items()
        }
        changed = owners != self.owners
        self.owners = owners
        return changed

    async def refresh_async(self) -> bool:
        return await asyncio.to_thread(self.refresh)

    def close(self) -> None:
        self._client.close()
