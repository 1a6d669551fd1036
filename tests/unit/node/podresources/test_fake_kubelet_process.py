"""The fake kubelet as a process serving a JSON state file (how the demo runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polca_node.podresources.client import ContainerRef, PodResourcesClient
from polca_node.podresources.errors import KubeletUnavailableError
from polca_testbed.fake_kubelet import FakeKubelet

GPU0 = "GPU-00000000-0000-4000-8000-000000000000"
GPU1 = "GPU-11111111-1111-4111-8111-111111111111"


def _state(*pods: tuple[str, str]) -> dict[str, object]:
    return {
        "pods": [
            {"namespace": "prod", "name": name, "containers": {"c": {"nvidia.com/gpu": [gpu]}}}
            for name, gpu in pods
        ],
        "allocatable": {"nvidia.com/gpu": [GPU0, GPU1]},
    }


def _write(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _poll(client: PodResourcesClient, want: int, timeout_s: float = 30.0) -> int:
    """Wait (not time) until the server shows `want` assignments; return what it shows."""
    deadline = time.monotonic() + timeout_s
    seen = -1
    while time.monotonic() < deadline:
        try:
            seen = len(client.list_gpu_assignments())
        except KubeletUnavailableError:
            seen = -1
        if seen == want:
            break
        time.sleep(0.05)
    return seen


def test_load_state_replaces_everything(kubelet: FakeKubelet, client: PodResourcesClient) -> None:
    kubelet.assign("old", "gone", "c", [GPU1])
    kubelet.load_state(_state(("llm-0", GPU0)))
    assignments = client.list_gpu_assignments()
    assert [(a.owner, a.device.raw) for a in assignments] == [
        (ContainerRef("prod", "llm-0", "c"), GPU0)
    ]
    assert [d.raw for d in client.allocatable_gpu_devices()] == [GPU0, GPU1]


@pytest.mark.slow
def test_process_serves_and_follows_the_state_file(socket_path: Path) -> None:
    state = socket_path.parent / "state.json"
    _write(state, _state(("llm-0", GPU0)))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polca_testbed.fake_kubelet",
            "--socket",
            str(socket_path),
            "--state",
            str(state),
            "--poll-s",
            "0.05",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with PodResourcesClient(socket_path, timeout_s=2.0) as client:
            assert _poll(client, 1) == 1
            _write(state, _state(("llm-0", GPU0), ("train-0", GPU1)))
            assert _poll(client, 2) == 2
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
    assert not socket_path.exists()  # removed on a clean stop
