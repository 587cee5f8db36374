"""The ``mljob`` command: its verbs (:mod:`~mljob.cli.app`), the client verbs, the plugin report.

``main`` is the console script's entry point; the command's modules are imported when it runs.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """Run ``mljob`` with ``argv`` (default: the process's arguments)."""
    from mljob.cli.app import main as run

    run(argv)
