"""The project's image and the container tools on this host: podman (build, run, save).

Podman here runs with Debian's `runc` and explicit rlimits: the default `crun` refuses this
kernel's hybrid cgroup layout, and podman's default rlimits exceed the sandbox's hard limits.
tools/build-image.sh uses the same flags to build.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_IMAGE_SCRIPT = REPO_ROOT / "tools" / "build-image.sh"
IMAGE = "localhost/polca:dev"
# No network: nothing run this way needs one, and podman's default bridge would leave an
# interface (cni-podman0) behind on the host.
PODMAN_RUN_FLAGS = ("--runtime", "runc", "--ulimit", "nofile=1024:1024",
                    "--ulimit", "nproc=1024:1024", "--network", "none")  # fmt: skip


def image_missing_reason(image: str = IMAGE) -> str | None:
    """Why `image` cannot be run with podman here, or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed (`make node-packages` installs Debian's, as root)"
    if shutil.which("runc") is None:
        return "runc is not installed (`make node-packages` installs Debian's, as root)"
    found = subprocess.run(["podman", "image", "exists", image], capture_output=True, check=False)
    if found.returncode != 0:
        return f"image {image} is not built (`make image` builds it)"
    return None


def run_in_image(
    argv: Sequence[str], *, image: str = IMAGE, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """`podman run --rm` of `argv` in `image` (its own entry user), output captured."""
    return subprocess.run(
        ["podman", "run", "--rm", *PODMAN_RUN_FLAGS, image, *argv],
        capture_output=True, text=True, check=False, timeout=timeout_s,
    )  # fmt: skip


def image_size_bytes(image: str = IMAGE) -> int:
    """The image's unpacked size, as `podman images` reports it."""
    out = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", image],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout.strip())
