"""Reading MLJob files for the commands: ``validate``, ``render`` and ``run`` share this.

Every way a file can be bad — missing, a directory, unreadable, not UTF-8, not YAML, not an
MLJob — ends in :class:`JobFileError` carrying the lines to print, so a command never shows a
traceback for bad input and every command words the same problem the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pluggy

from mljob.api import MLJob
from mljob.core.validation import Checked, check_text, problem_lines
from mljob.framework import Framework
from mljob.plugins import Plugins, load_plugins

STDIN = "-"


class JobFileError(Exception):
    """The file cannot be used; :attr:`lines` are ``path: message`` lines for stderr."""

    def __init__(self, lines: list[str], checked: list[Checked] | None = None) -> None:
        self.lines = lines
        self.checked = checked or []
        """Every document's outcome when the file parsed (some may be ok); empty for file-level errors."""
        super().__init__("\n".join(lines))


def read_text(path: str) -> tuple[str, str]:
    """``(source name, text)`` of ``path`` (``-`` is stdin); raises :class:`JobFileError`."""
    if path == STDIN:
        source = "<stdin>"
        data = sys.stdin.buffer.read()
    else:
        source = path
        file = Path(path)
        try:
            if file.is_dir():
                raise JobFileError([f"{path}: is a directory; give the path of an MLJob YAML file"])
            data = file.read_bytes()
        except FileNotFoundError:
            raise JobFileError([f"{path}: no such file"]) from None
        except PermissionError:
            raise JobFileError([f"{path}: permission denied"]) from None
        except OSError as error:
            raise JobFileError([f"{path}: cannot read: {error.strerror or error}"]) from None
    try:
        return source, data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise JobFileError(
            [f"{source}: not UTF-8 text (byte {error.start}, line {line}); MLJob files are UTF-8 YAML"]
        ) from None


def plugins_or_error() -> Plugins:
    """The installed plugins; a plugin that breaks the manager itself becomes a :class:`JobFileError`."""
    try:
        return load_plugins()
    except pluggy.PluginValidationError as error:
        raise JobFileError([f"a plugin is invalid: {error}"]) from None


def load_jobs(path: str, plugins: Plugins | None = None) -> list[Checked]:
    """Every job in ``path``, fully checked; raises :class:`JobFileError` unless ALL are valid.

    The returned items are all ``ok``: ``item.job`` and ``item.framework`` are set.
    """
    source, text = read_text(path)
    checked = check_text(text, plugins if plugins is not None else plugins_or_error(), source)
    if any(not item.ok for item in checked):
        raise JobFileError(problem_lines(checked), checked)
    return checked


def job_and_framework(item: Checked) -> tuple[MLJob, Framework]:
    """The job and its framework of a checked item, typed as present; raises if the item is not ok."""
    if item.job is None or item.framework is None or item.problems:
        raise JobFileError([str(p) for p in item.problems] or ["not a valid MLJob"])
    return item.job, item.framework


def summary(item: Checked) -> str:
    """``MLJob default/mnist (pytorch): Master x1, Worker x3``: one line a person can check at a glance."""
    job = item.job
    if job is None:
        return "not an MLJob"
    roles = ", ".join(f"{role} x{spec.replicas}" for role, spec in job.spec.replica_specs.items())
    return f"MLJob {job.namespace}/{job.name} ({job.spec.framework}): {roles}"
