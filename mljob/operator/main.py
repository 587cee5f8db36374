"""``mljob operator`` and ``python -m mljob.operator``: its options, and how the pieces are put together.

:func:`serve` loads the plugins, asks the cluster what it serves (:mod:`~mljob.operator.discovery`),
builds the :class:`~mljob.operator.controller.Controller` and hands kopf its handlers
(:mod:`~mljob.operator.handlers`). The command line needs nothing of the CLI's dependencies.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mljob import kube
from mljob.api import GangScheduler
from mljob.core.kinds import MLJOB
from mljob.core.kubeflow.door import GROUP as KUBEFLOW_GROUP
from mljob.core.kubeflow.door import KUBEFLOW_KINDS, VERSION, KubeflowJobKind
from mljob.core.progress import Endpoint
from mljob.core.validation import DEFAULT_LIMITS, Limits
from mljob.kube import Api, Credentials
from mljob.operator.controller import Controller
from mljob.operator.discovery import discover_placement
from mljob.operator.handlers import build_registry, configure_logging, run_kopf, webhook_server
from mljob.operator.kopfcompat import track_kopf_pause
from mljob.operator.metrics import Metrics
from mljob.operator.progress import ProgressCollector, ProgressServer
from mljob.operator.webhook import DEFAULT_CONFIG, WebhookOptions, register, shared_key_pair
from mljob.operator.webhook import DEFAULT_SECRET as DEFAULT_SECRET_NAME
from mljob.plugins import Plugins, load_plugins

logger = logging.getLogger("mljob.operator")
GROUP_VERSION = f"{KUBEFLOW_GROUP}/{VERSION}"
SCOPE = "give --namespace NS (repeatable) or --all-namespaces, and --peering NAME or --standalone"


@dataclass(frozen=True)
class Options:
    """What ``mljob operator`` was asked to do."""

    namespaces: Sequence[str] = ()
    all_namespaces: bool = False
    gang_scheduler: GangScheduler = GangScheduler.NONE
    """The gang scheduler for jobs that do not name one (schedulingPolicy.gangScheduler)."""
    peering: str | None = None
    """kopf peering name: several replicas run, one acts. None: standalone (no peering objects)."""
    priority: int | None = None
    """kopf peering priority; the highest acts. None: :func:`seniority`, so the oldest replica acts."""
    peering_lifetime: int = 7
    """Seconds a replica's peering record lives without a keepalive: a killed acting replica is replaced
    within about this long (kopf's default is 60). Keepalives come every 1-2 s per replica."""
    metrics_port: int | None = None
    health_port: int | None = None
    """Serve kopf's liveness endpoint at ``:PORT/healthz`` (deploy/'s liveness and readiness probes)."""
    workers: int = 16
    api_concurrency: int = kube.CONCURRENCY
    """API requests in flight at once (:data:`mljob.kube.CONCURRENCY`)."""
    verbose: bool = False
    limits: Limits = DEFAULT_LIMITS
    """What one job may ask for (replicas, pods, name length); refused by the webhook and the operator alike."""
    webhook: WebhookOptions | None = None
    """Serve the validating admission webhook (None: status-level validation only)."""
    kubeflow: tuple[str, ...] = ()
    """Kubeflow's ``kubeflow.org/v1`` kinds to serve beside MLJob (``--kubeflow``): TFJob, PyTorchJob, ..."""
    progress_port: int | None = None
    """Serve the progress endpoint (docs/progress.md) on this port, and wire MLJobs' pods to it (None: off)."""
    progress_url: str | None = None
    secret: str = DEFAULT_SECRET_NAME
    """``namespace/name`` of the Secret with the key pair the webhook and the progress endpoint serve."""
    """The endpoint's base URL as pods reach it; by default the webhook Service's name, else the webhook host."""
    extra: Mapping[str, Any] = field(default_factory=dict)


def seniority() -> int:
    """A peering priority that makes the replica started first the one that acts.

    kopf pauses *every* operator when two peers share a priority, so replicas of one Deployment
    (same arguments) must not share the default 0: nothing would act. Minus the start time in
    microseconds is unique in practice and keeps the acting replica stable: a replica that starts
    later (a restart, a rolling update) never outranks the one acting; it takes over when that one
    leaves the peering (at once on a clean shutdown, after kopf's peer lifetime when killed).
    """
    return -(time.time_ns() // 1000)


async def serve(options: Options, plugins: Plugins | None = None, stop: asyncio.Event | None = None) -> None:
    """Run the operator until ``stop`` is set or SIGINT/SIGTERM arrives."""
    plugins = plugins or load_plugins()
    if not track_kopf_pause() and options.peering:
        logger.warning("kopf's toggle sets are not the ones expected: peering is refused (kopfcompat)")
    for broken in plugins.broken:
        logger.warning("plugin %s could not be loaded: %s (its jobs wait until it is fixed)", broken.name, broken.error)
    logger.info("frameworks: %s", ", ".join(sorted(plugins.frameworks)) or "none installed")
    metrics = Metrics()
    if options.metrics_port is not None:
        metrics.serve(options.metrics_port)
        logger.info("metrics on :%d/metrics", options.metrics_port)
    credentials = await asyncio.to_thread(Credentials.load)
    async with Api(credentials, concurrency=options.api_concurrency) as api:
        api.observe = metrics.api_request
        placement = await discover_placement(api, options.gang_scheduler)
        kinds = [KUBEFLOW_KINDS[name] for name in options.kubeflow]
        await _require_crds(api, kinds)
        controller, *others = [
            Controller(
                api, plugins, metrics, workers=options.workers, placement=placement, limits=options.limits, kind=k
            )
            for k in (MLJOB, *kinds)
        ]
        namespaces = None if options.all_namespaces else list(options.namespaces)
        if options.webhook is None and any(k.kind == "MPIJob" for k in kinds):
            logger.warning(
                "MPIJob without --webhook: v2beta1 is served, but v1 MPIJobs need the conversion webhook "
                "(the CRD's conversion stays as it is)"
            )
        server = None
        cert = key = None
        if options.webhook is not None or options.progress_port is not None:
            hosts = tls_hosts(options)
            cert, key = await shared_key_pair(api, options.webhook.secret if options.webhook else options.secret, hosts)
        if options.webhook is not None and cert is not None and key is not None:
            await register(api, options.webhook, cert, list(namespaces or ()), [MLJOB, *kinds])
            server = webhook_server(options.webhook, cert, key)
        reporting = None
        if options.progress_port is not None and cert is not None:
            reporting = ProgressServer(api, lookup=controller.jobs.get)
            await reporting.start(options.progress_port, cert, key)
            controller.endpoint = Endpoint(progress_url(options), cert.decode())
            metrics.registry.register(ProgressCollector(reporting))
            logger.info("progress endpoint on :%d, reached as %s", options.progress_port, controller.endpoint.url)
        peering = bool(options.peering)
        registry = build_registry(controller, server, options.peering_lifetime, namespaces, peering, others)
        scope = "all namespaces" if options.all_namespaces else ", ".join(options.namespaces)
        priority = None
        if options.peering:
            priority = options.priority if options.priority is not None else seniority()
            await require_peering_crd(api, list(namespaces or ()))
            for problem in await api.ensure_peering(options.peering, list(namespaces or ())):
                logger.warning("could not create the peering object (kopf will report it): %s", problem)
        mode = f"peering {options.peering}, priority {priority}" if options.peering else "standalone"
        served = ", ".join(["MLJobs", *(f"{k.kind}s" for k in kinds)])
        logger.info("watching %s in %s (%s)", served, scope, mode)
        try:
            await run_kopf(
                registry,
                options.namespaces,
                options.all_namespaces,
                options.peering,
                priority,
                stop,
                options.health_port,
            )
        finally:
            if reporting is not None:
                await reporting.stop()


def progress_url(options: Options) -> str:
    """Where pods reach the progress endpoint: ``--progress-url``, else the webhook Service's DNS name (in cluster),
    else the webhook's host (out of cluster), at the progress port."""
    if options.progress_url:
        return options.progress_url.rstrip("/")
    webhook = options.webhook or WebhookOptions()
    if webhook.service:
        namespace, name = webhook.service.split("/", 1)
        return f"https://{name}.{namespace}.svc:{options.progress_port}"
    return f"https://{webhook.host or '127.0.0.1'}:{options.progress_port}"


def tls_hosts(options: Options) -> list[str]:
    """The names the shared certificate is for: the webhook's, and the progress URL's host."""
    hosts = (options.webhook or WebhookOptions()).hosts()
    if options.progress_port is not None:
        host = urllib.parse.urlsplit(progress_url(options)).hostname
        if host and host not in hosts:
            hosts.insert(0, host)
    return hosts


async def require_peering_crd(api: Api, namespaces: Sequence[str]) -> None:
    """Refuse to start with ``--peering`` when kopf's peering CRD is not served: kopf would wait for a peering
    object it cannot have and never act on any job, saying nothing more."""
    plural = "kopfpeerings" if namespaces else "clusterkopfpeerings"
    for delay in (0.5, 1.0, 2.0, 4.0, 0.0):  # a CRD applied a moment ago (with deploy/) reaches discovery soon
        if await api.served("kopf.dev/v1", (plural,)):
            return
        await asyncio.sleep(delay)
    if not await api.served("kopf.dev/v1", (plural,)):
        raise SystemExit(
            f"--peering needs kopf's peering CRD ({plural}.kopf.dev), which this cluster does not serve: "
            "kubectl apply -f deploy/base/peering.yaml (kubectl apply -k deploy/ includes it), or run one replica "
            "with --standalone"
        )


async def _require_crds(api: Api, kinds: Sequence[KubeflowJobKind]) -> None:
    """Refuse to start when a kind asked for has no CRD: every event of it would fail, and quietly."""
    missing = [k.kind for k in kinds if not await api.served(k.api_version, (k.plural,))]
    if missing:
        raise SystemExit(
            f"--kubeflow: the API server does not serve {', '.join(missing)} ({GROUP_VERSION}); install the "
            "CRDs first: kubectl apply --server-side -f crds/kubeflow/ (or deploy/kubeflow/)"
        )


def kubeflow_kinds(value: str) -> tuple[str, ...]:
    """``--kubeflow``'s value: ``all`` or kinds separated by commas, any case (``pytorchjob,tfjob``)."""
    by_lower = {name.lower(): name for name in KUBEFLOW_KINDS}
    if value.strip().lower() == "all":
        return tuple(KUBEFLOW_KINDS)
    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [n for n in names if n.lower() not in by_lower]
    if unknown or not names:
        raise ValueError(
            f"--kubeflow {value!r}: {', '.join(unknown) or 'no kind'} is not one of all, {', '.join(KUBEFLOW_KINDS)}"
        )
    return tuple(dict.fromkeys(by_lower[n.lower()] for n in names))


def run(options: Options) -> None:
    """The ``mljob operator`` command: configure logging, then serve until a signal."""
    if bool(options.all_namespaces) == bool(options.namespaces):
        raise ValueError(SCOPE)
    configure_logging(options.verbose)
    asyncio.run(serve(options))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mljob.operator``: the same as ``mljob operator``, without the CLI's dependencies."""
    import argparse

    parser = argparse.ArgumentParser(prog="mljob operator", description="Run the MLJob operator.")
    parser.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    parser.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    parser.add_argument("--peering", help="kopf peering name for several replicas (default: standalone)")
    parser.add_argument(
        "--gang-scheduler",
        choices=[g.value for g in GangScheduler],
        default=GangScheduler.NONE.value,
        help="gang scheduler for jobs that do not name one in schedulingPolicy.gangScheduler (default: none)",
    )
    parser.add_argument("--standalone", action="store_true", help="no peering (the default)")
    parser.add_argument("--priority", type=int, help="peering priority, highest acts (default: oldest acts)")
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=7,
        help="seconds before a silent peer counts as dead and another replica acts (default 7; kopf's: 60)",
    )
    parser.add_argument(
        "--api-concurrency", type=int, default=kube.CONCURRENCY, help="API requests in flight at once (default 16)"
    )
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--health-port", type=int, help="serve /healthz (liveness and readiness) on this port")
    add_limit_and_webhook_arguments(parser)
    parser.add_argument(
        "--kubeflow",
        type=kubeflow_kinds,
        default=(),
        metavar="KINDS",
        help="also serve Kubeflow's kubeflow.org/v1 kinds: all, or a list such as PyTorchJob,TFJob "
        f"(of {', '.join(KUBEFLOW_KINDS)}); their CRDs are in crds/kubeflow/",
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    if args.peering and args.standalone:
        raise ValueError(SCOPE)
    run(
        Options(
            namespaces=args.namespace,
            all_namespaces=args.all_namespaces,
            peering=None if args.standalone else args.peering,
            priority=args.priority,
            peering_lifetime=args.peering_lifetime,
            metrics_port=args.metrics_port,
            api_concurrency=args.api_concurrency,
            health_port=args.health_port,
            gang_scheduler=GangScheduler(args.gang_scheduler),
            verbose=args.verbose,
            limits=Limits(args.max_replicas, args.max_pods, args.max_name_length),
            webhook=webhook_options(args),
            kubeflow=args.kubeflow,
            progress_port=args.progress_port,
            progress_url=args.progress_url,
            secret=args.webhook_secret,
        )
    )


def add_limit_and_webhook_arguments(parser: Any) -> None:
    """The flags for limits and the webhook, shared by ``mljob operator`` and ``python -m mljob.operator``."""
    d = DEFAULT_LIMITS
    parser.add_argument("--max-replicas", type=int, default=d.max_replicas, help="replicas of one role (limit)")
    parser.add_argument("--max-pods", type=int, default=d.max_pods, help="pods of one job, all roles (limit)")
    parser.add_argument("--max-name-length", type=int, default=d.max_name_length, help="characters in a job name")
    parser.add_argument("--webhook", action="store_true", help="serve the validating admission webhook")
    parser.add_argument("--webhook-port", type=int, default=9443, help="the webhook's port (default 9443)")
    parser.add_argument("--webhook-host", help="host the API server calls (url clientConfig; default 127.0.0.1)")
    parser.add_argument("--webhook-service", help="NAMESPACE/NAME of the Service in front of the operator (in cluster)")
    parser.add_argument("--webhook-secret", default=DEFAULT_SECRET_NAME, help="NAMESPACE/NAME of its key pair's Secret")
    parser.add_argument("--webhook-config", default=DEFAULT_CONFIG, help="the ValidatingWebhookConfiguration's name")
    parser.add_argument(
        "--progress-port", type=int, help="serve the progress endpoint on this port and wire MLJobs' pods to it"
    )
    parser.add_argument(
        "--progress-url", help="the progress endpoint's base URL as pods reach it (default: the webhook's Service)"
    )


def webhook_options(args: Any) -> WebhookOptions | None:
    if not args.webhook:
        return None
    return WebhookOptions(
        port=args.webhook_port,
        host=args.webhook_host,
        service=args.webhook_service,
        secret=args.webhook_secret,
        config=args.webhook_config,
    )


if __name__ == "__main__":
    main()
