"""What the node daemon decides from: its watches (Node, PowerPolicies, pods) and the kubelet.

- three watch threads (`polca_node.watching`) keep `ObservedCluster` current: this node's Node
  (labels), every PowerPolicy, and this node's pods (field selector `spec.nodeName=<node>`);
  any change wakes the reconciler at once, so a PowerPolicy status change reaches the GPUs in
  milliseconds, with no polling period in between;
- in PodResources mode the GPU→pod mapper polls the kubelet every `podresources_interval_s`
  and on every pod event (the `kubelet` task); in fake-GPU mode pods get GPUs by annotation;
- `decision_inputs` puts them together for `policies.decide_node`, never trusting the kubelet's
  answer alone (safety rule 6).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

from polca.control.plan import ResolvedAction
from polca_node.gpu.backend import Inventory
from polca_node.kube_client import KubeClient
from polca_node.node_gpus import NodeGpus
from polca_node.observed import LoopSink, ObservedCluster, PodKey
from polca_node.policies import DecisionInputs
from polca_node.tiering import (
    GpuOwners,
    OwnerConflict,
    PodResourcesMapper,
    assign_fake_gpus,
    check_owners,
    fake_gpu_owners,
    gpu_pod_facts,
)
from polca_node.watching import Watcher, WatchTarget

__all__ = ["POWER_POLICIES", "NodeInputs"]

POWER_POLICIES = "/apis/polca.dev/v1alpha1/powerpolicies"


class NodeInputs:
    """Owns the watches, the observed cluster and the kubelet mapper; wakes the reconciler."""

    def __init__(
        self,
        node_name: str,
        kube: KubeClient,
        gpus: NodeGpus,
        *,
        wake: Callable[[], None],
        fake_gpu_annotation: str | None = None,
        podresources_interval_s: float = 5.0,
        pod_mapper_factory: Callable[[Inventory], PodResourcesMapper] | None = None,
    ) -> None:
        self.node_name = node_name
        self.observed = ObservedCluster(node_name)
        self._kube = kube
        self._gpus = gpus
        self._wake = wake
        self._fake_gpu_annotation = fake_gpu_annotation
        self._podresources_interval_s = podresources_interval_s
        self._pod_mapper_factory = pod_mapper_factory
        self.pod_mapper: PodResourcesMapper | None = None
        self._fake_assignment: dict[PodKey, tuple[int, ...]] = {}
        # GPUs each live pod held when the kubelet last listed it (`check_owners`).
        self._kubelet_memory: dict[PodKey, tuple[int, ...]] = {}
        self._pods_changed = asyncio.Event()
        self._watchers: list[Watcher] = []

    def adopt(self, inventory: Inventory) -> None:
        """Map the GPUs NVML found to pods through the kubelet, unless pods name their GPUs in
        an annotation (fake GPUs)."""
        if self._pod_mapper_factory is not None and self._fake_gpu_annotation is None:
            self.pod_mapper = self._pod_mapper_factory(inventory)

    def start_watches(self, loop: asyncio.AbstractEventLoop) -> None:
        node = self.node_name
        observed = self.observed

        def on_pods_change() -> None:
            self._pods_changed.set()
            self._wake()

        specs = [
            (
                WatchTarget("node", "/api/v1/nodes", field_selector=f"metadata.name={node}"),
                LoopSink(loop, observed.replace_nodes, observed.apply_node, self._wake),
            ),
            (
                WatchTarget("powerpolicies", POWER_POLICIES),
                LoopSink(loop, observed.replace_policies, observed.apply_policy, self._wake),
            ),
            (
                WatchTarget("pods", "/api/v1/pods", field_selector=f"spec.nodeName={node}"),
                LoopSink(loop, observed.replace_pods, observed.apply_pod, on_pods_change),
            ),
        ]
        self._watchers = [Watcher(self._kube, target, sink).start() for target, sink in specs]

    def stop_watches(self) -> None:
        for watcher in self._watchers:
            watcher.stop()

    @property
    def synced(self) -> bool:
        """Every watch has listed once."""
        observed = self.observed
        return observed.policies_synced and observed.pods_synced and observed.node_synced

    async def podresources_loop(self, stop: asyncio.Event) -> None:
        """The `kubelet` task: poll PodResources, and at once on pod events."""
        mapper = self.pod_mapper
        assert mapper is not None
        while not stop.is_set():
            self._pods_changed.clear()
            if await mapper.refresh_async():
                self._wake()
            with contextlib.suppress(TimeoutError):
                # A new pod may just have got its devices: look again at once on pod events.
                await asyncio.wait_for(self._pods_changed.wait(), self._podresources_interval_s)

    def close_kubelet(self) -> None:
        if self.pod_mapper is not None:
            self.pod_mapper.close()

    def _gpu_owners(self) -> tuple[GpuOwners | None, OwnerConflict | None]:
        """Which pods hold each GPU (None: not known yet), and where the sources disagree."""
        observed = self.observed
        if not observed.pods_synced:
            return None, None
        annotation = self._fake_gpu_annotation
        if annotation is not None:
            self._fake_assignment = assign_fake_gpus(
                observed.pods.values(), annotation, len(self._gpus.info), self._fake_assignment
            )
            return fake_gpu_owners(self._fake_assignment), None
        if self.pod_mapper is None or self.pod_mapper.owners is None:
            return None, None
        # Never trust the kubelet's answer alone (safety rule 6): check it against the watch.
        check = check_owners(
            self.pod_mapper.owners, observed.pods, self._kubelet_memory, self._gpus.info
        )
        self._kubelet_memory = check.remembered
        return check.owners, check.conflict

    def decision_inputs(
        self,
        *,
        previously_managed: bool | None,
        guard_actions: Mapping[str, Mapping[int, ResolvedAction]],
    ) -> DecisionInputs:
        observed = self.observed
        owners, conflict = self._gpu_owners()
        return DecisionInputs(
            node_labels=observed.node_labels,
            policies=list(observed.policies.values()) if observed.policies_synced else None,
            gpu_limits=self._gpus.limits,
            gpu_pods=None if owners is None else gpu_pod_facts(owners, observed.pods),
            previously_managed=previously_managed,
            guard_actions=guard_actions,
            unreadable=tuple(observed.unreadable.values()),
            owner_conflict=conflict,
        )
