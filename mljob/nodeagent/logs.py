"""Container logs in the CRI format a kubelet keeps, and the reading ``kubectl logs`` asks for.

Each container run writes one file, ``<pod logs>/<container>/<restart count>.log``, as containerd does under
/var/log/pods: one line per output line, ``<RFC 3339 time> <stdout|stderr> <F|P> <text>``, ``P`` for the parts of
a line longer than :data:`MAX_LINE` (the runtime's 16 KiB), ``F`` for the part that ends it. :func:`render` is
the kubelet's log options over such a file (``tailLines``, ``sinceTime``, ``timestamps``, ``limitBytes``), pure
over the lines, so the HTTP server (mljob.nodeagent.kubelet_api) only reads and follows files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

MAX_LINE = 16 * 1024


def now_text() -> str:
    """A CRI log timestamp: RFC 3339 with sub-second digits, in UTC."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LogWriter:
    """Turns a container's stdout and stderr chunks into CRI lines in one file, as they arrive."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._out: BinaryIO = path.open("ab", buffering=0)
        self._pending: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def feed(self, stream: str, data: bytes) -> None:
        buffer = self._pending[stream] + data
        lines = []
        while True:
            cut = buffer.find(b"\n")
            if cut == -1:
                break
            line = buffer[:cut]
            while len(line) > MAX_LINE:
                lines.append((line[:MAX_LINE], b"P"))
                line = line[MAX_LINE:]
            lines.append((line, b"F"))
            buffer = buffer[cut + 1 :]
        while len(buffer) > MAX_LINE:
            lines.append((buffer[:MAX_LINE], b"P"))
            buffer = buffer[MAX_LINE:]
        self._pending[stream] = buffer
        self._write(stream, lines)

    def close_stream(self, stream: str) -> None:
        """The stream ended: its unterminated last line is written as a full one."""
        rest = self._pending[stream]
        self._pending[stream] = b""
        if rest:
            self._write(stream, [(rest, b"F")])

    def close(self) -> None:
        for stream in self._pending:
            self.close_stream(stream)
        self._out.close()

    def _write(self, stream: str, lines: list[tuple[bytes, bytes]]) -> None:
        if not lines:
            return
        stamp = now_text().encode()
        tag = stream.encode()
        self._out.write(b"".join(b"%s %s %s %s\n" % (stamp, tag, kind, text) for text, kind in lines))


@dataclass(frozen=True)
class Entry:
    """One CRI log line."""

    time: str
    stream: str
    full: bool
    text: bytes

    @property
    def when(self) -> datetime | None:
        """The line's time (nanoseconds cut to what Python keeps); None when unreadable."""
        whole, _, fraction = self.time.rstrip("Z").partition(".")
        try:
            return datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}+00:00")
        except ValueError:
            return None


def parse(data: bytes) -> list[Entry]:
    """Complete CRI lines of ``data`` (a trailing unterminated line is left for the next read)."""
    out = []
    for raw in data.split(b"\n")[:-1]:
        parts = raw.split(b" ", 3)
        if len(parts) < 3:
            continue
        text = parts[3] if len(parts) == 4 else b""
        out.append(Entry(parts[0].decode(errors="replace"), parts[1].decode(errors="replace"), parts[2] == b"F", text))
    return out


@dataclass(frozen=True)
class Options:
    """The kubelet's pod log options that change what is sent (``follow`` and ``previous`` choose the file)."""

    timestamps: bool = False
    tail_lines: int | None = None
    since: datetime | None = None
    limit_bytes: int | None = None


def select(entries: list[Entry], options: Options) -> list[Entry]:
    """The entries to send: newer than ``since``, then the last ``tail_lines`` lines (a line may span P parts)."""
    if options.since is not None:
        since = options.since
        entries = [e for e in entries if (e.when or since) >= since]
    if options.tail_lines is not None:
        ends = [i for i, e in enumerate(entries) if e.full]
        if options.tail_lines <= 0:
            return []
        if len(ends) > options.tail_lines:
            entries = entries[ends[-options.tail_lines - 1] + 1 :]
    return entries


def render(entries: Iterable[Entry], options: Options, *, line_start: bool = True) -> bytes:
    """The bytes ``kubectl logs`` shows for ``entries``: text, a newline after full lines, a timestamp per line."""
    out = []
    start = line_start
    for e in entries:
        if options.timestamps and start:
            out.append(e.time.encode() + b" ")
        out.append(e.text + (b"\n" if e.full else b""))
        start = e.full
    return b"".join(out)


def log_file(folder: Path, container: str, restart: int) -> Path:
    """Where run ``restart`` (the restart count when it started) of ``container`` logs."""
    return folder / container / f"{restart}.log"


TERMINATION_LINES = 80
TERMINATION_BYTES = 2048
"""The kubelet's limits on a termination message taken from the log (FallbackToLogsOnError)."""


def termination_message(path: Path) -> str:
    """The end of a run's log as the kubelet's ``FallbackToLogsOnError`` message: the last 80 lines, 2 KiB at most."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    lines = [e for e in parse(data[-(TERMINATION_BYTES * 64) :]) if e.text or e.full]
    text = render(select(lines, Options(tail_lines=TERMINATION_LINES)), Options())
    return text[-TERMINATION_BYTES:].decode(errors="replace")
