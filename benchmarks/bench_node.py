"""The node daemon's cost, production read path and fake path: CPU and RSS, 8 GPUs at 0.5 s.

Targets (issue 11), production path: under 0.5% of one core and under 50 MB RSS.

The production path is what runs on a GPU node: the real `NvmlBackend` over nvidia-ml-py
(`pynvml`), which loads `libnvidia-ml.so.1` by its usual name. Here that library is a small C
stand-in (benchmarks/stub_nvml/stub_nvml.c, built with `cc` into a temporary directory put on
LD_LIBRARY_PATH) that answers from memory as the real library's 1-5 µs reads do, and sleeps the
measured 3.9 ms per energy read. The process runs with numpy, rich, matplotlib, `polca.sim`,
grpcio, the protobuf runtime and the Python fake (`polca_node.fake_gpus`,
`polca_node.gpu.fake_nvml`, `polca_node.gpu.load`) blocked (`sys.modules[name] = None`:
importing one fails), and reports which modules it holds; the benchmark asserts none of them
is loaded. The fake path is `--gpu-backend fake`: the same daemon over `FakeNvml` and the power
model (numpy), as tests, kind and the demo run it.

Two measurements, each for both paths:
1. the real `polca-node` processes on the real control plane (kube-apiserver + etcd), side by
   side, each with a fake kubelet, 8 GPUs, a PowerPolicy at stage 2 with its guard on, and a
   Prometheus-like scrape of /metrics every 15 s. CPU is the process's user+system time (all
   threads: sampling, guard, watches, HTTP) over the window, from /proc/<pid>/stat; RSS from
   /proc/<pid>/status (VmRSS now, VmHWM peak);
2. one control loop in process (read 8 GPUs, run the guard, refresh the metrics snapshot),
   timed with `time.process_time` over many loops: the loop's own CPU cost.

    python benchmarks/bench_node.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prometheus_client.parser import text_string_to_metric_families

from polca.extras import SIM_MODULES
from polca_node.daemon import DaemonConfig, NodeDaemon
from polca_node.exporter import NodeMetrics
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.kube_client import KubeClient
from polca_node.node_status import PreviousRecord
from polca_testbed.cluster import start_cluster
from polca_testbed.processes import start_process, wait_until
from polca_testbed.procstat import cpu_seconds, rss_mb

if TYPE_CHECKING:
    from polca_testbed.nodes import SimNode, SimNodes

REPO = Path(__file__).resolve().parents[1]
STUB_SOURCE = Path(__file__).resolve().parent / "stub_nvml" / "stub_nvml.c"
GUARD_PERIOD_S = 0.5
PROFILE = "H100-SXM:8"
CPU_TARGET_PCT = 0.5
RSS_TARGET_MB = 50.0
LOAD = {"decode": 0.8, "prefill": 0.1}
# What the production process must not hold: the sim extra, the simulator, the Python fake,
# grpcio and the protobuf runtime (the daemon reaches the kubelet over h2 and decodes the
# answers itself; both are the test kubelet's).
NOT_IN_PRODUCTION = (
    *sorted(SIM_MODULES),
    "google.protobuf",
    "grpc",
    "polca.sim",
    "polca_node.fake_gpus",
    "polca_node.gpu.fake_nvml",
    "polca_node.gpu.load",
)
MODULES_REPORT_ENV = "POLCA_BENCH_MODULES_REPORT"


def production_prelude(report_after_s: float) -> str:
    """Python run before the daemon's code in the production process: block what production
    must not import, and after `report_after_s` write the loaded modules (JSON) to the file
    named by POLCA_BENCH_MODULES_REPORT."""
    return (
        "import json, os, sys, threading\n"
        f"for name in {list(NOT_IN_PRODUCTION)!r}:\n"
        "    sys.modules[name] = None\n"
        "def _report():\n"
        "    loaded = sorted(n for n, m in list(sys.modules.items()) if m is not None)\n"
        f"    with open(os.environ[{MODULES_REPORT_ENV!r}], 'w') as out:\n"
        "        json.dump(loaded, out)\n"
        f"_timer = threading.Timer({report_after_s!r}, _report)\n"
        "_timer.daemon = True\n"
        "_timer.start()\n"
    )


def forbidden_modules(loaded: list[str]) -> list[str]:
    """The modules of `loaded` that production must not hold (a package or any submodule)."""
    return [m for m in loaded if any(m == n or m.startswith(n + ".") for n in NOT_IN_PRODUCTION)]


def read_modules_report(path: Path) -> list[str]:
    wait_until(path.exists, timeout_s=60, what=f"the module report {path}")
    loaded: list[str] = json.loads(path.read_text(encoding="utf-8"))
    forbidden = forbidden_modules(loaded)
    if forbidden or "pynvml" not in loaded:
        raise SystemExit(
            f"the production process is not the production path: it holds {forbidden}"
            f"{'' if 'pynvml' in loaded else ' and not pynvml'}"
        )
    return loaded


@contextmanager
def production_runtime() -> Iterator[Path]:
    """A directory holding libnvidia-ml.so.1 built from the C stand-in. The project's modules
    are compiled to bytecode first (into their __pycache__, which git ignores), as the image
    ships them (Dockerfile) and pip compiled the dependencies: a daemon that compiles its
    sources at start keeps the compiler's memory (~1 MB for the project's modules)."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        print("bench-node needs a C compiler (cc, or $CC) to build the NVML stand-in", flush=True)
        raise SystemExit(2)
    sources = [str(REPO / "polca"), str(REPO / "node-daemon" / "polca_node")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *sources], check=True, timeout=300)
    with tempfile.TemporaryDirectory(prefix="polca-stub-nvml-") as directory:
        library = Path(directory) / "libnvidia-ml.so.1"
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(STUB_SOURCE)],
            check=True,
            timeout=120,
        )
        yield Path(directory)


def stub_env(stub_dir: Path, gpu_uuids: list[str] | None = None) -> dict[str, str]:
    env = {"LD_LIBRARY_PATH": str(stub_dir)}
    if gpu_uuids:
        env["POLCA_STUB_NVML_UUIDS"] = ",".join(gpu_uuids)
    return env


# --- 1. one control loop in process ---------------------------------------------------------


class _NoApi:
    def request(self, *_: Any, **__: Any) -> Any:
        return {}

    def close(self) -> None:
        pass


async def loop_cost_s(backend: NvmlBackend, metrics: NodeMetrics, loops: int) -> float:
    """CPU seconds of one `NodeDaemon.sample` (8 GPUs read, guard, metrics), averaged."""
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


def production_loop_child(loops: int) -> None:
    """Run in the production child (see `production_loop_cost_s`): print the cost as JSON."""
    metrics = NodeMetrics("bench")
    cost_s = asyncio.run(loop_cost_s(NvmlBackend(on_call=metrics.nvml_call_hook), metrics, loops))
    loaded = sorted(n for n, m in list(sys.modules.items()) if m is not None)
    print(json.dumps({"loop_s": cost_s, "modules": loaded}))


# Import groups of the production daemon, in this order, for the RSS breakdown.
# polca_node.podresources: the kubelet client (h2 and the hand decoder of its answers).
IMPORT_GROUPS = ("pynvml", "polca_node.podresources", "pydantic", "polca.api.powerpolicy",
                 "prometheus_client", "polca_node.main")  # fmt: skip


def import_rss_mb(stub_dir: Path) -> list[tuple[str, float]]:
    """RSS of a fresh production interpreter, then what each import group adds (MB)."""
    code = (
        production_prelude(report_after_s=1e9)
        + "import importlib\n"
        + "def rss_mb():\n"
        + "    with open('/proc/self/status') as status:\n"
        + "        line = next(l for l in status if l.startswith('VmRSS'))\n"
        + "    return int(line.split()[1]) / 1024\n"
        + "steps = [('python', rss_mb())]\n"
        + f"for group in {list(IMPORT_GROUPS)!r}:\n"
        + "    before = rss_mb()\n"
        + "    importlib.import_module(group)\n"
        + "    steps.append((group, rss_mb() - before))\n"
        + "print(json.dumps(steps))\n"
    )
    env = {**os.environ, **stub_env(stub_dir), MODULES_REPORT_ENV: os.devnull}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    return [(str(name), float(mb)) for name, mb in json.loads(result.stdout)]


def production_loop_cost_s(stub_dir: Path, loops: int) -> float:
    """The production loop, measured in a child process without numpy, the sim or the fake."""
    code = (
        production_prelude(report_after_s=1e9)
        + "import runpy\n"
        + f"sys.argv = [{str(Path(__file__))!r}, '--production-loop-child', '{loops}']\n"
        + f"runpy.run_path({str(Path(__file__))!r}, run_name='__main__')\n"
    )
    env = {**os.environ, **stub_env(stub_dir), MODULES_REPORT_ENV: os.devnull}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"the production loop child failed:\n{result.stderr[-3000:]}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    forbidden = forbidden_modules(answer["modules"])
    if forbidden:
        raise SystemExit(f"the production loop child imported {forbidden}")
    return float(answer["loop_s"])


def fake_loop_cost_s(loops: int) -> float:
    # The fake pulls in the power model (numpy) and the load sources: imported here only.
    from polca.power.model import PhaseDemand
    from polca_node.gpu.fake_nvml import FakeNvml
    from polca_node.gpu.load import ConstantLoad

    fake = FakeNvml(PROFILE, load=ConstantLoad(PhaseDemand(decode_frac=0.8, prefill_frac=0.1)))
    metrics = NodeMetrics("bench")
    backend = NvmlBackend(fake, on_call=metrics.nvml_call_hook)  # as deployed: off
    return asyncio.run(loop_cost_s(backend, metrics, loops))


# --- 2. the polca-node processes on the real control plane ----------------------------------


@dataclass(frozen=True)
class ProcessFigures:
    window_s: float
    cpu_pct: float
    cpu_ms_per_loop: float
    rss_mb: float
    peak_rss_mb: float
    throttled_gpus: float


def start_production_daemon(node: SimNode, stub_dir: Path, report: Path) -> None:
    """`node`'s daemon as on a GPU node: `--gpu-backend nvml` over the stand-in library, with
    what production must not import blocked."""
    fake_options = {"--fake-profile", "--fake-load", "--fake-state"}
    argv = node.daemon_argv()
    options: list[str] = []
    words = iter(argv[3:])  # after: python -m polca_node.main
    for word in words:
        value = next(words)
        if word not in fake_options:
            options += [word, "nvml" if word == "--gpu-backend" else value]
    code = (
        production_prelude(report_after_s=20.0)
        + "from polca_node.main import main\n"
        + f"sys.exit(main({options!r}))\n"
    )
    env = {
        **os.environ,
        **stub_env(stub_dir, node.gpu_uuids),
        MODULES_REPORT_ENV: str(report),
    }
    process = start_process([sys.executable, "-c", code], log_path=node.daemon_log, env=env)
    node.daemon_pid = process.pid
    wait_until(
        node.daemon_healthy,
        timeout_s=60,
        what=f"polca-node (production path) of {node.name}",
        alive=lambda: process.poll() is None,
        log_path=node.daemon_log,
    )


def _cpu_s(pid: int) -> float:
    cpu = cpu_seconds(pid)
    if cpu is None:
        raise RuntimeError(f"polca-node (pid {pid}) exited during the benchmark")
    return cpu


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def throttled_gpus(metrics_url: str) -> float:
    """The daemon's own count of GPUs limited below their defaults, all tiers."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(_scrape(metrics_url))
        for sample in family.samples
        if sample.name == "polca_throttled_gpus"
    )


def _add_node(nodes: SimNodes, cluster_kubectl: Any, name: str, *, start: bool) -> SimNode:
    node = nodes.add(name, labels={"polca.dev/bench": "yes"}, profile=PROFILE,
                     guard_period_s=GUARD_PERIOD_S, start=start)  # fmt: skip
    node.set_load(LOAD)
    for pod, gpus in ((f"train-{name}", [0, 1, 2, 3]), (f"llm-{name}", [4, 5])):
        node.assign_pod("default", pod, gpus)
        labels = {"training.kubeflow.org/job-name": "j"} if pod.startswith("train") else {}
        cluster_kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": "default", "labels": labels},
            "spec": {"nodeName": node.name, "containers": [{"name": "main", "image": "none"}]},
        }))  # fmt: skip
    return node


def measure_processes(
    stub_dir: Path, seconds: float, warmup_s: float
) -> tuple[dict[str, ProcessFigures], list[str]]:
    """Both daemons side by side; figures by path ("production", "fake") and the production
    process's modules."""
    from polca_testbed.nodes import SimNodes  # imports the fake (numpy): not at module level

    with tempfile.TemporaryDirectory(prefix="polca-bench-node-") as work:
        cluster = start_cluster(Path(work) / "cluster")
        try:
            cluster.install_crds(REPO / "crds")
            with SimNodes(cluster.kubeconfig) as nodes:
                fake = _add_node(nodes, cluster.kubectl, "bench-fake", start=True)
                production = _add_node(nodes, cluster.kubectl, "bench-prod", start=False)
                production.start_kubelet()
                report = Path(work) / "modules.json"
                start_production_daemon(production, stub_dir, report)
                cluster.kubectl("apply", "-f", "-", input=json.dumps({
                    "apiVersion": "polca.dev/v1alpha1", "kind": "PowerPolicy",
                    "metadata": {"name": "bench"},
                    "spec": {"nodeSelector": {"matchLabels": {"polca.dev/bench": "yes"}},
                             "budgetWatts": 8000},
                }))  # fmt: skip
                stage2 = {"status": {"stage": "stage2", "stageIndex": 2, "nodeCount": 2}}
                cluster.kubectl("patch", "powerpolicy", "bench", "--subresource=status",
                                "--type=merge", "-p", json.dumps(stage2))  # fmt: skip
                by_path = {"production": production, "fake": fake}
                pids = {path: node.daemon_pid for path, node in by_path.items()}
                assert None not in pids.values()
                time.sleep(warmup_s)
                loaded = read_modules_report(report)
                before = {path: _cpu_s(cast(int, pid)) for path, pid in pids.items()}
                started = time.monotonic()
                next_scrape = started
                while (now := time.monotonic()) - started < seconds:
                    if now >= next_scrape:
                        for node in by_path.values():
                            _scrape(node.metrics_url)
                        next_scrape += 15.0
                    time.sleep(0.5)
                elapsed = time.monotonic() - started
                figures = {}
                for path, node in by_path.items():
                    pid = cast(int, pids[path])
                    cpu_s = _cpu_s(pid) - before[path]
                    rss, peak = rss_mb(pid)
                    figures[path] = ProcessFigures(
                        window_s=elapsed,
                        cpu_pct=100.0 * cpu_s / elapsed,
                        cpu_ms_per_loop=1000.0 * cpu_s / (elapsed / GUARD_PERIOD_S),
                        rss_mb=rss,
                        peak_rss_mb=peak,
                        throttled_gpus=throttled_gpus(node.metrics_url),
                    )
        finally:
            cluster.stop()
    return figures, loaded


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(loops: int, loop_s: Mapping[str, float], figures: Mapping[str, ProcessFigures]) -> None:
    print(f"one control loop in process (8 GPUs, {loops} loops, CPU time):")
    for path, cost_s in loop_s.items():
        print(f"  {path:<10} {cost_s * 1000:6.2f} ms = {100 * cost_s / GUARD_PERIOD_S:5.2f}% "
              f"of one core at {GUARD_PERIOD_S} s")  # fmt: skip
    window = next(iter(figures.values())).window_s
    print(f"polca-node processes side by side over {window:.0f} s (8 GPUs, guard period "
          f"{GUARD_PERIOD_S} s, stage 2, metrics scraped every 15 s):")  # fmt: skip
    for path, f in figures.items():
        cpu_ok, rss_ok = f.cpu_pct < CPU_TARGET_PCT, f.peak_rss_mb < RSS_TARGET_MB
        targets = (
            f"   (targets < {CPU_TARGET_PCT:g}%: {verdict(cpu_ok)}; < {RSS_TARGET_MB:g} MB: "
            f"{verdict(rss_ok)})"
            if path == "production"
            else ""
        )
        print(f"  {path:<10} CPU {f.cpu_pct:5.3f}% of one core ({f.cpu_ms_per_loop:.2f} ms per "
              f"0.5 s loop), RSS {f.rss_mb:5.1f} MB now, {f.peak_rss_mb:5.1f} MB peak, "
              f"{f.throttled_gpus:.0f} GPUs throttled{targets}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    parser.add_argument(
        "--warmup-s", type=float, default=25.0, help="time before measuring (at least 20 s)"
    )
    parser.add_argument("--loops", type=int, default=400, help="in-process loops to time")
    parser.add_argument("--production-loop-child", type=int, metavar="LOOPS",
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.production_loop_child is not None:
        production_loop_child(args.production_loop_child)
        return
    with production_runtime() as stub_dir:
        loop_s = {
            "production": production_loop_cost_s(stub_dir, args.loops),
            "fake": fake_loop_cost_s(args.loops),
        }
        imports = import_rss_mb(stub_dir)
        figures, loaded = measure_processes(stub_dir, args.seconds, args.warmup_s)
    print("production path: NvmlBackend over pynvml over a C stand-in for libnvidia-ml.so.1; "
          f"the process holds pynvml and none of {', '.join(NOT_IN_PRODUCTION)} "
          f"({len(loaded)} modules)")  # fmt: skip
    report(args.loops, loop_s, figures)
    print("production RSS by import, fresh interpreter, in import order: "
          + ", ".join(f"{name} {mb:+.1f} MB" if i else f"{name} {mb:.1f} MB"
                      for i, (name, mb) in enumerate(imports)))  # fmt: skip


if __name__ == "__main__":
    main()
