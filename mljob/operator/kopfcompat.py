"""What mljob needs of kopf beyond its public API, in one place: how kopf is imported, its diff base, its pause.

kopf's internals are private: each shim checks that kopf is as expected (a unit test holds the pinned kopf to
it) and changes nothing where it is not. This is the one module that imports kopf (an import-linter contract);
:mod:`mljob.operator.handlers` takes it from here.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from typing import Any, cast

# kopf imports the kubernetes package when it is installed, only to recognise its model objects in what handlers
# return; this operator returns none, and the package is a large share of the operator's memory (bench/README.md,
# "Memory"). It is hidden while kopf is imported; Credentials.load imports it only for a kubeconfig that needs it
# (an exec plugin).
_HIDDEN = "kubernetes" not in sys.modules
if _HIDDEN:
    sys.modules["kubernetes"] = None  # type: ignore[assignment]
try:
    import kopf
finally:
    if _HIDDEN:
        del sys.modules["kubernetes"]

__all__ = ["NoDiffBase", "kopf", "kopf_pause", "track_kopf_pause"]


class NoDiffBase(kopf.DiffBaseStorage):
    """No "last handled state": kopf deep-copies every event's body (twice) to diff it against that state.

    The diff serves only change-detecting handlers (``on.create``/``update``/``resume``/``field``); this
    operator has none (``on.event`` and ``index`` only), yet kopf built and diffed the copies for every pod
    event (bench/README.md has its share of the CPU). :func:`~mljob.operator.handlers.build_registry` refuses
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
