"""The kopf layer: thin handlers that feed the controller (kopf itself comes from :mod:`~mljob.operator.kopfcompat`).

kopf watches the MLJobs and runs the operator around them (peering, the admission webhook, the health
endpoint); it never decides anything:

* MLJobs: every watch event hands the body to :class:`~mljob.operator.controller.Controller`, which
  reconciles that job (one pass at a time, bursts coalesced).
* Pods and Services with a controller ownerReference to an MLJob, and where the cluster serves them the
  job's Kueue Workload and Volcano PodGroup (Kueue's admission and Volcano's enqueueing are status on them
  that the planner reads): the operator's own watches (:mod:`mljob.operator.informer`), indexed by (namespace, job
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
from collections.abc import Sequence
from typing import Any

import aiohttp
import aiohttp.web

from mljob import kube
from mljob.core.kubeflow import mpijob
from mljob.operator.controller import Controller
from mljob.operator.informer import informers
from mljob.operator.kopfcompat import NoDiffBase, kopf, kopf_pause
from mljob.operator.webhook import CONVERT_ID, WebhookOptions, handler_id, review, write_key_pair

logger = logging.getLogger("mljob.operator")


def build_registry(
    controller: Controller,
    webhook: kopf.WebhookServer | None = None,
    peering_lifetime: int = 7,
    namespaces: Sequence[str] | None = None,
    peering: bool = False,
    others: Sequence[Controller] = (),
) -> kopf.OperatorRegistry:
    """A fresh registry with the handlers bound to ``controller`` (no import-time registration).

    ``namespaces`` None: every namespace. ``peering``: the replica may be paused, and must know when.
    ``others``: a controller for each further kind served (Kubeflow's: ``--kubeflow``), each with its own watches.
    """
    registry = kopf.OperatorRegistry()
    controllers = [controller, *others]
    watches = [watch for c in controllers for watch in informers(c, namespaces)]
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
            settings.admission.server = webhook  # the configuration is the operator's own (mljob.operator.webhook)
        pause = kopf_pause()
        if peering and pause is None:
            raise kopf.PermanentError(
                "this kopf does not show when peering pauses the operator (see mljob.operator.kopfcompat): "
                "run one replica with --standalone, or the kopf version pinned in requirements/"
            )

        async def ready() -> None:
            for watch in watches:
                await watch.synced.wait()
            if pause is not None and pause.is_on():
                await pause.wait_for(False)

        for c in controllers:
            c.ready = ready
        tasks[:] = [
            asyncio.create_task(watch.run(), name=f"mljob {watch.owner.kind} {watch.kind} watch") for watch in watches
        ]
        for c in controllers:
            await c.start()

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def shutdown(**_: Any) -> None:
        for c in controllers:
            await c.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    for c in controllers:
        if webhook is not None:
            _review(registry, c)
        _events(registry, c)

    if list(registry._changing.get_all_handlers()):  # what NoDiffBase relies on (kopf has no public way to ask)
        raise AssertionError("a change-detecting handler needs kopf's diff base: see NoDiffBase")
    return registry


def _review(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """The admission review of the controller's kind (kopf serves it at ``/<handler id>``)."""
    kind = controller.kind

    @kopf.on.validate(
        kind.group, kind.version, kind.plural, id=handler_id(kind), operations=["CREATE", "UPDATE"],
        ignore_failures=True, registry=registry,
    )  # fmt: skip
    async def review_job(body: kopf.Body, old: kopf.Body | None = None, **_: Any) -> None:
        lines = review(body, old, controller.plugins, controller.limits, controller.placement, kind)
        if lines:
            controller.metrics.admission("denied")
            raise kopf.AdmissionError(f"the {kind.kind} is invalid:\n" + "\n".join(lines), code=422)
        controller.metrics.admission("allowed")


def _events(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Every watch event of the controller's kind goes to the controller."""
    kind = controller.kind

    @kopf.on.event(kind.group, kind.version, kind.plural, id=f"{kind.plural}_event", registry=registry)
    async def job_event(event: kopf.RawEvent, **_: Any) -> None:
        controller.job_event(event.get("type"), event["object"])


async def run_kopf(
    registry: kopf.OperatorRegistry,
    namespaces: Sequence[str],
    clusterwide: bool,
    peering: str | None,
    priority: int | None,
    stop: asyncio.Event | None,
    health_port: int | None,
) -> None:
    """kopf's operator loop over ``registry``: the MLJob watch, peering, the webhook, ``/healthz``."""
    await kopf.operator(
        registry=registry,
        clusterwide=clusterwide,
        namespaces=list(namespaces),
        standalone=peering is None,
        peering_name=peering,
        priority=priority,
        stop_flag=stop,
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
    )


class ConvertingWebhookServer(kopf.WebhookServer):
    """kopf's webhook server that also answers the CRD conversion reviews of MPIJob (:mod:`~mljob.core.kubeflow.mpijob`)
    on the same port and certificate, at :data:`~mljob.operator.webhook.CONVERT_PATH`.

    kopf serves admission only; its server routes every ``POST /<id>`` to one method, ``_serve``, which this
    overrides for the conversion id alone (kopf's private API: pinned with kopf, see kopfcompat).
    """

    async def _serve(self, fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:  # type: ignore[override]
        if request.match_info.get("id") != CONVERT_ID:
            response: aiohttp.web.Response = await super()._serve(fn, request)
            return response
        try:
            review = await request.json()
        except ValueError as error:
            raise aiohttp.web.HTTPBadRequest(reason=f"not a ConversionReview: {error}") from None
        if not isinstance(review, dict):
            raise aiohttp.web.HTTPBadRequest(reason="not a ConversionReview")
        return aiohttp.web.json_response(mpijob.conversion_review(review))


def webhook_server(options: WebhookOptions, cert: bytes, key: bytes) -> kopf.WebhookServer:
    """kopf's webhook server over the key pair every replica shares."""
    certfile, keyfile = write_key_pair(cert, key)
    common: dict[str, Any] = {
        "addr": options.addr,
        "port": options.port,
        "certfile": str(certfile),
        "pkeyfile": str(keyfile),
        "cadata": cert,
    }
    server = ConvertingWebhookServer(host=options.host or "127.0.0.1", **common)
    reached = f"service {options.service}" if options.service else f"https://{options.host or '127.0.0.1'}"
    logger.info("admission webhook on :%d, reached as %s (ValidatingWebhookConfiguration %s)", options.port,
                reached, options.config)  # fmt: skip
    return server


def configure_logging(verbose: bool) -> None:
    """kopf's log format, and the operator's own loggers at INFO (DEBUG with ``--verbose``)."""
    kopf.configure(verbose=verbose, log_prefix=False)
    logging.getLogger("mljob").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:  # kopf logs every handler call; the controller logs what it did instead
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
