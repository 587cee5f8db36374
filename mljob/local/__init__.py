"""The local runtime: the same MLJob file as local processes, wired by the same plugins.

:func:`run_file` is ``mljob run``. The parts: :mod:`~mljob.local.jobfiles` (reading job files, which
the other commands share), :mod:`~mljob.local.policy` (the rulebook's answers as actions),
:mod:`~mljob.local.launch` and :mod:`~mljob.local.cluster` (what each replica runs, where it listens),
:mod:`~mljob.local.gpus`, :mod:`~mljob.local.supervisor` (processes), :mod:`~mljob.local.progress` (the
endpoint replicas report their training's progress to) and :mod:`~mljob.local.display` (what a person sees).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CannotRun", "run_file", "run_job"]


def __getattr__(name: str) -> Any:
    """The runner is imported on first use: ``mljob validate`` reads job files without it."""
    if name in __all__:
        from mljob.local import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'mljob.local' has no attribute {name!r}")
