"""Version skew on a test cluster: the PowerPolicy CRD as a newer POLCA would install it.

A newer CRD may add spec fields this version's models do not know, and relax a bound they
enforce; the API server then stores objects the components must still handle (safety rule 6:
read tolerantly, and what cannot be read is unknown, never absent).

    with newer_powerpolicy_crd(cluster, REPO / "crds" / "powerpolicies.polca.dev.yaml"):
        ...  # FUTURE_FIELD is stored; a budgetWatts of SKEWED_BUDGET_W is accepted
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from polca_testbed.cluster import Cluster
from polca_testbed.polling import eventually

__all__ = ["FUTURE_FIELD", "SKEWED_BUDGET_W", "newer_powerpolicy_crd"]

FUTURE_FIELD = "futureKnob"  # a string spec field only the newer CRD has
SKEWED_BUDGET_W = 5e9  # above this version's bound on budgetWatts (1e9), within the newer's
_APPLY = ("apply", "--server-side", "--force-conflicts", "-f", "-")


def _manifest(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


@contextmanager
def newer_powerpolicy_crd(cluster: Cluster, crd_path: Path) -> Iterator[None]:
    """Install the newer CRD, wait until the API server serves it, put `crd_path` back after."""
    crd = _manifest(crd_path)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"][FUTURE_FIELD] = {"type": "string"}
    spec["properties"]["budgetWatts"]["maximum"] = 1e12
    cluster.kubectl(*_APPLY, input=json.dumps(crd))
    probe = json.dumps({
        "apiVersion": "polca.dev/v1alpha1", "kind": "PowerPolicy",
        "metadata": {"name": "skew-probe"},
        "spec": {"allNodes": True, "budgetWatts": SKEWED_BUDGET_W, FUTURE_FIELD: "on"},
    })  # fmt: skip

    def served() -> bool:
        created = cluster.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=probe, check=False
        )
        return created.returncode == 0 and FUTURE_FIELD in json.loads(created.stdout)["spec"]

    eventually("the API server to serve the newer CRD", served, 30, interval_s=0.1)
    try:
        yield
    finally:
        cluster.kubectl(*_APPLY, input=json.dumps(_manifest(crd_path)))
