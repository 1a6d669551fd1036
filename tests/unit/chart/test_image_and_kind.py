"""The Dockerfile, the kind config and the Makefile targets, checked without Docker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from polca.extras import SIM_MODULES

REPO_ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
KIND_CLUSTER = yaml.safe_load((REPO_ROOT / "deploy/kind/cluster.yaml").read_text())
KIND_VALUES = yaml.safe_load((REPO_ROOT / "deploy/kind/values.yaml").read_text())
CHART_VALUES = yaml.safe_load((REPO_ROOT / "charts/polca/values.yaml").read_text())


def final_stage(dockerfile: str) -> str:
    return dockerfile.rsplit("\nFROM ", 1)[1]


class TestDockerfile:
    def test_python_311_slim_base(self) -> None:
        base = re.search(r"^ARG BASE=(\S+)$", DOCKERFILE, re.MULTILINE)
        assert base is not None
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base.group(1))
        assert PYPROJECT["project"]["requires-python"] == ">=3.11"

    def test_runs_as_non_root_by_default(self) -> None:
        users = re.findall(r"^USER (\S+)$", final_stage(DOCKERFILE), re.MULTILINE)
        assert users == ["65532:65532"]

    def test_copies_every_package_root_from_the_project_files(self) -> None:
        copied = set(re.findall(r"^COPY (\S+)/ ", DOCKERFILE, re.MULTILINE))
        package_roots = set(PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]) - {"."}
        core_packages = {
            p.split(".")[0]
            for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
            if (REPO_ROOT / p.split(".")[0].rstrip("*")).is_dir()
        }
        assert package_roots | core_packages <= copied
        assert all((REPO_ROOT / path).is_dir() for path in copied)
        assert re.search(r"^COPY pyproject.toml ", DOCKERFILE, re.MULTILINE)
        # Dependencies from pyproject.toml (a layer of their own, with the EXTRAS asked for),
        # then the project itself.
        assert "tomllib.load(open('pyproject.toml'" in DOCKERFILE
        assert "p['optional-dependencies'][e]" in DOCKERFILE
        assert "pip install --no-compile --no-deps ." in DOCKERFILE
        assert re.search(r'^ARG EXTRAS=""$', DOCKERFILE, re.MULTILINE)

    def test_runtime_image_has_no_simulator_or_test_helpers(self) -> None:
        """The operator and the daemon need neither (tests/unit/test_sim_extra.py runs them
        without the extra); the image drops polca_testbed, installed with the package."""
        names = {re.split(r"[<>=\[ ]", d)[0] for d in PYPROJECT["project"]["dependencies"]}
        extras = PYPROJECT["project"]["optional-dependencies"]
        sim = {re.split(r"[<>=\[ ]", d)[0] for d in extras["sim"]}
        assert sim == SIM_MODULES
        assert not names & sim
        assert "polca[sim]" in extras["test"]  # `make test` installs everything
        assert "rm -rf /opt/polca/lib/python3*/site-packages/polca_testbed" in DOCKERFILE

    def test_node_daemon_needs_no_grpcio_or_protobuf(self) -> None:
        """The daemon speaks gRPC to the kubelet over h2 and decodes the answers itself;
        grpcio and protobuf (~24 MB of the daemon's RSS) are the test kubelet's, in the test
        extra."""
        names = {re.split(r"[<>=\[ ]", d)[0] for d in PYPROJECT["project"]["dependencies"]}
        extras = PYPROJECT["project"]["optional-dependencies"]
        test = {re.split(r"[<>=\[ ]", d)[0] for d in extras["test"]}
        assert "h2" in names
        assert not {"grpcio", "protobuf"} & names
        assert {"grpcio", "protobuf"} <= test

    def test_ships_bytecode(self) -> None:
        """The runtime writes no bytecode, so the image carries it: a daemon compiling every
        module at start holds ~4 MB more (README, "Benchmarks")."""
        assert "PYTHONDONTWRITEBYTECODE=1" in final_stage(DOCKERFILE)
        compile_step = re.search(
            r"^RUN .*-m compileall .*/opt/polca/lib$", DOCKERFILE, re.MULTILINE
        )
        assert compile_step is not None
        assert "--invalidation-mode unchecked-hash" in compile_step.group(0)
        assert DOCKERFILE.index("compileall") > DOCKERFILE.index("site-packages/polca_testbed")

    def test_both_entry_points_are_console_scripts(self) -> None:
        assert {"polca-operator", "polca-node"} <= set(PYPROJECT["project"]["scripts"])

    def test_build_context_leaves_local_state_out(self) -> None:
        ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
        assert {".git", ".venv", "tests"} <= ignored
        copied = set(re.findall(r"^COPY (\S+?)/? ", DOCKERFILE, re.MULTILINE)) - {"--from=build"}
        assert not copied & ignored


class TestKind:
    def test_workers_pose_as_gpu_nodes_the_chart_selects(self) -> None:
        workers = [n for n in KIND_CLUSTER["nodes"] if n["role"] == "worker"]
        assert len(workers) >= 2
        selector = CHART_VALUES["node"]["nodeSelector"]
        domain = KIND_VALUES["examplePolicy"]["nodeSelector"]
        for worker in workers:
            assert selector.items() <= worker["labels"].items()
            assert domain.items() <= worker["labels"].items()

    def test_kind_values_use_the_loaded_image_and_fake_gpus(self) -> None:
        assert KIND_VALUES["image"]["pullPolicy"] == "Never"
        assert KIND_VALUES["fakeGpu"]["enabled"] is True
        assert KIND_CLUSTER["apiVersion"] == "kind.x-k8s.io/v1alpha4"


@pytest.fixture
def sandbox_path(tmp_path: Path) -> str:
    """A PATH with make and a shell, plus a `docker` client that finds no engine, no kind."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "bash", "sh", "env", "cat", "echo"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)
    return str(bin_dir)


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("image", "no Docker engine answers"),
        ("kind-up", "'kind' is not installed"),
        ("kind-load", "'kind' is not installed"),
        ("kind-deploy", "'kind' is not installed"),
        ("kind-down", "'kind' is not installed"),
    ],
)
def test_docker_targets_fail_plainly_without_docker(
    sandbox_path: str, target: str, says: str
) -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=REPO_ROOT,
        env={"PATH": sandbox_path, "HOME": os.environ.get("HOME", "/")},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"make {target}: {says}" in result.stderr
    assert "docker build" not in result.stdout
    assert "kind create" not in result.stdout
