"""values.schema.json: every key is checked, bad values fail with the key's path."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

CHART_DIR = Path(__file__).resolve().parents[3] / "charts" / "polca"
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

HelmTemplate = Callable[..., subprocess.CompletedProcess[str]]

# (--set key, value, a fragment of helm's complaint naming the key)
BAD_VALUES = [
    ("node.guardPeriodSeconds", "2", "/node/guardPeriodSeconds"),
    ("node.guardPeriodSeconds", "0", "/node/guardPeriodSeconds"),
    ("operator.replicas", "0", "/operator/replicas"),
    ("operator.metricsPort", "80", "/operator/metricsPort"),
    ("logLevel", "verbose", "/logLevel"),
    ("image.pullPolicy", "Sometimes", "/image/pullPolicy"),
    ("fakeGpu.profile", "H100 x8", "/fakeGpu/profile"),
    ("fakeGpu.annotation", "not a label key!", "/fakeGpu/annotation"),
    ("operator.prometheusUrl", "prometheus:9090", "/operator/prometheusUrl"),
    ("monitoring.serviceMonitor.nodeInterval", "5 seconds", "/monitoring/serviceMonitor"),
    ("restoreOnUninstall.timeoutSeconds", "0", "/restoreOnUninstall/timeoutSeconds"),
    ("examplePolicy.budgetWatts", "-1", "/examplePolicy/budgetWatts"),
    ("node.guardPeriod", "0.1", "guardPeriod"),  # a typo: unknown keys are refused
]


def test_both_monitors_at_once_are_refused(helm_template: HelmTemplate) -> None:
    """Both would scrape every daemon twice, and a plain sum would count its power twice."""
    both = {"monitoring.serviceMonitor.enabled": "true", "monitoring.podMonitor.enabled": "true"}
    result = helm_template(set_values=both)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert "monitoring" in result.stderr, result.stderr
    for one in both:
        assert helm_template(set_values={one: "true"}).returncode == 0


def schema_paths(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        yield from schema_paths(sub, path)


def value_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        described = SCHEMA_OBJECTS.get(path)
        if isinstance(value, dict) and described is not None and "properties" in described:
            yield from value_paths(value, path)


def _objects(schema: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        yield path, sub
        yield from _objects(sub, path)


SCHEMA_OBJECTS = dict(_objects(SCHEMA))


def test_every_default_value_is_described_by_the_schema() -> None:
    assert set(value_paths(VALUES)) <= set(schema_paths(SCHEMA))


def test_chart_owned_objects_refuse_unknown_keys() -> None:
    closed = [
        path
        for path, sub in SCHEMA_OBJECTS.items()
        if sub.get("type") == "object" and "properties" in sub
    ]
    assert closed
    assert all(SCHEMA_OBJECTS[path]["additionalProperties"] is False for path in closed)
    assert SCHEMA["additionalProperties"] is False


def test_defaults_pass(helm_template: HelmTemplate) -> None:
    result = helm_template()
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("key", "value", "named"), BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES]
)
def test_bad_value_is_refused_with_its_path(
    helm_template: HelmTemplate, key: str, value: str, named: str
) -> None:
    result = helm_template(set_values={key: value})
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert named in result.stderr, result.stderr
