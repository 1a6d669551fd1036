"""The demo's orchestration: control plane, CRDs, simulated nodes and pods, Prometheus, the
operator and the policy; then the replay loop (load files, samples, live view); then the summary
and a clean shutdown that checks nothing is left running.

Every process is started in its own process group (tied to this process, so even a killed demo
does not leak them) and stopped in reverse order by one ExitStack, on success, on error and on
Ctrl-C (SIGINT) or SIGTERM.

`run_demo(..., during=...)` calls back once per update period of the replay with a
`RunningDemo`, through which a caller (the soak benchmark) lists the processes and restarts
node daemons and the operator.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
import yaml
from rich.console import Console
from rich.live import Live

from polca.power.profiles import GpuProfile, get_profile
from polca.sim.demand import DemandTimeline, build_timeline, gpu_power_w
from polca.sim.domain import SERVICE_MODELS, TIER_HIGH, TIER_LOW, TIER_TRAIN, Mix
from polca.sim.synthetic import CONV_PARAMS, generate
from polca.sim.trace import Trace, read_trace
from polca_node.kube_client import KubeClient, kubeconfig_credentials
from polca_testbed.cluster import REPO_ROOT, Cluster, start_cluster
from polca_testbed.demo import objects
from polca_testbed.demo.load import load_file_payload, write_load_file
from polca_testbed.demo.policy import (
    DOMAIN_LABEL,
    budget_w,
    demo_policy,
    load_policy_file,
    stage_lines,
)
from polca_testbed.demo.probe import Probe
from polca_testbed.demo.recording import Recording, Sample, build_sample, recording_to_json
from polca_testbed.demo.summary import Summary, plot_run, summarize, summary_table, summary_text
from polca_testbed.demo.tracking import Leftovers, Started, cpu_seconds, terminate_groups
from polca_testbed.demo.view import ViewInfo, render, render_text
from polca_testbed.nodes import SimNode, SimNodes
from polca_testbed.operators import OperatorHandle, operator_healthy, start_operator
from polca_testbed.processes import wait_until
from polca_testbed.prometheus import PrometheusError, find_prometheus, start_prometheus

__all__ = ["DemoResult", "DemoSettings", "RunningDemo", "run_demo", "telemetry_source"]

POLICY_NAME = "polca-demo"
DEFAULT_POLICY = REPO_ROOT / "examples" / "polca-default.yaml"
READY_TIMEOUT_S = 120.0
# Tier each workload should land in under the default tier rules (shown in the view).
WORKLOAD_TIERS = {TIER_HIGH: "high", TIER_LOW: "low", TIER_TRAIN: "low"}
PROMETHEUS_HINT = (
    "prometheus is not installed: the policy reads power from the node daemons' streams with "
    "no fallback. `make prometheus` (as root) installs Debian's package."
)


@dataclass(frozen=True)
class DemoSettings:
    nodes: int = 8
    gpus: int = 8
    profile: str = "A100-80GB"  # the paper's GPU: the default policy sets POLCA's MHz exactly
    speedup: float = 20.0
    duration_s: float = 180.0
    oversubscription: float = 0.3
    policy_file: Path = DEFAULT_POLICY
    trace: Path | None = None  # None: the synthetic generator (fitted to the conv trace)
    out_dir: Path = Path("demo-out")
    telemetry: Literal["auto", "prometheus", "direct"] = "auto"
    live: bool = True
    update_s: float = 1.0
    ramp_s: float = 30.0  # load rises over this long (at most a quarter of the run)
    target_peak_pct: float = 79.0
    mix: Mix = field(default_factory=lambda: Mix(high=0.5, low=0.25, train=0.25))
    seed: int = 0
    bin_dir: Path | None = None  # control-plane binaries; None: find_bin_dir()

    def __post_init__(self) -> None:
        if self.nodes < 2 or self.gpus < 1:
            raise ValueError("the demo needs at least 2 nodes and 1 GPU per node")
        if self.speedup <= 0 or self.duration_s <= 0 or self.update_s <= 0:
            raise ValueError("speedup, duration and the update period must be positive")
        if self.oversubscription < 0:
            raise ValueError("the oversubscription must not be negative")
        get_profile(self.profile)  # a clear error for an unknown profile, before anything runs


@dataclass(frozen=True)
class DemoResult:
    summary: Summary
    recording: Recording
    summary_path: Path
    plot_path: Path
    recording_path: Path
    leftovers: Leftovers
    interrupted: bool
    cpu_cores: float | None  # mean CPU use of every demo process during the replay


def telemetry_source(
    wanted: Literal["auto", "prometheus", "direct"], *, prometheus_installed: bool
) -> tuple[Literal["prometheus", "direct"], bool]:
    """The policy's telemetry source, and whether the demo runs Prometheus.

    auto is the product's default: the daemons' power streams (direct), with Prometheus as the
    fallback (and the record) when it is installed; direct runs without Prometheus.
    """
    if wanted == "prometheus" and not prometheus_installed:
        raise PrometheusError(
            "prometheus is not installed; `make prometheus` (as root) installs it"
        )
    if wanted == "prometheus":
        return "prometheus", True
    return "direct", wanted == "auto" and prometheus_installed


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    """SIGTERM: end the replay like Ctrl-C does."""


def node_names(count: int) -> list[str]:
    return [f"demo-{i:02d}" for i in range(1, count + 1)]


def load_trace(settings: DemoSettings) -> tuple[Trace, str]:
    """The trace and how the view names it."""
    if settings.trace is not None:
        return read_trace(settings.trace), settings.trace.name
    span_s = settings.duration_s * settings.speedup + 120.0
    trace = generate(CONV_PARAMS, span_s, np.random.default_rng(settings.seed))
    return trace, "synthetic (fitted to the Azure conv trace)"


def uncapped_w(timeline: DemandTimeline, profile: GpuProfile, gpus: int, t_s: float) -> float:
    """Domain power the load at `t_s` draws with no limits."""
    total = 0.0
    for demand in timeline.at(t_s):
        total += float(
            gpu_power_w(
                profile,
                np.asarray(demand.prefill_frac),
                np.asarray(demand.decode_frac),
                demand.train_frac,
            )
        )
    return total * gpus


@contextlib.contextmanager
def _sigterm_as_stop() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        raise _Stop

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _kubectl_apply(cluster: Cluster, *documents: object) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))


class _DemoRun:
    """One run: what it planned, what it started (for the shutdown and the leftover check)."""

    def __init__(self, settings: DemoSettings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.out = settings.out_dir.resolve()
        self.logs = self.out / "logs"
        self.profile = get_profile(settings.profile)
        kinds = settings.mix.server_tiers(settings.nodes)
        self.workloads = dict(zip(node_names(settings.nodes), kinds, strict=True))
        self.budget_w = budget_w(
            self.profile,
            nodes=settings.nodes,
            gpus=settings.gpus,
            oversubscription=settings.oversubscription,
        )
        self.started = Started()
        self.cpu_cores: float | None = None
        self.operator: OperatorHandle | None = None  # the one running now (restarts replace it)
        self.prometheus_pid: int | None = None

    def _cpu_s(self) -> float:
        own = os.times()
        return cpu_seconds(self.started.pids) + own.user + own.system

    def say(self, message: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")

    # -- set-up --------------------------------------------------------------------------------

    def plan_load(self) -> tuple[DemandTimeline, str]:
        settings = self.settings
        trace, trace_name = load_trace(settings)
        timeline = build_timeline(
            trace,
            kinds=tuple(self.workloads.values()),
            profile=self.profile,
            service=SERVICE_MODELS[self.profile.name],
            speedup=settings.speedup,
            duration_s=settings.duration_s,
            update_s=settings.update_s,
            target_peak_pct=settings.target_peak_pct,
            ramp_s=min(settings.ramp_s, settings.duration_s / 4.0),
            seed=settings.seed,
        )
        self.say(
            f"load: {trace_name} ({len(trace)} requests) at ×{timeline.rate_factor:.2f} its "
            f"rate, replayed ×{settings.speedup:g}; each server peaks at "
            f"{settings.target_peak_pct:g}% of its provisioned GPU power"
        )
        return timeline, trace_name

    def start_control_plane(self, stack: contextlib.ExitStack) -> Cluster:
        cluster = start_cluster(self.out / "cluster", bin_dir=self.settings.bin_dir)
        stack.callback(cluster.stop)
        self.started.add(*cluster.pids.values())
        self.started.ports.extend([cluster.api_port, cluster.etcd_port])
        self.say(f"control plane up at {cluster.server}")
        cluster.install_crds(REPO_ROOT / "crds")
        _kubectl_apply(cluster, objects.namespace(), objects.priority_class())
        gpus = self.settings.gpus
        pods = [objects.pod(kind, node, gpus) for node, kind in self.workloads.items()]
        # The Priority admission plugin resolves priorityClassName from its informer, which
        # may lag the PriorityClass just created by a moment.
        for attempt in range(5):
            try:
                _kubectl_apply(cluster, *pods)
                break
            except subprocess.CalledProcessError as exc:
                if attempt == 4 or "PriorityClass" not in exc.stderr:
                    raise
                time.sleep(0.5)
        return cluster

    def start_nodes(self, stack: contextlib.ExitStack, cluster: Cluster) -> list[SimNode]:
        settings = self.settings
        sim = SimNodes(cluster.kubeconfig, keep_dirs=True)
        nodes: list[SimNode] = []
        stack.callback(self._keep_node_logs, nodes)  # after stop_all: the logs are complete
        stack.callback(sim.stop_all)
        for name, workload in self.workloads.items():
            labels = {DOMAIN_LABEL[0]: DOMAIN_LABEL[1], objects.WORKLOAD_LABEL: workload}
            profile = f"{settings.profile}:{settings.gpus}"
            node = sim.add(name, labels=labels, profile=profile, start=False)
            pod = objects.pod_name(workload, name)
            node.assign_pod(objects.NAMESPACE, pod, list(range(settings.gpus)))
            self.started.ports.append(node.metrics_port)
            nodes.append(node)
        # One after the other from this thread: children die with the *thread* that started
        # them (PR_SET_PDEATHSIG), so a worker thread's exit would take its daemons along.
        for node in nodes:
            node.start_kubelet()
            node.start_daemon()
            self.started.add(node.kubelet_pid, node.daemon_pid)
        self.say(f"{len(nodes)} simulated nodes: fake kubelet and polca-node daemon each")
        return nodes

    def _keep_node_logs(self, nodes: list[SimNode]) -> None:
        """Move each node's daemon and kubelet logs to the run's logs, drop the node's dir."""
        self.logs.mkdir(parents=True, exist_ok=True)
        for node in nodes:
            for log in ("daemon.log", "kubelet.log"):
                with contextlib.suppress(OSError):
                    shutil.copyfile(node.directory / log, self.logs / f"{node.name}-{log}")
            shutil.rmtree(node.directory, ignore_errors=True)

    def start_prometheus(self, stack: contextlib.ExitStack, nodes: list[SimNode]) -> str | None:
        """Prometheus' URL, or None for direct telemetry."""
        try:
            find_prometheus()
            installed = True
        except PrometheusError:
            installed = False
        _, run_prometheus = telemetry_source(
            self.settings.telemetry, prometheus_installed=installed
        )
        if not run_prometheus:
            if not installed:
                self.say(f"[yellow]{PROMETHEUS_HINT}[/yellow]")
            return None
        targets = [f"127.0.0.1:{n.metrics_port}" for n in nodes]
        prom = start_prometheus(self.out / "prometheus", targets)
        stack.callback(prom.stop)
        self.started.add(prom.pid)
        self.prometheus_pid = prom.pid
        self.started.ports.append(prom.port)
        self.say(f"prometheus up at {prom.url}, scraping the daemons every 1 s")
        return prom.url

    def start_operator(self, cluster: Cluster, prometheus_url: str | None) -> OperatorHandle:
        """Start the operator (its log appends to the run's operator.log); the ExitStack's
        `stop_operator` stops whichever is running at the end."""
        operator = start_operator(
            cluster.kubeconfig,
            self.logs / "operator.log",
            prometheus_url=prometheus_url,
            extra=("--log-level", "warning"),
        )
        self.operator = operator
        self.started.add(operator.pid)
        self.started.ports.append(operator.metrics_port)
        return operator

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()

    def apply_policy(self, cluster: Cluster, prometheus_url: str | None) -> dict[str, Any]:
        settings = self.settings
        policy = demo_policy(
            load_policy_file(settings.policy_file),
            name=POLICY_NAME,
            budget_watts=self.budget_w,
            # Prometheus runs only where it is installed (start_prometheus refused otherwise).
            telemetry=telemetry_source(
                settings.telemetry, prometheus_installed=prometheus_url is not None
            )[0],
            prometheus_url=prometheus_url,
        )
        (self.out / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
        _kubectl_apply(cluster, policy)
        self.say(
            f"PowerPolicy {POLICY_NAME} applied ({settings.policy_file.name}): budget "
            f"{self.budget_w / 1000:.1f} kW for {settings.nodes} nodes × {settings.gpus} "
            f"{self.profile.name} (+{settings.oversubscription:.0%} oversubscribed)"
        )
        return policy

    def wait_for_operator(self, probe: Probe, operator: OperatorHandle) -> None:
        def decided() -> bool:
            status = probe.policy_status()
            return status is not None and status.get("stageIndex") is not None

        wait_until(
            decided,
            timeout_s=READY_TIMEOUT_S,
            what="the operator's first decision",
            alive=operator.alive,
            log_path=self.logs / "operator.log",
        )
        self.say("operator running: the policy has its first decision")

    # -- the replay ----------------------------------------------------------------------------

    def replay(
        self,
        timeline: DemandTimeline,
        nodes: list[SimNode],
        probe: Probe,
        view: _View,
        during: Callable[[float], None] | None = None,
    ) -> None:
        """Write each node's load every update period and record a sample just before;
        `during(t_s)` after each write."""
        settings = self.settings
        recording = view.recording
        steps = math.ceil(settings.duration_s / settings.update_s)
        start = time.monotonic()
        cpu_start_s = self._cpu_s()
        written: float | None = None  # uncapped power of the load written last
        for step in range(steps + 1):
            t_s = time.monotonic() - start
            if written is not None:
                sample = build_sample(
                    t_s,
                    readings=probe.daemon_readings(),
                    workloads=recording.workloads,
                    policy_status=probe.policy_status(),
                    uncapped_w=written,
                    max_clock_mhz=self.profile.max_sm_clock_mhz,
                    default_limit_w=self.profile.default_limit_w,
                )
                recording.samples.append(sample)
                if step % 2 == 0:
                    events = probe.events()
                    if events is not None:
                        recording.set_events(events)
                view.show(sample)
            if step == steps:
                self.cpu_cores = (self._cpu_s() - cpu_start_s) / (time.monotonic() - start)
                return
            for node, demand in zip(nodes, timeline.at(t_s), strict=True):
                write_load_file(node.load_file, load_file_payload(demand))
            written = uncapped_w(timeline, self.profile, settings.gpus, t_s)
            if during is not None:
                during(t_s)
            time.sleep(max(0.0, start + (step + 1) * settings.update_s - time.monotonic()))

    # -- the end -------------------------------------------------------------------------------

    def finish(self, recording: Recording, interrupted: bool) -> DemoResult:
        leftovers = self.started.leftovers()
        # etcd preallocates 64 MB of WAL per run; the stores are of no use after it.
        for store in (self.out / "cluster" / "etcd-data", self.out / "prometheus" / "data"):
            shutil.rmtree(store, ignore_errors=True)
        summary = summarize(recording)
        summary_path = self.out / "summary.txt"
        summary_path.write_text(summary_text(summary))
        plot_path = plot_run(recording, self.out / "demo.png")
        recording_path = self.out / "recording.json"
        recording_path.write_text(json.dumps(recording_to_json(recording), indent=1))
        self.console.print(summary_table(summary))
        self.say(f"summary {summary_path}, plot {plot_path}, samples {recording_path}")
        if self.cpu_cores is not None:
            self.say(
                f"CPU: the demo's {len(self.started.pids) + 1} processes used "
                f"{self.cpu_cores:.2f} cores on average during the replay"
            )
        if leftovers.clean:
            self.say("[green]clean shutdown: no process or port of the demo is left[/green]")
        else:
            self.say(
                f"[red]left running: pids {list(leftovers.pids)}, "
                f"ports {list(leftovers.ports)}[/red]"
            )
        return DemoResult(
            summary=summary,
            recording=recording,
            summary_path=summary_path,
            plot_path=plot_path,
            recording_path=recording_path,
            leftovers=leftovers,
            interrupted=interrupted,
            cpu_cores=self.cpu_cores,
        )


class _View:
    """The live view on a terminal; a log line every 10 s elsewhere (pipes, CI, tests)."""

    def __init__(self, run: _DemoRun, recording: Recording, info: ViewInfo) -> None:
        self.run = run
        self.recording = recording
        self.info = info
        self.live: Live | None = None
        if run.settings.live and run.console.is_terminal:
            self.live = Live(console=run.console, auto_refresh=False)
        self._last_note_s = -math.inf

    def __enter__(self) -> _View:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live is not None:
            self.live.stop()

    def show(self, sample: Sample) -> None:
        if self.live is not None:
            self.live.update(render(self.recording, self.info), refresh=True)
            return
        if sample.t_s - self._last_note_s < 10.0:
            return
        self._last_note_s = sample.t_s
        pct = "n/a" if sample.power_w is None else f"{self.recording.percent(sample.power_w):5.1f}%"
        throttled = ", ".join(f"{k} {v}" for k, v in sample.throttled.items())
        self.run.say(
            f"t={sample.t_s:4.0f} s  power {pct}  stage {sample.stage}  throttled GPUs: {throttled}"
        )


class RunningDemo:
    """The demo during its replay, for a caller that acts on it (`run_demo(during=...)`).

    Its restarts run on the replay's thread, the one that started every child: children die
    with the thread that started them (PR_SET_PDEATHSIG).
    """

    def __init__(
        self, run: _DemoRun, cluster: Cluster, nodes: list[SimNode], prometheus_url: str | None
    ) -> None:
        self._run = run
        self.cluster = cluster
        self.nodes = nodes
        self._prometheus_url = prometheus_url

    def processes(self) -> dict[str, int]:
        """Every process of the demo now, by role: kube-apiserver, etcd, prometheus, operator,
        kubelet/NODE and daemon/NODE."""
        out = dict(self.cluster.pids)
        if self._run.prometheus_pid is not None:
            out["prometheus"] = self._run.prometheus_pid
        if self._run.operator is not None:
            out["operator"] = self._run.operator.pid
        for node in self.nodes:
            for role, pid in (("kubelet", node.kubelet_pid), ("daemon", node.daemon_pid)):
                if pid is not None:
                    out[f"{role}/{node.name}"] = pid
        return out

    def workers(self) -> list[int]:
        """The processes besides the control plane, as they are now."""
        control_plane = set(self.cluster.pids.values())
        return [pid for pid in self.processes().values() if pid not in control_plane]

    def restart_daemon(self, node: SimNode, *, kill: bool = False) -> None:
        """Stop node's daemon (SIGTERM, or SIGKILL with `kill`) and start it again; returns
        once it is healthy."""
        if kill and node.daemon_pid is not None:
            _kill_group(node.daemon_pid)
        node.restart_daemon()
        self._run.started.add(node.daemon_pid)

    def restart_operator(self, *, kill: bool = False) -> None:
        """Stop the operator (SIGTERM, or SIGKILL with `kill`) and start a new one; returns
        once it answers /healthz."""
        old = self._run.operator
        if old is not None:
            if kill:
                _kill_group(old.pid)
            old.stop()
        new = self._run.start_operator(self.cluster, self._prometheus_url)
        wait_until(
            lambda: operator_healthy(new.metrics_port),
            timeout_s=READY_TIMEOUT_S,
            what="the restarted operator",
            alive=new.alive,
            log_path=new.log_path,
        )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def run_demo(
    settings: DemoSettings,
    console: Console | None = None,
    *,
    during: Callable[[RunningDemo, float], None] | None = None,
) -> DemoResult:
    """Run the whole demo; see the module docstring. Ctrl-C during the set-up re-raises
    KeyboardInterrupt once everything is stopped; during the replay it ends the replay early.
    `during(demo, t_s)` runs once per update period of the replay."""
    run = _DemoRun(settings, console or Console())
    run.out.mkdir(parents=True, exist_ok=True)
    timeline, trace_name = run.plan_load()
    recording: Recording | None = None
    interrupted = False
    with contextlib.ExitStack() as stack, _sigterm_as_stop():
        try:
            cluster = run.start_control_plane(stack)
            nodes = run.start_nodes(stack, cluster)
            prometheus_url = run.start_prometheus(stack, nodes)
            operator = run.start_operator(cluster, prometheus_url)
            stack.callback(run.stop_operator)
            policy = run.apply_policy(cluster, prometheus_url)
            client = KubeClient(kubeconfig_credentials(cluster.kubeconfig))
            stack.callback(client.close)
            urls = {n.name: n.metrics_url for n in nodes}
            probe = Probe(client, policy_name=POLICY_NAME, metrics_urls=urls)
            stack.callback(probe.close)
            running = RunningDemo(run, cluster, nodes, prometheus_url)
            # Runs first on the way out: everything but the control plane stops at once.
            stack.callback(lambda: terminate_groups(running.workers()))
            run.wait_for_operator(probe, operator)
            run.say(f"kubeconfig: [bold cyan]export KUBECONFIG={cluster.kubeconfig}[/bold cyan]")
            recording = Recording(
                budget_w=run.budget_w,
                stages=stage_lines(policy),
                workloads=run.workloads,
                gpus_per_node=settings.gpus,
                interval_s=settings.update_s,
            )
            info = ViewInfo(
                title=f"POLCA demo: {settings.nodes} nodes × {settings.gpus} "
                f"{run.profile.name}, +{settings.oversubscription:.0%} oversubscribed, "
                f"policy {settings.policy_file.name}, trace {trace_name}",
                kubeconfig=cluster.kubeconfig,
                duration_s=settings.duration_s,
                speedup=settings.speedup,
                workload_tiers=WORKLOAD_TIERS,
            )
            with _View(run, recording, info) as view:
                try:
                    step = None if during is None else (lambda t_s: during(running, t_s))
                    run.replay(timeline, nodes, probe, view, step)
                finally:
                    (run.out / "view.txt").write_text(render_text(recording, info))
        except (KeyboardInterrupt, _Stop):
            interrupted = True
            run.say("[yellow]interrupted[/yellow]")
        finally:
            run.say("stopping the operator, the node daemons, Prometheus and the control plane")
    if recording is None:
        if interrupted:
            raise KeyboardInterrupt
        raise RuntimeError("the demo did not start")  # unreachable: errors propagate above
    return run.finish(recording, interrupted)
