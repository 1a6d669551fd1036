"""A fake kubelet on a real unix socket, and a client pointed at it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from polca_node.podresources.client import PodResourcesClient
from polca_testbed.fake_kubelet import FakeKubelet


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Short on purpose: unix socket paths must stay under 108 bytes, tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="polca-pr-", dir="/tmp"))
    yield directory / "kubelet.sock"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def kubelet(socket_path: Path) -> Iterator[FakeKubelet]:
    with FakeKubelet(socket_path) as server:
        yield server


@pytest.fixture
def client(kubelet: FakeKubelet) -> Iterator[PodResourcesClient]:
    with PodResourcesClient(kubelet.socket_path, timeout_s=2.0) as reader:
        yield reader
