"""Render the Helm chart with the pinned helm binary (`helm template` needs no cluster)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from polca_testbed.cluster import find_bin_dir

CHART_DIR = Path(__file__).resolve().parents[3] / "charts" / "polca"

HelmTemplate = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm_template(tmp_path_factory: pytest.TempPathFactory) -> HelmTemplate:
    """`helm template polca charts/polca -n polca-system [-f FILE]... [--set K=V]... [EXTRA]...`"""
    helm = find_bin_dir() / "helm"
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(
        values_files: Iterable[Path] = (),
        set_values: Mapping[str, str] | None = None,
        extra: Iterable[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(helm), "template", "polca", str(CHART_DIR), "-n", "polca-system"]
        for path in values_files:
            argv += ["-f", str(path)]
        for key, value in (set_values or {}).items():
            argv += ["--set", f"{key}={value}"]
        return subprocess.run(
            [*argv, *extra], capture_output=True, text=True, check=False, env=env, timeout=60
        )

    return run


@pytest.fixture(scope="session")
def render(helm_template: HelmTemplate) -> Callable[..., list[dict[str, Any]]]:
    """Like `helm_template`, parsed into objects; fails the test when rendering fails."""

    def run(
        values_files: Iterable[Path] = (),
        set_values: Mapping[str, str] | None = None,
        extra: Iterable[str] = (),
    ) -> list[dict[str, Any]]:
        result = helm_template(values_files, set_values, extra)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return run
