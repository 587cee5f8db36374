"""A plugin that raises on purpose, loaded by the operator under test through a real entry point.

The operator subprocess gets this folder on PYTHONPATH; the ``.dist-info`` beside it declares the
entry point, so discovery takes the same path as for an installed package. It misbehaves only
for jobs annotated ``e2e.mljob.io/raise``, so every other job on the same operator must be unaffected.
"""

from __future__ import annotations

from typing import Any

from mljob import hookimpl

ANNOTATION = "e2e.mljob.io/raise"


@hookimpl
def mljob_mutate_pod(job: Any, replica: Any, pod: dict[str, Any]) -> None:
    if job.metadata.annotations.get(ANNOTATION) == "mutate":
        raise RuntimeError("the e2e plugin refuses to mutate this pod")


@hookimpl
def mljob_validate(job: Any, framework: Any) -> None:
    if job.metadata.annotations.get(ANNOTATION) == "validate":
        raise ZeroDivisionError("the e2e plugin divided by zero")
