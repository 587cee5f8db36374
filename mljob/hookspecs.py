"""Every hook a plugin can implement, in one place.

Import :data:`hookimpl` from :mod:`mljob` to implement one. Two kinds of hook:

* **Registration** — ``mljob_register_frameworks`` hands :class:`~mljob.framework.Framework`
  objects to the core. Behaviour lives on those objects, so a call for one job never runs
  another framework's code.
* **Broadcast** — ``mljob_validate`` and ``mljob_mutate_pod`` run for every job, in every
  plugin that implements them, so a package that is not a framework (an organisation's policy,
  a sidecar injector) can take part.

A plugin that raises in any hook fails only the job at hand (reason ``PluginError``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from mljob.api import MLJob
    from mljob.framework import Framework, Problem, Replica

PROJECT = "mljob"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def mljob_register_frameworks(register: Callable[[Framework], None]) -> None:
    """Register the frameworks this plugin provides.

    :param register: call it once per :class:`~mljob.framework.Framework` object. A name that is
        already registered by another plugin is an error reported by ``mljob plugins``.
    :return: nothing; every implementation is called.
    """


@hookspec
def mljob_validate(job: MLJob, framework: Framework) -> Sequence[Problem] | None:
    """Extra checks on a job that already passed the core's and its framework's validation.

    :param job: the parsed job.
    :param framework: the framework selected by ``spec.framework``.
    :return: problems (field path and message); empty or None when the job is fine. Every
        implementation is called and all problems are reported together.
    """


@hookspec
def mljob_mutate_pod(job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
    """Change a rendered pod before it is created (add a sidecar, labels, tolerations, ...).

    :param job: the job the pod belongs to.
    :param replica: which replica the pod runs.
    :param pod: the rendered Pod as a plain dict; change it in place. Do not change its name,
        namespace, ownerReferences or the ``mljob.io/*`` labels: the operator relies on them.
    :return: nothing; every implementation is called, in registration order.
    """
