"""A real Prometheus (Debian's `prometheus` package) on loopback, scraping given targets every 1 s.

Own data directory, own process group, stopped as a whole. Targets live in a file_sd file, so
`set_targets()` takes effect within a second without a restart.

    prom = start_prometheus(tmp_path / "prometheus", ["127.0.0.1:9402"])
    prom.query("sum(polca_gpu_power_watts)")
    prom.stop()
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from polca_testbed.processes import free_port, group_alive, start_process, stop_group, wait_until

__all__ = ["Prometheus", "PrometheusError", "find_prometheus", "start_prometheus"]

START_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 5.0


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or answered a query with an error."""


def find_prometheus() -> Path:
    """The prometheus binary on PATH (`make prometheus` installs Debian's package)."""
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusError("prometheus is not installed; run `make prometheus`")
    return Path(found)


def _target_groups(targets: Iterable[str]) -> list[dict[str, Any]]:
    return [{"targets": sorted(set(targets)), "labels": {}}]


@dataclass
class Prometheus:
    """A running Prometheus and helpers for tests."""

    state_dir: Path
    port: int
    pid: int
    scrape_interval_s: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets_file(self) -> Path:
        return self.state_dir / "targets.json"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "prometheus.log"

    def set_targets(self, targets: Iterable[str]) -> None:
        """Replace the scraped `host:port` targets (picked up by file discovery)."""
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(_target_groups(targets)))
        tmp.replace(self.targets_file)  # atomic: Prometheus never reads half a file

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:  # noqa: S310
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result list (series with `metric` and `value`)."""
        data = urllib.parse.urlencode({"query": expr}).encode()
        request = urllib.request.Request(f"{self.url}/api/v1/query", data=data)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as r:  # noqa: S310
                payload = json.load(r)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PrometheusError(f"query {expr!r} failed: {exc}") from exc
        if payload.get("status") != "success":
            raise PrometheusError(f"query {expr!r}: {payload.get('error')}")
        result: list[dict[str, Any]] = payload["data"]["result"]
        return result

    def wait_for(self, expr: str, *, count: int = 1, timeout_s: float = 30.0) -> None:
        """Wait until `expr` returns at least `count` series."""
        wait_until(
            lambda: len(self.query(expr)) >= count,
            timeout_s=timeout_s,
            what=f"{count} series of {expr!r}",
            alive=self.alive,
            log_path=self.log_path,
        )

    def alive(self) -> bool:
        return group_alive(self.pid)

    def stop(self) -> None:
        stop_group(self.pid)


def start_prometheus(
    state_dir: Path,
    targets: Iterable[str] = (),
    *,
    scrape_interval_s: float = 1.0,
    port: int | None = None,
    binary: Path | None = None,
    jobs: int = 1,
    retention: str = "2h",
) -> Prometheus:
    """Start Prometheus scraping `targets` (`host:port`, path /metrics); wait until ready.

    `jobs` > 1 scrapes every target from that many jobs, as a cluster with both a
    ServiceMonitor and a PodMonitor on the daemons does: every series arrives `jobs` times.
    """
    binary = binary or find_prometheus()
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    interval = f"{int(scrape_interval_s * 1000)}ms"
    prom = Prometheus(state_dir, port, pid=0, scrape_interval_s=scrape_interval_s)
    prom.set_targets(targets)
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "scrape_configs": [
            {
                "job_name": "polca" if job == 0 else f"polca-{job + 1}",
                "metrics_path": "/metrics",
                "file_sd_configs": [{"files": [str(prom.targets_file)], "refresh_interval": "1s"}],
            }
            for job in range(jobs)
        ],
    }
    config_path = state_dir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    process = start_process(
        [
            str(binary),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={state_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            # Backfilled histories (polca_testbed.power_history) need more than the default.
            f"--storage.tsdb.retention.time={retention}",
            "--log.level=warn",
        ],
        log_path=prom.log_path,
        cwd=state_dir,
    )
    prom.pid = process.pid
    try:
        wait_until(
            prom.ready,
            timeout_s=START_TIMEOUT_S,
            what="prometheus",
            alive=prom.alive,
            log_path=prom.log_path,
        )
    except BaseException:
        prom.stop()
        raise
    return prom


def serve_until_stopped(prom: Prometheus) -> None:  # pragma: no cover - manual use
    """Keep `prom` running until it exits or the caller is interrupted; then stop it."""
    try:
        while prom.alive():
            time.sleep(1)
    finally:
        prom.stop()


def _main() -> None:  # pragma: no cover - manual use
    import argparse

    parser = argparse.ArgumentParser(description="Run Prometheus scraping targets every 1 s.")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("targets", nargs="*")
    args = parser.parse_args()
    prom = start_prometheus(args.dir, args.targets)
    print(prom.url, flush=True)
    serve_until_stopped(prom)


if __name__ == "__main__":
    _main()
