"""What the cluster serves, asked once when the operator starts: the gang schedulers' APIs and Kueue's.

A backend installed later is seen after the operator restarts; until then its jobs fail with a message
that says so (:data:`mljob.core.placement.NOT_SERVED`).
"""

from __future__ import annotations

import logging

from mljob.api import GangScheduler
from mljob.core.desired import Placement
from mljob.core.kueue import KUEUE_API, KUEUE_RESOURCES
from mljob.core.placement import NOT_SERVED, SERVED_BY, VOLCANO_API
from mljob.kube import Api

logger = logging.getLogger("mljob.operator")


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


def watched_placement(placement: Placement) -> list[tuple[str, str, str]]:
    """The placement objects whose status the planner reads, as (kind, group/version, plural), if served."""
    watched = []
    if placement.kueue:
        watched.append(("Workload", KUEUE_API, "workloads"))
    if GangScheduler.VOLCANO not in placement.unavailable:
        watched.append(("PodGroup", VOLCANO_API, "podgroups"))
    return watched
