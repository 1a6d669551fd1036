"""Fixtures of the operator's unit tests (the fakes live in op_fakes)."""

from __future__ import annotations

import pytest

from polca_operator.fakes import Harness, make_harness


@pytest.fixture
def harness() -> Harness:
    return make_harness()
