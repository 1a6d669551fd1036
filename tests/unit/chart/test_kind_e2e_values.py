"""`make kind-deploy`, `make kind-e2e` and `make e2e` install the chart from the same values."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from polca_testbed.e2e_target import KIND_VALUES, fake_gpu_settings, kind_helm_args

REAL_NODE_VALUES = Path(__file__).resolve().parents[3] / "deploy" / "real-node" / "values.yaml"
Render = Callable[..., list[dict[str, Any]]]


def daemon(objects: list[dict[str, Any]]) -> dict[str, Any]:
    ds = next(o for o in objects if o["kind"] == "DaemonSet")
    container: dict[str, Any] = ds["spec"]["template"]["spec"]["containers"][0]
    return container


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_kind_e2e_renders_kind_deploys_chart_without_its_example_policy(render: Render) -> None:
    e2e = render(extra=kind_helm_args("polca:dev"))
    deploy = render([KIND_VALUES], {"image.repository": "polca", "image.tag": "dev"})
    assert [o for o in deploy if o["kind"] == "PowerPolicy"], "kind-deploy's example policy"
    assert not [o for o in e2e if o["kind"] == "PowerPolicy"], "the test applies its own"
    assert daemon(e2e) == daemon(deploy)
    assert [o for o in e2e if o["kind"] != "PowerPolicy"] == [
        o for o in deploy if o["kind"] != "PowerPolicy"
    ]
    container = daemon(e2e)
    assert (container["image"], container["imagePullPolicy"]) == ("polca:dev", "Never")
    # What the test reads on the node and how its workloads ask for GPUs, as rendered.
    state, annotation = fake_gpu_settings([KIND_VALUES])
    assert env(container)["POLCA_FAKE_STATE"] == state
    assert env(container)["POLCA_FAKE_GPU_ANNOTATION"] == annotation


def test_the_real_node_layers_its_differences_over_the_kind_values(render: Render) -> None:
    kind = env(daemon(render([KIND_VALUES])))
    real = env(daemon(render([KIND_VALUES, REAL_NODE_VALUES])))
    assert real["POLCA_GPU_BACKEND"] == kind["POLCA_GPU_BACKEND"] == "fake"
    assert real["POLCA_FAKE_PROFILE"] == kind["POLCA_FAKE_PROFILE"]
    assert kind["POLCA_FAKE_GPU_ANNOTATION"]
    assert not real.get("POLCA_FAKE_GPU_ANNOTATION")  # GPUs from the device plugin there
