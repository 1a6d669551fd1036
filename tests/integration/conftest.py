"""Tests against the real control plane (kube-apiserver + etcd on loopback); the fixtures they
share with tests/chaos are in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
