"""The `sim` extra: the operator and the node daemon run without numpy, rich and matplotlib;
what needs them says to `pip install 'polca[sim]'` instead of a traceback.

Each case runs a fresh interpreter in which the extra's modules cannot be imported
(`sys.modules[name] = None` makes `import name` raise ModuleNotFoundError, as a missing package
does), so what this venv has installed for the tests does not hide a stray import.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from polca.extras import SIM_INSTALL, SIM_MODULES

TIMEOUT_S = 60
BLOCK = f"import sys\nfor name in {sorted(SIM_MODULES)!r}:\n    sys.modules[name] = None\n"


def run_blocked(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`module`'s main(argv) in an interpreter without the `sim` extra."""
    code = f"{BLOCK}from {module} import main\nsys.exit(main({list(argv)!r}))\n"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("polca_operator.main", ["--help"]),
        ("polca_node.main", ["--help"]),
        ("polca_node.main", ["--version"]),
        ("polca.cli", ["validate", "--help"]),  # validating a policy needs no simulator
    ],
)
def test_runs_without_the_extra(module: str, argv: list[str]) -> None:
    result = run_blocked(module, *argv)
    assert (result.returncode, result.stderr) == (0, "")


def test_the_daemon_and_operator_do_not_even_load_the_extra() -> None:
    """Installed or not, the production paths import none of it (memory, start time)."""
    code = (
        "import sys\nimport polca_node.main, polca_node.daemon, polca_operator.main\n"
        f"print(sorted(m for m in sys.modules if m.partition('.')[0] in {set(SIM_MODULES)!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "argv", "what"),
    [
        ("polca.cli", ["simulate", "--trace", "conv"], "polca simulate"),
        ("polca.cli", ["simulate", "--help"], "polca simulate"),
        ("polca.cli", ["replay", "--prometheus-url", "http://x"], "polca replay"),
        ("polca_node.main", ["--node-name", "n1", "--gpu-backend", "fake"], "--gpu-backend fake"),
    ],
)
def test_what_needs_the_extra_says_what_to_install(module: str, argv: list[str], what: str) -> None:
    result = run_blocked(module, *argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert what in lines[0]
    assert SIM_INSTALL in lines[0]
