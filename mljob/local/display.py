"""What a person sees during ``mljob run``: prefixed output, a live status line, a summary.

Every line a replica prints is shown as ``[worker-1] ...``, in the order lines arrive. On a
terminal a status line stays below them (rich's ``Live``), redrawn a few times a second; in a
pipe or a file there is no status line and no colour, so logs stay greppable. Everything goes
to one stream so the order a person reads is the order things happened. When that stream's
reader goes away (``mljob run job.yaml | head``, or ``| tee`` ended by the same Ctrl-C), the
display goes quiet and tells its owner, which stops the job as SIGPIPE would, without a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from mljob.core.progress import Progress, duration
from mljob.framework import Replica

COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta")
LIVE_METRICS = 3
"""Metrics on the status line, the first reported: the line must fit a terminal's width."""
LIVE_METRIC_WIDTH = 24
"""Characters of one ``name=value`` on the status line; longer ones are cut with an ellipsis."""


@dataclass(frozen=True)
class Counts:
    """The job at a glance, for the status line."""

    running: int
    succeeded: int
    failed: int
    restarts: int
    backoff_limit: int
    elapsed: float
    stopped: int = 0
    """Ended by mljob (the job finished or was interrupted): neither succeeded nor failed."""
    progress: Progress | None = None
    """What the job reported of its training (:mod:`mljob.local.progress`); None or empty when it did not."""


@dataclass(frozen=True)
class SummaryRow:
    """One replica in the final table."""

    replica: str
    result: str
    exit_code: str
    restarts: int
    duration: float


def format_duration(seconds: float) -> str:
    """``4.2s`` under a minute, ``3m07s`` above: short enough for a table cell."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


class _StatusLine:
    """Recomputed at every refresh, so the elapsed time moves even when nothing is printed."""

    def __init__(self, counts: Callable[[], Counts]) -> None:
        self.counts = counts
        self.spinner = Spinner("dots", style="bold")

    def __rich__(self) -> RenderableType:
        self.spinner.text = status_text(self.counts())
        return Group(self.spinner)


def status_text(c: Counts) -> Text:
    """``running 2 · succeeded 1 · failed 0 · restarts 1/6 · 4.2s``; ``stopped N`` once mljob stops some, and
    the training's progress once it reports (``· 42% ETA 3m10s loss=0.31``)."""
    parts: list[tuple[str, str]] = [
        (f" running {c.running}", "bold"),
        (f"succeeded {c.succeeded}", "green"),
        (f"failed {c.failed}", "red" if c.failed else ""),
    ]
    if c.stopped:
        parts.append((f"stopped {c.stopped}", "yellow"))
    parts.append((f"restarts {c.restarts}/{c.backoff_limit}", "yellow" if c.restarts else ""))
    parts.append((format_duration(c.elapsed), ""))
    shown = live_progress(c.progress) if c.progress is not None else ""
    if shown:
        parts.append((shown, "cyan"))
    text = Text()
    for i, (words, style) in enumerate(parts):
        if i:
            text.append(" · ")
        text.append(words, style)
    return text


def _printable(text: str) -> str:
    """A reported string safe on one line: a metric may hold a newline or an escape sequence."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def live_progress(p: Progress) -> str:
    """The status line's progress: ``42% ETA 3m10s loss=0.31 acc=0.9``, or ``step 420 loss=0.31`` without a
    total; the first :data:`LIVE_METRICS` metrics, each cut short. Empty until the job reports."""
    words = [p.display()] if p.display() else []
    if p.eta_seconds and p.percent != 100:
        words.append(f"ETA {duration(p.eta_seconds)}")
    words += [_cut(_printable(f"{n}={v}"), LIVE_METRIC_WIDTH) for n, v in p.metrics[:LIVE_METRICS]]
    return " ".join(words)


def final_progress(p: Progress) -> str:
    """The summary's progress: ``100% (step 50/50) · loss=0.31 · acc=0.92``, every metric's latest value, in
    the order first reported. Empty for a job that never reported."""
    head = p.display()
    if p.percent is not None and p.step is not None:
        head += f" (step {p.step}{'' if p.total is None else f'/{p.total}'})"
    parts = [head] if head else []
    parts += [_printable(f"{n}={v}") for n, v in p.metrics]
    return " · ".join(parts)


class Display:
    """The run's output. Use as a context manager around the run; ``counts`` feeds the status line."""

    def __init__(self, out: TextIO | None = None, live: bool | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        is_tty = self.out.isatty()
        self.live_enabled = is_tty if live is None else live
        self.console = Console(file=self.out, highlight=False, soft_wrap=True, force_terminal=is_tty or None)
        self.colours: dict[str, str] = {}
        self._live: Live | None = None
        self.closed = False
        """The stream's reader is gone: nothing more is written."""
        self.on_closed: Callable[[], None] | None = None
        """Called once when the reader goes away."""

    def start(self, counts: Callable[[], Counts]) -> None:
        """Show the live status line (on a terminal only)."""
        if self.live_enabled:
            self._live = Live(
                _StatusLine(counts), console=self.console, refresh_per_second=4, transient=True, redirect_stdout=False
            )
            self._live.start()

    def stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    def __enter__(self) -> Display:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def line(self, name: str, text: str) -> None:
        """One line a replica printed."""
        if not self.live_enabled:
            self._write(f"[{name}] {text}\n")
            return
        colour = self.colours.setdefault(name, COLOURS[len(self.colours) % len(COLOURS)])
        self._print(Text(f"[{name}] ", style=colour) + Text.from_ansi(text))

    def say(self, text: str, style: str = "dim") -> None:
        """Something mljob itself has to say, marked so it is not mistaken for a replica's output."""
        if not self.live_enabled:
            self._write(f"[mljob] {text}\n")
            return
        self._print(Text("[mljob] ", style="bold") + Text(text, style=style))

    def _write(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except OSError:  # EPIPE: the reader left; EIO: the terminal hung up
            self._reader_gone()

    def _print(self, renderable: RenderableType, **options: Any) -> None:
        if self.closed:
            return
        try:
            self.console.print(renderable, **options)
            self.out.flush()
        except OSError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        self.closed = True
        # What is still buffered, and the status line's last redraw, would fail again (at exit).
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.out.fileno())
            finally:
                os.close(devnull)
        with contextlib.suppress(OSError):
            self.stop()
        if self.on_closed is not None:
            self.on_closed()

    def summary(self, rows: Sequence[SummaryRow], progress: Progress | None = None) -> None:
        """The final table: replica, result, exit code, restarts, duration; then the training's final progress
        when it reported any."""
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("replica")
        table.add_column("result")
        table.add_column("exit code", justify="right")
        table.add_column("restarts", justify="right")
        table.add_column("duration", justify="right")
        styles = {"succeeded": "green", "failed": "red", "stopped": "yellow"}
        for row in rows:
            table.add_row(
                row.replica,
                Text(row.result, style=styles.get(row.result, "")),
                row.exit_code,
                str(row.restarts),
                format_duration(row.duration),
            )
        self._print(table, soft_wrap=False, crop=False, width=max(self.console.width, 80))
        shown = final_progress(progress) if progress is not None else ""
        if shown:
            self.say(f"progress {shown}", "bold")


class LogFiles:
    """``--logs-dir``: one plain file per replica, appended across restarts.

    The folder and every file are opened here, before anything starts, so a folder that cannot
    be written is an :class:`OSError` up front rather than in the middle of a run.
    """

    def __init__(self, folder: Path, replicas: Iterable[Replica] = ()) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.files: dict[Replica, IO[str]] = {}
        try:
            for replica in replicas:
                self.open(replica)
        except OSError:
            self.close()
            raise

    def path(self, replica: Replica) -> Path:
        return self.folder / f"{replica}.log"

    def open(self, replica: Replica) -> IO[str]:
        """The replica's file: a replica that prints nothing still has one."""
        file = self.files.get(replica)
        if file is None:
            file = self.files[replica] = self.path(replica).open("a", encoding="utf-8", buffering=1)
        return file

    def write(self, replica: Replica, text: str) -> None:
        self.open(replica).write(text + "\n")

    def mark(self, replica: Replica, text: str) -> None:
        """A line from mljob in a replica's log (a restart), dated so it can be matched to others."""
        self.write(replica, f"--- mljob {time.strftime('%H:%M:%S')}: {text} ---")

    def close(self) -> None:
        for file in self.files.values():
            file.close()
        self.files.clear()
