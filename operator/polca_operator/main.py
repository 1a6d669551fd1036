"""`polca-operator`: the POLCA operator, i.e. `kopf run` with POLCA's handlers and defaults.

Every option has an environment variable (the Helm chart sets those); flags win over them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence

import kopf

from polca.options import (
    DEFAULT_DAEMON_METRICS_PORT,
    LOG_LEVELS,
    OptionParser,
    count,
    env_default,
    log_level,
    port,
    seconds,
    seconds_or_inf,
)
from polca_operator.handlers import OperatorConfig, register
from polca_operator.restore import DEFAULT_RESTORE_WAIT_S
from polca_operator.telemetry import DEFAULT_TIMEOUT_S

__all__ = ["build_settings", "default_priority", "main", "parse_args"]

FINALIZER = "polca.dev/restore-defaults"
DEFAULT_METRICS_PORT = 9401
# Peers that stop refreshing are considered dead after this long: the standby's takeover time
# after a crash (a clean exit hands over at once).
DEFAULT_PEERING_LIFETIME_S = 15
# Start-time priorities stay below this: 2**53 keeps them exact in JSON consumers.
PRIORITY_CEILING = 2**53

DESCRIPTION = """\
The POLCA operator: one control loop per PowerPolicy keeps each power domain under its
budget by moving it through the policy's stages; the node daemons apply the stage's clock
ceilings and power limits. Runs cluster-wide.

High availability: run two or more replicas with --peering (a ClusterKopfPeering object
of that name must exist). The oldest replica is active, the others stand by and take
over from the policy's status (no stage is lost) when it exits, or when it stops
refreshing the peering object for --peering-lifetime seconds.
"""

EPILOG = """\
environment (flags take precedence):
  POLCA_METRICS_PORT    --metrics-port (default 9401)
  POLCA_PEERING         --peering (unset or empty: standalone)
  POLCA_PROMETHEUS_URL  --prometheus-url
  POLCA_LOG_LEVEL       --log-level (default INFO, any case)
  POD_ID                this replica's identity among its peers (default: user@host/time)
  KUBECONFIG            used outside a cluster; in a pod, the service account is used
"""


def default_priority(now_s: float | None = None, jitter: int | None = None) -> int:
    """A peering priority that is higher for older replicas, so a new one never preempts.

    Milliseconds since the epoch, inverted, with a random tie-breaker for replicas started
    in the same millisecond (Kopf pauses every peer of equal priority).
    """
    now_ms = int((time.time() if now_s is None else now_s) * 1000)
    tie = random.randrange(1000) if jitter is None else jitter  # noqa: S311 - not security
    return PRIORITY_CEILING - (now_ms * 1000 + tie)


def _daemon_port(text: str) -> frozenset[int] | None:
    """`any`, or one port by the shared rules (`polca.options.port`), 0 excluded: a daemon's
    published endpoint always names its real port."""
    if text.strip().lower() == "any":
        return None
    value = port(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a port number, 1-65535, or 'any'")
    return frozenset({value})


def parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = OptionParser(
        prog="polca-operator",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--metrics-port",
        type=port,
        default=env_default(env, "POLCA_METRICS_PORT", DEFAULT_METRICS_PORT),
        help="port of /metrics and /healthz, 1-65535; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--metrics-host",
        default="0.0.0.0",  # noqa: S104 - scraped by Prometheus from outside the pod
        help="address to serve metrics on (default %(default)s)",
    )
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--peering",
        default=env.get("POLCA_PEERING") or None,
        metavar="NAME",
        help="ClusterKopfPeering object for high availability (mandatory when given)",
    )
    peering.add_argument(
        "--standalone", action="store_true", help="no peering even if POLCA_PEERING is set"
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest live peer is active (default: older replicas win)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=count,
        default=DEFAULT_PEERING_LIFETIME_S,
        metavar="SECONDS",
        help="after this long without a keep-alive a peer counts as dead (default %(default)s)",
    )
    parser.add_argument(
        "--prometheus-url",
        default=env.get("POLCA_PROMETHEUS_URL") or None,
        metavar="URL",
        help="Prometheus HTTP API for policies without their own prometheusURL, and the "
        "fallback of policies with telemetry.source direct",
    )
    parser.add_argument(
        "--telemetry-timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="timeout of each Prometheus query and of connecting to a daemon's power stream "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--restore-wait",
        type=seconds_or_inf,
        default=DEFAULT_RESTORE_WAIT_S,
        metavar="SECONDS",
        help="how long a deleted policy waits for its nodes to restore defaults before it "
        "goes anyway, with a warning event; inf: until they do (default %(default)s)",
    )
    parser.add_argument(
        "--daemon-metrics-port",
        type=_daemon_port,
        default=env_default(env, "POLCA_DAEMON_METRICS_PORT", str(DEFAULT_DAEMON_METRICS_PORT)),
        metavar="PORT|any",
        help="the only port a daemon's published metrics endpoint may use; 'any' for test "
        "rigs with one daemon per port (env POLCA_DAEMON_METRICS_PORT, default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        type=log_level,
        metavar="{" + ",".join(LOG_LEVELS) + "}",
        default=env_default(env, "POLCA_LOG_LEVEL", "INFO"),
        help="log level, any case (default %(default)s)",
    )
    args = parser.parse_args(argv)
    # Kopf and this module speak lower case (`kopf.configure(debug=...)`).
    args.log_level = args.log_level.lower()
    return args


def build_settings(args: argparse.Namespace) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.posting.reporting_component = "polca-operator"
    # Kopf would post handler logs as events in the operator's namespace, where `kubectl
    # describe` never looks for a cluster-scoped object's events; kube.CoreEvents posts ours.
    settings.posting.enabled = False
    settings.peering.clusterwide = True
    settings.peering.lifetime = args.peering_lifetime
    settings.peering.priority = args.priority if args.priority is not None else default_priority()
    if args.peering and not args.standalone:
        settings.peering.name = args.peering
        settings.peering.mandatory = True
    else:
        settings.peering.standalone = True
    return settings


def _configure_logging(level: str) -> None:
    kopf.configure(debug=level == "debug", quiet=level in ("warning", "error"))
    if level == "error":
        logging.getLogger().setLevel(logging.ERROR)


def credentials_problem() -> str | None:
    """Why no Kubernetes credentials can be found (None when they can), checked before Kopf
    starts: Kopf would log the failure and keep running without doing anything."""
    import kubernetes.config
    import yaml

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, OSError) as exc:
            return (
                f"no Kubernetes credentials ({exc}); set KUBECONFIG or run in a pod with a "
                "service account"
            )
        except (ValueError, yaml.YAMLError, TypeError, KeyError, AttributeError) as exc:
            # A file that is not a kubeconfig (binary, bad YAML, missing parts): one line,
            # never a traceback. UnicodeDecodeError is a ValueError.
            return (
                f"the kubeconfig is not usable ({type(exc).__name__}: {str(exc)[:200]}); set "
                "KUBECONFIG to a kubeconfig file or run in a pod with a service account"
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, os.environ)
    _configure_logging(args.log_level)
    problem = credentials_problem()
    if problem is not None:
        print(f"polca-operator: {problem}", file=sys.stderr)
        return 2
    settings = build_settings(args)
    registry = kopf.OperatorRegistry()
    config = OperatorConfig(
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        prometheus_url=args.prometheus_url,
        telemetry_timeout_s=args.telemetry_timeout,
        restore_wait_s=args.restore_wait,
        daemon_ports=args.daemon_metrics_port,
    )
    register(registry, config)
    # Imports and set-up made objects that live for the whole run: keep the collector from
    # rescanning them in every full collection (it showed as latency spikes in large domains).
    gc.freeze()
    if settings.peering.standalone:
        logging.getLogger(__name__).warning(
            "running standalone: without --peering a second replica would act too"
        )
    asyncio.run(
        kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=True,
            standalone=settings.peering.standalone,
            peering_name=None if settings.peering.standalone else settings.peering.name,
            priority=settings.peering.priority,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
