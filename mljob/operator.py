"""The kopf layer: the only module that imports kopf. Thin handlers that feed the controller.

kopf watches the MLJobs and runs the operator around them (peering, the admission webhook, the health
endpoint); it never decides anything:

* MLJobs: every watch event hands the body to :class:`~mljob.controller.Controller`, which
  reconciles that job (one pass at a time, bursts coalesced).
* Pods and Services with a controller ownerReference to an MLJob, and where the cluster serves them the
  job's Kueue Workload and Volcano PodGroup (Kueue's admission and Volcano's enqueueing are status on them
  that the planner reads): the operator's own watches (:mod:`mljob.informer`), indexed by (namespace, job
  name), so a pass reads its children without a LIST; every event of such a child wakes its job. They are
  not kopf's: its per-event handling cost more CPU than the rest of the operator (bench/README.md).

The controller starts no pass until every one of those watches has listed what exists, so an operator
that restarts mid-job sees every existing pod before it plans: it never creates a duplicate (and a
duplicate name would be refused by the API server anyway).

Peering (``--peering NAME``): kopf pauses every replica but the one with the highest priority,
and the default priority (:func:`seniority`) makes that the replica started first. A paused
replica's controller starts no pass (:func:`kopf_pause`): its children's watches go on filling the index,
so it is ready the moment it takes over. A pass already running when the pause comes is not undone, but
every write carries a precondition (the job's resourceVersion, the child's uid, deterministic child
names), so a pass from a stale view is refused instead of undoing the acting replica's work.

Nothing else runs: no kopf finalizers, no kopf annotations, no kopf-posted events (the handlers
here are ``on.event`` only, and event posting is off), no timers. Deadlines and TTLs are per-job
asyncio timers in the controller, set from each plan's wake-up time.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp

from mljob import kube
from mljob.api import GROUP, PLURAL, VERSION, GangScheduler
from mljob.controller import Controller, Key
from mljob.informer import Informer
from mljob.kube import Api, Credentials
from mljob.metrics import Metrics
from mljob.placement import NOT_SERVED, SERVED_BY, VOLCANO_API
from mljob.plugins import Plugins, load_plugins
from mljob.queueing import KUEUE_API, KUEUE_RESOURCES
from mljob.reconcile import Placement
from mljob.validation import DEFAULT_LIMITS, Limits
from mljob.webhook import DEFAULT_CONFIG, WebhookOptions, register, review, shared_key_pair
from mljob.webhook import DEFAULT_SECRET as DEFAULT_SECRET_NAME

# kopf imports the kubernetes package when it is installed, only to recognise its model objects in what handlers
# return; this operator returns none, and the package is about a quarter of the operator's memory. It is hidden
# while kopf is imported; Credentials.load imports it only for a kubeconfig that needs it (an exec plugin).
_HIDDEN = "kubernetes" not in sys.modules
if _HIDDEN:
    sys.modules["kubernetes"] = None  # type: ignore[assignment]
try:
    import kopf
finally:
    if _HIDDEN:
        del sys.modules["kubernetes"]

logger = logging.getLogger("mljob.operator")
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


class NoDiffBase(kopf.DiffBaseStorage):
    """No "last handled state": kopf deep-copies every event's body (twice) to diff it against that state.

    The diff serves only change-detecting handlers (``on.create``/``update``/``resume``/``field``); this
    operator has none (``on.event`` and ``index`` only), yet kopf built and diffed the copies for every pod
    event: about a sixth of the operator's CPU in bench/headtohead.py's profile. :func:`build_registry` refuses
    a change-detecting handler, so this stays true.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


_PAUSES: list[tuple[asyncio.AbstractEventLoop, weakref.ref[Any]]] = []


def track_kopf_pause() -> bool:
    """Make kopf's peering pause visible to the controller (:func:`kopf_pause`); whether kopf is as expected.

    kopf pauses a replica that is not the acting peer by stopping its own watches; it keeps the pause itself
    private: ``operator_paused`` in ``kopf._core.reactor.running.spawn_tasks``, the one ``ToggleSet`` it
    builds over ``any`` (a unit test holds kopf to that). The children's watches here are not kopf's, so their
    events keep waking jobs during a pause, and the controller must wait for the pause to end before a pass.
    This remembers each such set when it is built, with its event loop. kopf's internals are private: where
    they differ, nothing is changed and the operator refuses to run with peering.
    """
    try:
        from kopf._cogs.aiokits import aiotoggles
    except ImportError:
        return False
    cls: Any = aiotoggles.ToggleSet
    if getattr(cls, "_mljob_tracked", False):
        return True
    if not all(hasattr(cls, name) for name in ("wait_for", "is_on")):
        return False
    original = cls.__init__

    def __init__(self: Any, fn: Any, *args: Any, **kwargs: Any) -> None:
        original(self, fn, *args, **kwargs)
        if fn is any:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            _PAUSES[:] = [(owner, ref) for owner, ref in _PAUSES if ref() is not None and not owner.is_closed()]
            _PAUSES.append((loop, weakref.ref(self)))

    cls.__init__ = __init__
    cls._mljob_tracked = True
    return True


def kopf_pause() -> Any | None:
    """kopf's pause of the operator running in this event loop (a ToggleSet: on while paused), or None."""
    loop = asyncio.get_running_loop()
    for owner, ref in reversed(_PAUSES):
        found = ref()
        if owner is loop and found is not None:
            return found
    return None


def watched_placement(placement: Placement) -> list[tuple[str, str, str]]:
    """The placement objects whose status the planner reads, as (kind, group/version, plural), if served."""
    watched = []
    if placement.kueue:
        watched.append(("Workload", KUEUE_API, "workloads"))
    if GangScheduler.VOLCANO not in placement.unavailable:
        watched.append(("PodGroup", VOLCANO_API, "podgroups"))
    return watched


def informers(controller: Controller, namespaces: Sequence[str] | None) -> list[Informer]:
    """The watches of every kind a job owns and the planner reads, bound to ``controller``.

    Every event of a job's child wakes the job, and ends the controller's expectation about that child.
    """

    def changed(kind: str, key: Key, obj: Mapping[str, Any] | None) -> None:
        if obj is not None and kind in ("Pod", "Service"):
            controller.expectations.observed(key, kind, obj)
        controller.trigger(key)

    kinds = [("Pod", "v1", "pods"), ("Service", "v1", "services"), *watched_placement(controller.placement)]
    watches = {kind: Informer(controller.api, kind, gv, plural, namespaces, changed) for kind, gv, plural in kinds}

    def children(key: Key) -> tuple[list[Mapping[str, Any]], Mapping[str, Any] | None]:
        services = watches["Service"].index.get(key)
        return list(watches["Pod"].index.get(key)), (services[0] if services else None)

    def placed(key: Key) -> dict[str, Mapping[str, Any]]:
        found: dict[str, Mapping[str, Any]] = {}
        for kind, *_ in kinds[2:]:
            for obj in watches[kind].index.get(key):
                found[kind] = obj
        return found

    controller.bind(children, placed)
    return list(watches.values())


def build_registry(
    controller: Controller,
    webhook: kopf.WebhookServer | None = None,
    peering_lifetime: int = 7,
    namespaces: Sequence[str] | None = None,
    peering: bool = False,
) -> kopf.OperatorRegistry:
    """A fresh registry with the handlers bound to ``controller`` (no import-time registration).

    ``namespaces`` None: every namespace. ``peering``: the replica may be paused, and must know when.
    """
    registry = kopf.OperatorRegistry()
    watches = informers(controller, namespaces)
    tasks: list[asyncio.Task[None]] = []

    # Ids are explicit: a nested function's default id is its qualified name. Every handler is a coroutine:
    # kopf runs plain functions in a thread pool, off the loop the controller's queue and timers use.

    @kopf.on.login(id="login", registry=registry)
    async def login(**_: Any) -> kopf.AiohttpSession:
        # The operator's own credentials (not kopf's reading of them, which needs the kubernetes package), and its
        # user agent on every request, watches included, so the audit log can count them. kopf logs in again on a
        # 401: a rotated token is read then.
        credentials = controller.api.credentials
        headers = {"User-Agent": kube.user_agent()}
        authorization = await asyncio.to_thread(credentials.authorization)
        if authorization:
            headers["Authorization"] = authorization
        context = await asyncio.to_thread(credentials.ssl_context)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=context), headers=headers)
        return kopf.AiohttpSession(server=credentials.server, aiohttp_session=session)

    @kopf.on.startup(id="startup", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # the controller posts its own events, after the status write
        settings.watching.connect_timeout = 10
        settings.networking.error_backoffs = [0.1, 0.3, 1.0, 3.0]
        settings.batching.batch_window = 0.02
        settings.peering.lifetime = peering_lifetime
        settings.persistence.diffbase_storage = NoDiffBase()
        if webhook is not None:
            settings.admission.server = webhook  # the configuration is the operator's own (mljob.webhook)
        pause = kopf_pause()
        if peering and pause is None:
            raise kopf.PermanentError(
                "this kopf does not show when peering pauses the operator (see mljob.operator.track_kopf_pause): "
                "run one replica with --standalone, or the kopf version pinned in requirements/"
            )

        async def ready() -> None:
            for watch in watches:
                await watch.synced.wait()
            if pause is not None and pause.is_on():
                await pause.wait_for(False)

        controller.ready = ready
        tasks[:] = [asyncio.create_task(watch.run(), name=f"mljob {watch.kind} watch") for watch in watches]
        await controller.start()

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def shutdown(**_: Any) -> None:
        await controller.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    if webhook is not None:

        @kopf.on.validate(
            GROUP, VERSION, PLURAL, id="review", operations=["CREATE", "UPDATE"], ignore_failures=True,
            registry=registry,
        )  # fmt: skip
        async def review_job(body: kopf.Body, old: kopf.Body | None = None, **_: Any) -> None:
            lines = review(body, old, controller.plugins, controller.limits, controller.placement)
            if lines:
                controller.metrics.admission("denied")
                raise kopf.AdmissionError("the MLJob is invalid:\n" + "\n".join(lines), code=422)
            controller.metrics.admission("allowed")

    @kopf.on.event(GROUP, VERSION, PLURAL, id="job_event", registry=registry)
    async def job_event(event: kopf.RawEvent, **_: Any) -> None:
        controller.job_event(event.get("type"), event["object"])

    if list(registry._changing.get_all_handlers()):  # what NoDiffBase relies on (kopf has no public way to ask)
        raise AssertionError("a change-detecting handler needs kopf's diff base: see NoDiffBase")
    return registry


async def serve(options: Options, plugins: Plugins | None = None, stop: asyncio.Event | None = None) -> None:
    """Run the operator until ``stop`` is set or SIGINT/SIGTERM arrives."""
    plugins = plugins or load_plugins()
    if not track_kopf_pause() and options.peering:
        logger.warning("kopf's toggle sets are not the ones expected: peering is refused (track_kopf_pause)")
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
        controller = Controller(
            api, plugins, metrics, workers=options.workers, placement=placement, limits=options.limits
        )
        server = None
        if options.webhook is not None:
            watched = [] if options.all_namespaces else list(options.namespaces)
            server = await webhook_server(api, options.webhook, watched)
        namespaces = None if options.all_namespaces else list(options.namespaces)
        registry = build_registry(controller, server, options.peering_lifetime, namespaces, bool(options.peering))
        stop_flag: asyncio.Future[None] | asyncio.Event | None = stop
        scope = "all namespaces" if options.all_namespaces else ", ".join(options.namespaces)
        priority = None
        if options.peering:
            priority = options.priority if options.priority is not None else seniority()
        mode = f"peering {options.peering}, priority {priority}" if options.peering else "standalone"
        if options.peering:
            for problem in await api.ensure_peering(options.peering, list(namespaces or ())):
                logger.warning("could not create the peering object (kopf will report it): %s", problem)
        logger.info("watching MLJobs in %s (%s)", scope, mode)
        await kopf.operator(
            registry=registry,
            clusterwide=options.all_namespaces,
            namespaces=list(options.namespaces),
            standalone=options.peering is None,
            peering_name=options.peering,
            priority=priority,
            stop_flag=stop_flag,
            liveness_endpoint=f"http://0.0.0.0:{options.health_port}/healthz" if options.health_port else None,
        )


async def webhook_server(api: Api, options: WebhookOptions, namespaces: list[str]) -> kopf.WebhookServer:
    """kopf's webhook server with the key pair every replica shares (kept in a Secret), and its configuration."""
    hosts = options.hosts()
    cert, key = await shared_key_pair(api, options.secret, hosts)
    await register(api, options, cert, namespaces)
    folder = Path(tempfile.mkdtemp(prefix="mljob-webhook-"))
    (folder / "tls.crt").write_bytes(cert)
    (folder / "tls.key").write_bytes(key)
    (folder / "tls.key").chmod(0o600)
    common: dict[str, Any] = {
        "addr": options.addr,
        "port": options.port,
        "certfile": str(folder / "tls.crt"),
        "pkeyfile": str(folder / "tls.key"),
        "cadata": cert,
    }
    server = kopf.WebhookServer(host=options.host or "127.0.0.1", **common)
    reached = f"service {options.service}" if options.service else f"https://{options.host or '127.0.0.1'}"
    logger.info("admission webhook on :%d, reached as %s (ValidatingWebhookConfiguration %s)", options.port,
                reached, options.config)  # fmt: skip
    return server


async def discover_placement(api: Api, default: GangScheduler) -> Placement:
    """Which gang schedulers this cluster serves the API of: asked once, at start (restart after enabling one)."""
    unavailable = set()
    for backend, (group_version, resources) in SERVED_BY.items():
        if not await api.served(group_version, resources):
            unavailable.add(backend)
            level = logging.WARNING if backend is default else logging.INFO
            logger.log(level, "gang scheduler %s unavailable: %s", backend.value, NOT_SERVED[backend])
    kueue = await api.served(KUEUE_API, KUEUE_RESOURCES)
    if not kueue:
        logger.info("Kueue is not installed: jobs labelled kueue.x-k8s.io/queue-name will fail with a message")
    return Placement(default, frozenset(unavailable), kueue)


def run(options: Options) -> None:
    """The ``mljob operator`` command: configure logging, then serve until a signal."""
    if bool(options.all_namespaces) == bool(options.namespaces):
        raise ValueError(SCOPE)
    kopf.configure(verbose=options.verbose, log_prefix=False)
    logging.getLogger("mljob").setLevel(logging.DEBUG if options.verbose else logging.INFO)
    if not options.verbose:  # kopf logs every handler call; the controller logs what it did instead
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
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
