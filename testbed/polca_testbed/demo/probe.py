"""What the demo reads each sample: the daemons' /metrics, the PowerPolicy, the events.

Blocking I/O with short timeouts; daemon scrapes run concurrently so one slow daemon costs one
timeout, not one per node. A daemon that does not answer gives None (the sample then has no
domain power) rather than a zero.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from polca_node.kube_client import ApiError, KubeClient
from polca_testbed.demo.recording import DemoEvent, GpuState, event_from_api, parse_daemon_metrics

__all__ = ["POLICIES_PATH", "Probe"]

POLICIES_PATH = "/apis/polca.dev/v1alpha1/powerpolicies"
# Kopf posts a "Logging" event for every handler it runs: noise in the demo's event list.
_QUIET_REASONS = frozenset({"Logging"})


class Probe:
    def __init__(
        self,
        client: KubeClient,
        *,
        policy_name: str,
        metrics_urls: Mapping[str, str],
        timeout_s: float = 1.0,
    ) -> None:
        self._client = client
        self._policy_path = f"{POLICIES_PATH}/{policy_name}"
        self._urls = dict(metrics_urls)
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(8, len(self._urls))), thread_name_prefix="demo-scrape"
        )

    def _scrape(self, url: str) -> tuple[GpuState, ...] | None:
        try:
            with urllib.request.urlopen(url, timeout=self._timeout_s) as response:  # noqa: S310 - our loopback daemons
                return parse_daemon_metrics(response.read().decode())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def daemon_readings(self) -> dict[str, tuple[GpuState, ...] | None]:
        futures = {node: self._pool.submit(self._scrape, url) for node, url in self._urls.items()}
        return {node: future.result() for node, future in futures.items()}

    def policy_status(self) -> dict[str, Any] | None:
        """The PowerPolicy's status, or None while it has none or the API does not answer."""
        try:
            policy = self._client.request("GET", self._policy_path)
        except ApiError:
            return None
        status = policy.get("status") if isinstance(policy, dict) else None
        return status if isinstance(status, dict) else None

    def events(self) -> list[DemoEvent] | None:
        """Every event of the cluster but Kopf's handler logs (None when the API fails)."""
        try:
            listed = self._client.request("GET", "/api/v1/events")
        except ApiError:
            return None
        items = listed.get("items", []) if isinstance(listed, dict) else []
        return [event_from_api(e) for e in items if e.get("reason") not in _QUIET_REASONS]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
