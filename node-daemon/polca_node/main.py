"""`polca-node`: the POLCA node daemon's entry point (thin: options, wiring, signals)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import disable_created_metrics

from polca.extras import is_missing_sim, sim_missing_message
from polca.options import (
    DEFAULT_DAEMON_METRICS_PORT,
    LOG_LEVELS,
    OptionParser,
    boolean,
    env_default,
    log_level,
    port,
    seconds,
)
from polca_node.daemon import DaemonConfig, NodeDaemon
from polca_node.exporter import MetricsServer, NodeMetrics
from polca_node.gpu.backend import Inventory
from polca_node.gpu.nvml_backend import NvmlBackend
from polca_node.kube_client import CredentialsError, KubeClient, load_credentials
from polca_node.podresources import DEFAULT_SOCKET, PodResourcesClient
from polca_node.tiering import DEFAULT_FAKE_GPU_ANNOTATION, PodResourcesMapper

__all__ = ["Options", "build_parser", "main", "parse_options"]

logger = logging.getLogger("polca_node")

DESCRIPTION = """\
The POLCA node daemon. It runs on every GPU node (a DaemonSet) and:
  - watches the PowerPolicies that select this node, this node's pods and its Node object;
  - finds which pod holds each GPU (kubelet PodResources API, or pod annotations with fake
    GPUs) and so each GPU's tier under each policy;
  - applies, per GPU, the most restrictive action of the policies' current stages for that
    tier (clock ceiling, power limit) through NVML; dryRun policies are only reported;
  - runs a local guard every guard period from NVML power alone, so a dead operator or API
    server cannot let the node run away;
  - exports Prometheus metrics on /metrics (and /healthz) and writes the NodePowerState
    named after the node (on change, and as a 30 s heartbeat).
A restart never lifts a limit: settings are held until the policies are known again; with
--state-dir, a restart during an API outage resumes the guard from a node-local checkpoint.
Defaults are restored only when the node leaves every policy; that is recorded in the
NodePowerState and as an Event."""

EPILOG = """\
Every option can also be set through the environment variable named in its help (the
DaemonSet does that); a command-line option wins over the environment.

Examples:
  polca-node --node-name gpu-node-1                       # real GPUs, in-cluster credentials
  polca-node --node-name sim-1 --gpu-backend fake --fake-profile H100-SXM:8 \\
      --fake-load /tmp/sim-1-load.json --fake-state /tmp/sim-1-gpus.json \\
      --podresources-socket /tmp/sim-1/kubelet.sock --kubeconfig ~/.kube/config"""


@dataclass(frozen=True)
class Options:
    node_name: str
    gpu_backend: str
    fake_profile: str
    fake_load: str | None
    fake_state: Path | None
    fake_gpu_annotation: str | None
    podresources_socket: Path
    podresources_interval_s: float
    metrics_host: str
    metrics_port: int
    metrics_endpoint: str | None
    pod_ip: str | None
    kubeconfig: Path | None
    state_dir: Path | None
    guard_period_s: float
    heartbeat_s: float
    event_namespace: str
    log_level: str
    nvml_latency_metrics: bool = False


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """The parser; defaults come from `environ`."""

    def env(name: str, default: object = None) -> Any:
        return env_default(environ, name, default)

    parser = OptionParser(
        prog="polca-node",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    node = parser.add_argument_group("node")
    node.add_argument(
        "--node-name",
        default=env("POLCA_NODE_NAME"),
        help="this node's name, as in its Node object (env POLCA_NODE_NAME; required; the "
        "DaemonSet sets it from spec.nodeName)",
    )
    node.add_argument(
        "--kubeconfig",
        type=Path,
        default=env("KUBECONFIG"),
        help="kubeconfig to reach the API server (env KUBECONFIG; default: the pod's service "
        "account, else ~/.kube/config)",
    )
    node.add_argument(
        "--state-dir",
        type=Path,
        default=env("POLCA_STATE_DIR"),
        help="node-local directory (the chart mounts a hostPath) for the checkpoint of what the "
        "daemon last acted on, so a restart while the API server is down resumes the guard and "
        "the holds at once (env POLCA_STATE_DIR; default: none, no checkpoint)",
    )
    node.add_argument(
        "--event-namespace",
        default=env("POLCA_EVENT_NAMESPACE", "default"),
        help="namespace for Events about this node's NodePowerState, a cluster-scoped object "
        "(env POLCA_EVENT_NAMESPACE; default %(default)s, where kubelets post node events)",
    )

    gpus = parser.add_argument_group("GPUs")
    gpus.add_argument(
        "--gpu-backend",
        choices=("nvml", "fake"),
        default=env("POLCA_GPU_BACKEND", "nvml"),
        help="nvml: the node's GPUs through libnvidia-ml; fake: simulated GPUs (tests, kind, "
        "demo) (env POLCA_GPU_BACKEND; default %(default)s)",
    )
    gpus.add_argument(
        "--fake-profile",
        default=env("POLCA_FAKE_PROFILE", "H100-SXM:8"),
        help="fake GPUs as MODEL:COUNT[,MODEL:COUNT...]; models A100-80GB, H100-SXM, H200 "
        "(env POLCA_FAKE_PROFILE; default %(default)s)",
    )
    gpus.add_argument(
        "--fake-load",
        default=env("POLCA_FAKE_LOAD"),
        help='what the fake GPUs do: a JSON file re-read when it changes ({"default": '
        '{"decode": 0.8}, "gpus": {"3": {"train": 1.0}}}), or idle, or '
        "constant:prefill=0.1,decode=0.8, or a request trace replayed for server I of an "
        "N-server domain, S times faster: trace:PATH|synthetic,server=I,servers=N,speedup=S"
        "[,profile=H100-SXM][,seed=K] (env POLCA_FAKE_LOAD; default idle)",
    )
    gpus.add_argument(
        "--fake-state",
        type=Path,
        default=env("POLCA_FAKE_STATE"),
        help="JSON file that keeps the fake GPUs' clock ceilings and power limits across "
        "restarts, as real GPUs keep theirs (env POLCA_FAKE_STATE; default: none, the fake "
        "GPUs start at their defaults)",
    )
    gpus.add_argument(
        "--guard-period-s",
        type=seconds,
        default=env("POLCA_GUARD_PERIOD_S", 0.5),
        help="seconds between GPU samples and local guard checks (env POLCA_GUARD_PERIOD_S; "
        "default %(default)s)",
    )

    pods = parser.add_argument_group("GPU → pod")
    pods.add_argument(
        "--podresources-socket",
        type=Path,
        default=env("POLCA_PODRESOURCES_SOCKET", str(DEFAULT_SOCKET)),
        help="kubelet's PodResources API socket (env POLCA_PODRESOURCES_SOCKET; default "
        "%(default)s)",
    )
    pods.add_argument(
        "--podresources-interval-s",
        type=seconds,
        default=env("POLCA_PODRESOURCES_INTERVAL_S", 5.0),
        help="seconds between kubelet reads; pod events trigger one at once too (env "
        "POLCA_PODRESOURCES_INTERVAL_S; default %(default)s)",
    )
    pods.add_argument(
        "--fake-gpu-annotation",
        default=env("POLCA_FAKE_GPU_ANNOTATION"),
        help="take GPU owners from this pod annotation instead of the kubelet: a pod with "
        f'{DEFAULT_FAKE_GPU_ANNOTATION}: "2" gets two fake GPUs, oldest pods first (kind '
        "without a device plugin) (env POLCA_FAKE_GPU_ANNOTATION; default: use the kubelet)",
    )

    export = parser.add_argument_group("metrics")
    export.add_argument(
        "--metrics-host",
        default=env("POLCA_METRICS_HOST", "0.0.0.0"),  # noqa: S104 - scraped from outside the pod
        help="address to serve /metrics and /healthz on (env POLCA_METRICS_HOST; default "
        "%(default)s)",
    )
    export.add_argument(
        "--metrics-port",
        type=port,
        default=env("POLCA_METRICS_PORT", DEFAULT_DAEMON_METRICS_PORT),
        help="port for /metrics and /healthz, 1-65535; 0 picks a free one (env "
        "POLCA_METRICS_PORT; "
        "default %(default)s)",
    )
    export.add_argument(
        "--metrics-endpoint",
        default=env("POLCA_METRICS_ENDPOINT"),
        help="the /metrics URL published in NodePowerState for the operator's direct telemetry "
        "(env POLCA_METRICS_ENDPOINT; default http://<pod IP>:<port>/metrics)",
    )
    export.add_argument(
        "--pod-ip",
        default=env("POLCA_POD_IP"),
        help="this pod's IP, for the default metrics endpoint (env POLCA_POD_IP, from the "
        "downward API; default 127.0.0.1)",
    )
    export.add_argument(
        "--nvml-latency-metrics",
        type=boolean,
        nargs="?",
        const=True,
        default=env("POLCA_NVML_LATENCY_METRICS", False),
        metavar="BOOL",
        help="export polca_nvml_call_seconds, a latency histogram per NVML function (~20 "
        "functions × 14 series per node; env POLCA_NVML_LATENCY_METRICS; default %(default)s)",
    )
    export.add_argument(
        "--status-heartbeat-s",
        dest="heartbeat_s",
        type=seconds,
        default=env("POLCA_STATUS_HEARTBEAT_S", 30.0),
        help="NodePowerState is written on change and at least this often (env "
        "POLCA_STATUS_HEARTBEAT_S; default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=env("POLCA_LOG_LEVEL", "INFO"),
        type=log_level,
        metavar="{" + ",".join(LOG_LEVELS) + "}",
        help="log level, any case (env POLCA_LOG_LEVEL; default %(default)s)",
    )
    return parser


def parse_options(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> Options:
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if not args.node_name:
        parser.error("--node-name (or POLCA_NODE_NAME) is required")
    if not 0 < args.guard_period_s <= 0.5:
        parser.error("--guard-period-s must be within (0, 0.5]: the guard must react fast")
    if args.gpu_backend == "nvml" and (args.fake_load or args.fake_state):
        parser.error("--fake-load and --fake-state need --gpu-backend fake")
    return Options(
        node_name=args.node_name,
        gpu_backend=args.gpu_backend,
        fake_profile=args.fake_profile,
        fake_load=args.fake_load,
        fake_state=args.fake_state,
        fake_gpu_annotation=args.fake_gpu_annotation or None,
        podresources_socket=args.podresources_socket,
        podresources_interval_s=args.podresources_interval_s,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        metrics_endpoint=args.metrics_endpoint,
        pod_ip=args.pod_ip,
        kubeconfig=args.kubeconfig,
        state_dir=args.state_dir,
        guard_period_s=args.guard_period_s,
        heartbeat_s=args.heartbeat_s,
        event_namespace=args.event_namespace,
        log_level=args.log_level,
        nvml_latency_metrics=args.nvml_latency_metrics,
    )


def _backend(options: Options, metrics: NodeMetrics) -> NvmlBackend:
    if options.gpu_backend == "fake":
        from polca_node.fake_gpus import build_fake_nvml  # the fake pulls in the power model

        nvml = build_fake_nvml(
            options.fake_profile,
            node_name=options.node_name,
            load=options.fake_load,
            state_path=options.fake_state,
        )
        return NvmlBackend(nvml, on_call=metrics.nvml_call_hook)
    return NvmlBackend(on_call=metrics.nvml_call_hook)


async def run(options: Options) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    # Few blocking jobs run at once (a GPU sample, an apply, a status write, a kubelet read):
    # a small pool keeps threads, and their memory, few.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=6, thread_name_prefix="polca-io"))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Every counter would get a `_created` twin series that no alert or panel reads.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    metrics = NodeMetrics(options.node_name, nvml_latency=options.nvml_latency_metrics)
    kube = KubeClient(load_credentials(options.kubeconfig))

    def pod_mapper(inventory: Inventory) -> PodResourcesMapper:
        client = PodResourcesClient(options.podresources_socket)
        return PodResourcesMapper(client, inventory.index_by_uuid())

    holder: list[NodeDaemon] = []
    server = MetricsServer(
        metrics,
        lambda: holder[0].healthy() if holder else (True, "starting"),
        ready=lambda: holder[0].ready() if holder else (False, "starting"),
        host=options.metrics_host,
        port=options.metrics_port,
    ).start()
    endpoint = options.metrics_endpoint or (
        f"http://{options.pod_ip or '127.0.0.1'}:{server.port}/metrics"
    )
    config = DaemonConfig(
        node_name=options.node_name,
        guard_period_s=options.guard_period_s,
        heartbeat_s=options.heartbeat_s,
        podresources_interval_s=options.podresources_interval_s,
        fake_gpu_annotation=options.fake_gpu_annotation,
        metrics_endpoint=endpoint,
        event_namespace=options.event_namespace,
        state_dir=options.state_dir,
    )
    daemon = NodeDaemon(
        config, _backend(options, metrics), kube, metrics, pod_mapper_factory=pod_mapper
    )
    holder.append(daemon)
    logger.info("node %s: metrics on %s", options.node_name, endpoint)
    try:
        await daemon.run(stop)
    finally:
        server.stop()


def _fake_gpus_unavailable(options: Options) -> str | None:
    """Why `--gpu-backend fake` cannot run here (the fake's load models are the simulator's,
    in the `sim` extra that the runtime image leaves out), or None."""
    if options.gpu_backend != "fake":
        return None
    try:
        import polca_node.fake_gpus  # noqa: F401 - only to see that it imports
    except ModuleNotFoundError as exc:
        if not is_missing_sim(exc):
            raise
        return sim_missing_message("--gpu-backend fake", exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    unavailable = _fake_gpus_unavailable(options)
    if unavailable is not None:
        print(f"polca-node: error: {unavailable}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=options.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(run(options))
    except CredentialsError as exc:
        print(f"polca-node: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
