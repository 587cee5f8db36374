"""The local runtime: the same MLJob file as local processes, wired by the same plugins.

:func:`run_file` is ``mljob run``. The parts: :mod:`~mljob.local.policy` (pure decisions),
:mod:`~mljob.local.launch` and :mod:`~mljob.local.cluster` (what each replica runs, where it
listens), :mod:`~mljob.local.gpus`, :mod:`~mljob.local.supervisor` (processes) and
:mod:`~mljob.local.display` (what a person sees).
"""

from mljob.local.runner import CannotRun, run_file, run_job

__all__ = ["CannotRun", "run_file", "run_job"]
