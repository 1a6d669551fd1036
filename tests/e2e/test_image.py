"""The project's own image, built by `make image` (podman, a base from Debian's packages).

Skips with the reason when podman or the image is missing: `make e2e` installs and builds both.
"""

from __future__ import annotations

import pytest

from polca_testbed.containers import image_missing_reason, image_size_bytes, run_in_image

pytestmark = pytest.mark.e2e

_missing = image_missing_reason()
if _missing is not None:
    pytest.skip(_missing, allow_module_level=True)


@pytest.mark.parametrize("command", ["polca-operator", "polca-node"])
def test_entry_point_answers_help(command: str) -> None:
    result = run_in_image([command, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {command}")


def test_runs_as_the_unprivileged_user_the_chart_expects() -> None:
    result = run_in_image(["id", "-u"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "65532"


def test_python_is_debian_bookworms_311() -> None:
    result = run_in_image(["python3", "-c", "import sys; print(sys.version_info[:2])"])
    assert result.stdout.strip() == "(3, 11)"
    assert image_size_bytes() < 1_000_000_000  # 475 MB on 2026-11-30; a leap means a mistake
