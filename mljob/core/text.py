"""Text a person reads in a table, shared by the CLI and the web UI so both say the same thing the same way."""

from __future__ import annotations

from datetime import UTC, datetime

from mljob.api import parse_time


def age(created: str | None, now: datetime | None = None, unknown: str = "<unknown>") -> str:
    """kubectl's AGE: 45s, 3m, 2h, 5d; ``unknown`` (kubectl's ``<unknown>``) without a valid time."""
    when = parse_time(created)
    if when is None:
        return unknown
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
