"""Pre-delete hook of the POLCA chart: delete every PowerPolicy, wait until all are gone.

Restoring GPU defaults happens only when a policy is deleted or the chart is uninstalled,
never because a process stopped. Each PowerPolicy carries the operator's finalizer, which
restores the default clocks and power limits on the domain's nodes before it lets the policy
go, while the operator and the node daemons still run: Helm deletes them only after this hook
succeeds.

Exit 0 when no PowerPolicy is left. Exit 1, naming what is left, when the timeout passes or
the policies cannot be read: Helm then stops the uninstall and POLCA keeps running, so no GPU
is left capped without a daemon to manage it. The chart mounts this file from a ConfigMap and
runs it with the image's Python; it needs only the `kubernetes` client.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

GROUP = "polca.dev"
VERSION = "v1alpha1"
PLURAL = "powerpolicies"
HTTP_NOT_FOUND = 404

log = logging.getLogger("polca.restore-on-uninstall")


class ReadFailedError(Exception):
    """The PowerPolicies could not be listed (a failed read is not an empty list)."""


@dataclass(frozen=True)
class Leftover:
    """A PowerPolicy still present, and the finalizers that hold it."""

    name: str
    finalizers: tuple[str, ...]


class PolicyStore(Protocol):
    def list(self) -> list[Leftover]: ...

    def delete(self, name: str) -> None: ...


def release_all(
    store: PolicyStore,
    *,
    timeout_s: float,
    poll_interval_s: float = 2.0,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Leftover]:
    """Delete every PowerPolicy and wait for them to go; return those left at the deadline.

    Deletion is asked again on every round, so policies created meanwhile go too. A read
    that fails is retried until the deadline, then raised: it never counts as "none left".
    """
    deadline = monotonic() + timeout_s
    while True:
        try:
            left = store.list()
        except ReadFailedError:
            if monotonic() >= deadline:
                raise
            log.warning("listing PowerPolicies failed; retrying", exc_info=True)
            sleep(poll_interval_s)
            continue
        if not left:
            return []
        if monotonic() >= deadline:
            return left
        for policy in left:
            store.delete(policy.name)
        log.info(
            "waiting for the operator to restore and release: %s", ", ".join(p.name for p in left)
        )
        sleep(poll_interval_s)


class KubernetesPolicyStore:
    """PowerPolicies through the Kubernetes API (cluster-scoped custom objects)."""

    def __init__(self, api: Any) -> None:  # kubernetes.client.CustomObjectsApi
        from kubernetes.client.exceptions import ApiException

        self._api = api
        self._api_exception = ApiException

    def list(self) -> list[Leftover]:
        try:
            listing = self._api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        except (self._api_exception, OSError) as error:
            raise ReadFailedError(str(error)) from error
        return [
            Leftover(
                name=item["metadata"]["name"],
                finalizers=tuple(item["metadata"].get("finalizers") or ()),
            )
            for item in listing.get("items", [])
        ]

    def delete(self, name: str) -> None:
        try:
            self._api.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except self._api_exception as error:
            if error.status != HTTP_NOT_FOUND:
                log.warning("deleting PowerPolicy %s failed: %s", name, error.reason)


def describe(left: Sequence[Leftover]) -> str:
    """Why the uninstall stops, and what to look at."""
    lines = [f"{len(left)} PowerPolicy object(s) still present; GPU defaults may not be restored:"]
    lines += [f"  {p.name}: finalizers {list(p.finalizers)}" for p in left]
    lines.append(
        "Is the POLCA operator running? See `kubectl describe powerpolicy NAME` and "
        "`kubectl get nodepowerstates`. Helm stopped the uninstall; POLCA keeps running. "
        "To remove POLCA anyway: `helm uninstall --no-hooks` (GPUs keep their settings)."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--timeout-s", type=float, required=True)
    parser.add_argument("--poll-interval-s", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    import kubernetes

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()
    else:  # run by hand (or by the chart's tests) with a kubeconfig
        kubernetes.config.load_kube_config()
    store = KubernetesPolicyStore(kubernetes.client.CustomObjectsApi())
    try:
        left = release_all(store, timeout_s=args.timeout_s, poll_interval_s=args.poll_interval_s)
    except ReadFailedError as error:
        print(f"cannot list PowerPolicies: {error}", file=sys.stderr)
        return 1
    if left:
        print(describe(left), file=sys.stderr)
        return 1
    log.info("no PowerPolicy left: GPU defaults restored by the operator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
