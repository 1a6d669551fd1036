"""The node daemon's cost: CPU per control loop and RSS, 8 fake GPUs, 0.5 s guard period.

Targets (issue 4): under 2% of one core and under 80 MB RSS.

Two measurements:
1. the real `polca-node` process on the real control plane (kube-apiserver + etcd), with a
   fake kubelet, 8 fake H100s under a constant decode load, a PowerPolicy at stage 2 with its
   guard on, and a Prometheus-like scrape of /metrics every 15 s. CPU is the process's
   user+system time (all threads: sampling, guard, watches, HTTP) over the window, from
   /proc/<pid>/stat; RSS from /proc/<pid>/status (VmRSS now, VmHWM peak);
2. one control loop in process (read 8 GPUs, run the guard, refresh the metrics snapshot),
   timed with `time.process_time` over many loops: the loop's own CPU cost.

    python benchmarks/bench_node.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from polca.power.model import PhaseDemand
from polca_node.daemon import DaemonConfig, NodeDaemon
from polca_node.exporter import NodeMetrics
from polca_node.gpu.fake_nvml import FakeNvml
from polca_node.gpu.load import ConstantLoad
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.kube_client import KubeClient
from polca_node.node_status import PreviousRecord
from polca_testbed.cluster import start_cluster
from polca_testbed.nodes import SimNodes
from polca_testbed.procstat import cpu_seconds, rss_mb

REPO = Path(__file__).resolve().parents[1]
GUARD_PERIOD_S = 0.5
PROFILE = "H100-SXM:8"
CPU_TARGET_PCT = 2.0
RSS_TARGET_MB = 80.0
LOAD = {"decode": 0.8, "prefill": 0.1}


def cpu_s_of(pid: int) -> float:
    cpu = cpu_seconds(pid)
    if cpu is None:
        raise RuntimeError(f"polca-node (pid {pid}) exited during the benchmark")
    return cpu


def scrape(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return len(response.read())


def measure_process(seconds: float, warmup_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="polca-bench-node-") as work:
        cluster = start_cluster(Path(work) / "cluster")
        try:
            cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            "crd/powerpolicies.polca.dev")  # fmt: skip
            with SimNodes(cluster.kubeconfig) as nodes:
                node = nodes.add("bench-node", labels={"polca.dev/bench": "yes"}, profile=PROFILE,
                                 guard_period_s=GUARD_PERIOD_S)  # fmt: skip
                node.set_load(LOAD)
                for pod, gpus in (("train-0", [0, 1, 2, 3]), ("llm-0", [4, 5])):
                    node.assign_pod("default", pod, gpus)
                    labels = (
                        {"training.kubeflow.org/job-name": "j"} if pod.startswith("train") else {}
                    )
                    cluster.kubectl("apply", "-f", "-", input=json.dumps({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pod, "namespace": "default", "labels": labels},
                        "spec": {"nodeName": node.name,
                                 "containers": [{"name": "main", "image": "none"}]},
                    }))  # fmt: skip
                cluster.kubectl("apply", "-f", "-", input=json.dumps({
                    "apiVersion": "polca.dev/v1alpha1", "kind": "PowerPolicy",
                    "metadata": {"name": "bench"},
                    "spec": {"nodeSelector": {"matchLabels": {"polca.dev/bench": "yes"}},
                             "budgetWatts": 4000},
                }))  # fmt: skip
                stage2 = {"status": {"stage": "stage2", "stageIndex": 2, "nodeCount": 1}}
                cluster.kubectl("patch", "powerpolicy", "bench", "--subresource=status",
                                "--type=merge", "-p", json.dumps(stage2))  # fmt: skip
                assert node.daemon_pid is not None
                pid = node.daemon_pid
                time.sleep(warmup_s)
                cpu_before, started = cpu_s_of(pid), time.monotonic()
                next_scrape = started
                scraped = 0
                while (now := time.monotonic()) - started < seconds:
                    if now >= next_scrape:
                        scraped += scrape(node.metrics_url)
                        next_scrape += 15.0
                    time.sleep(0.5)
                elapsed = time.monotonic() - started
                cpu_s = cpu_s_of(pid) - cpu_before
                rss, peak = rss_mb(pid)
                ceilings = node.clock_ceilings_mhz()
        finally:
            cluster.stop()
    loops = elapsed / GUARD_PERIOD_S
    return {
        "window_s": elapsed,
        "cpu_pct": 100.0 * cpu_s / elapsed,
        "cpu_ms_per_loop": 1000.0 * cpu_s / loops,
        "rss_mb": rss,
        "peak_rss_mb": peak,
        "throttled_gpus": float(sum(1 for c in ceilings if c is not None)),
        "scrape_bytes": float(scraped),
    }


class _NoApi:
    def request(self, *_: Any, **__: Any) -> Any:
        return {}

    def close(self) -> None:
        pass


async def _loop_cost(loops: int) -> float:
    fake = FakeNvml(PROFILE, load=ConstantLoad(PhaseDemand(decode_frac=0.8, prefill_frac=0.1)))
    metrics = NodeMetrics("bench")
    backend = NvmlBackend(fake, on_call=metrics.nvml_call_hook)  # as deployed: off
    daemon = NodeDaemon(DaemonConfig("bench"), backend, cast(KubeClient, _NoApi()), metrics,
                        wall_clock=lambda: datetime.now(UTC))  # fmt: skip
    daemon.adopt(backend.open())
    daemon.recall(PreviousRecord())
    for _ in range(20):  # warm caches
        await daemon.sample()
    started = time.process_time()
    for _ in range(loops):
        await daemon.sample()
    cost_s = (time.process_time() - started) / loops
    backend.close()
    return cost_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="time before measuring")
    parser.add_argument("--loops", type=int, default=400, help="in-process loops to time")
    args = parser.parse_args()

    loop_s = asyncio.run(_loop_cost(args.loops))
    print(f"one control loop in process (8 GPUs, {args.loops} loops): "
          f"{loop_s * 1000:.2f} ms CPU = {100 * loop_s / GUARD_PERIOD_S:.2f}% of one core "
          f"at {GUARD_PERIOD_S} s")  # fmt: skip

    figures = measure_process(args.seconds, args.warmup_s)
    print(f"polca-node process over {figures['window_s']:.0f} s ({PROFILE}, guard period "
          f"{GUARD_PERIOD_S} s, {figures['throttled_gpus']:.0f} GPUs throttled, metrics scraped "
          "every 15 s):")  # fmt: skip
    cpu_ok = figures["cpu_pct"] < CPU_TARGET_PCT
    rss_ok = figures["peak_rss_mb"] < RSS_TARGET_MB
    print(
        f"  CPU  {figures['cpu_pct']:.2f}% of one core, {figures['cpu_ms_per_loop']:.2f} ms per "
        f"control loop   (target < {CPU_TARGET_PCT:g}%: {'ok' if cpu_ok else 'MISSED'})"
    )
    print(
        f"  RSS  {figures['rss_mb']:.1f} MB now, {figures['peak_rss_mb']:.1f} MB peak   "
        f"(target < {RSS_TARGET_MB:g} MB: {'ok' if rss_ok else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
