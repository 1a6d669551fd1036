"""Fake GPUs for tests, kind and the demo: a `FakeNvml` whose knobs outlive the daemon process.

Real GPUs keep their locked clocks and power limits when the daemon exits; an in-process fake
would forget them, and "a restart never uncaps" could not be tested. `PersistentFakeNvml` wraps
a `FakeNvml`: after every setter call it writes the GPUs' knobs to a small JSON state file
(atomically), and at start it restores them from that file through the fake's own setters.
The file is also how tests and the demo see what the GPUs have from outside the process::

    {"gpus": [{"index": 0, "uuid": "GPU-...", "clock_ceiling_mhz": 1110,
               "locked_clocks_mhz": [345, 1110], "power_limit_w": 700.0}, ...],
     "setter_calls": {"nvmlDeviceSetGpuLockedClocks": 8, ...}}

`setter_calls` counts setter calls over every run that used the file, so a test can tell that
a restart made no reset call.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polca_node.gpu.fake_nvml import (
    MEASURED_ENERGY_READ_S,
    SETTER_FUNCTIONS,
    FakeHandle,
    FakeNvml,
)
from polca_node.gpu.load import LoadSource, parse_load_spec

__all__ = [
    "PersistentFakeNvml",
    "build_fake_nvml",
    "energy_read_s",
    "fake_gpu_uuids",
    "load_source",
    "read_fake_state",
]

logger = logging.getLogger(__name__)


def read_fake_state(path: Path) -> dict[str, Any]:
    """The state file's content ({} when missing or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class PersistentFakeNvml:
    """A FakeNvml whose knobs are saved to `state_path` after every change (see module doc)."""

    def __init__(self, fake: FakeNvml, state_path: Path) -> None:
        self.fake = fake
        self.state_path = state_path
        self._lock = threading.Lock()
        self._setter_calls: Counter[str] = Counter(
            {str(k): int(v) for k, v in read_fake_state(state_path).get("setter_calls", {}).items()}
        )
        self._restore()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.fake, name)
        if name in SETTER_FUNCTIONS:
            return self._saving(name, attribute)
        return attribute

    def _saving(self, name: str, setter: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            try:
                return setter(*args)
            finally:
                with self._lock:
                    self._setter_calls[name] += 1
                    self._save()

        return call

    def _restore(self) -> None:
        saved = {
            entry.get("index"): entry
            for entry in read_fake_state(self.state_path).get("gpus", [])
            if isinstance(entry, dict)
        }
        if not saved:
            return
        fake = self.fake
        fake.nvmlInit()
        try:
            for gpu in fake.gpus:
                entry = saved.get(gpu.index)
                if entry is None or entry.get("uuid") != gpu.uuid:
                    continue  # another fleet or node wrote this file: start from defaults
                handle = FakeHandle(gpu.index)
                locked = entry.get("locked_clocks_mhz")
                if locked:
                    fake.nvmlDeviceSetGpuLockedClocks(handle, int(locked[0]), int(locked[1]))
                limit_w = entry.get("power_limit_w")
                if limit_w is not None:
                    fake.nvmlDeviceSetPowerManagementLimit(handle, round(float(limit_w) * 1000))
        finally:
            fake.nvmlShutdown()
        fake.settle()  # real GPUs kept these knobs while the daemon was away: no transient
        logger.info("fake GPUs: restored knobs from %s", self.state_path)

    def _save(self) -> None:
        state = {
            "gpus": [
                {
                    "index": gpu.index,
                    "uuid": gpu.uuid,
                    "clock_ceiling_mhz": gpu.clock_ceiling_mhz,
                    "locked_clocks_mhz": list(gpu.locked_clocks_mhz)
                    if gpu.locked_clocks_mhz
                    else None,
                    "power_limit_w": gpu.power_limit_mw / 1000.0,
                }
                for gpu in self.fake.gpus
            ],
            "setter_calls": dict(self._setter_calls),
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(state, indent=1), encoding="utf-8")
        temporary.replace(self.state_path)


def load_source(spec: str | None) -> LoadSource | None:
    """A load source from `--fake-load`: a spec (idle, constant:..., file:PATH, trace:...) or a
    bare path."""
    if not spec:
        return None
    if spec == "idle" or spec.startswith(("constant:", "file:", "trace:")):
        return parse_load_spec(spec)
    return parse_load_spec(f"file:{spec}")


# What one energy-counter read costs the daemon's fake GPUs, in seconds; the measured 3.9 ms by
# default, so the daemon's read path costs what it costs on a real node. 0 for a fake that never
# waits.
ENERGY_READ_ENV = "POLCA_FAKE_ENERGY_READ_S"


def energy_read_s(environ: dict[str, str] | None = None) -> float:
    """The energy read cost from `POLCA_FAKE_ENERGY_READ_S` (seconds, >= 0), else measured."""
    text = (os.environ if environ is None else environ).get(ENERGY_READ_ENV, "").strip()
    if not text:
        return MEASURED_ENERGY_READ_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{ENERGY_READ_ENV}={text!r} is not a number of seconds") from None
    if not 0 <= value < 1:
        raise ValueError(f"{ENERGY_READ_ENV}={text!r} must be within [0, 1) seconds")
    return value


def build_fake_nvml(
    profile: str, *, node_name: str, load: str | None = None, state_path: Path | None = None
) -> FakeNvml | PersistentFakeNvml:
    """The fake NVML module for `--gpu-backend fake` (UUIDs seeded by the node name)."""
    fake = FakeNvml(profile, load=load_source(load), seed=node_name, energy_read_s=energy_read_s())
    return fake if state_path is None else PersistentFakeNvml(fake, state_path)


def fake_gpu_uuids(profile: str, *, node_name: str) -> list[str]:
    """The UUIDs `build_fake_nvml` gives the fake GPUs of `node_name`, by index (for fake
    kubelets that hand these GPUs to pods)."""
    return [gpu.uuid for gpu in FakeNvml(profile, seed=node_name).gpus]
