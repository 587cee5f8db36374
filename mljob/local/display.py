"""What a person sees during ``mljob run``: prefixed output, a live status line, a summary.

Every line a replica prints is shown as ``[worker-1] ...``, in the order lines arrive. On a
terminal a status line stays below them (rich's ``Live``), redrawn a few times a second; in a
pipe or a file there is no status line and no colour, so logs stay greppable. Everything goes
to one stream so the order a person reads is the order things happened.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from mljob.framework import Replica

COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta")


@dataclass(frozen=True)
class Counts:
    """The job at a glance, for the status line."""

    running: int
    succeeded: int
    failed: int
    restarts: int
    backoff_limit: int
    elapsed: float


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
        c = self.counts()
        self.spinner.text = Text.assemble(
            (f" running {c.running}", "bold"),
            " · ",
            (f"succeeded {c.succeeded}", "green"),
            " · ",
            (f"failed {c.failed}", "red" if c.failed else ""),
            " · ",
            (f"restarts {c.restarts}/{c.backoff_limit}", "yellow" if c.restarts else ""),
            " · ",
            format_duration(c.elapsed),
        )
        return Group(self.spinner)


class Display:
    """The run's output. Use as a context manager around the run; ``counts`` feeds the status line."""

    def __init__(self, out: TextIO | None = None, live: bool | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        is_tty = self.out.isatty()
        self.live_enabled = is_tty if live is None else live
        self.console = Console(file=self.out, highlight=False, soft_wrap=True, force_terminal=is_tty or None)
        self.colours: dict[str, str] = {}
        self._live: Live | None = None

    def start(self, counts: Callable[[], Counts]) -> None:
        """Show the live status line (on a terminal only)."""
        if self.live_enabled:
            self._live = Live(
                _StatusLine(counts), console=self.console, refresh_per_second=4, transient=True, redirect_stdout=False
            )
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> Display:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def line(self, name: str, text: str) -> None:
        """One line a replica printed."""
        if not self.live_enabled:
            self.out.write(f"[{name}] {text}\n")
            self.out.flush()
            return
        colour = self.colours.setdefault(name, COLOURS[len(self.colours) % len(COLOURS)])
        self.console.print(Text(f"[{name}] ", style=colour) + Text.from_ansi(text))

    def say(self, text: str, style: str = "dim") -> None:
        """Something mljob itself has to say, marked so it is not mistaken for a replica's output."""
        if not self.live_enabled:
            self.out.write(f"[mljob] {text}\n")
            self.out.flush()
            return
        self.console.print(Text("[mljob] ", style="bold") + Text(text, style=style))

    def summary(self, rows: Sequence[SummaryRow]) -> None:
        """The final table: replica, result, exit code, restarts, duration."""
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
        self.console.print(table, soft_wrap=False, crop=False, width=max(self.console.width, 80))
        self.out.flush()


class LogFiles:
    """``--logs-dir``: one plain file per replica, appended across restarts."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.files: dict[Replica, IO[str]] = {}

    def path(self, replica: Replica) -> Path:
        return self.folder / f"{replica}.log"

    def open(self, replica: Replica) -> IO[str]:
        """The replica's file, created when it starts: a replica that prints nothing still has one."""
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
