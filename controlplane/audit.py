"""Requests as the API server counted them: its audit log, one JSON event per request stage.

The control plane writes the log in blocking mode (each event before the response), so a request a client has
seen answered is already here. Long-running requests (watches) log ResponseStarted when they begin and
ResponseComplete when they end; every other request logs ResponseComplete once. A request is counted once, by
its auditID, at whichever of the two comes first.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Request:
    """One request: who sent it, what it asked, and the status code it got (0 while a watch is open)."""

    audit_id: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    user: str
    user_agent: str
    uri: str

    @property
    def key(self) -> tuple[str, str]:
        """(verb, resource[/subresource]), e.g. ("patch", "mljobs/status")."""
        return self.verb, self.resource + (f"/{self.subresource}" if self.subresource else "")


def _request(event: dict[str, Any]) -> Request:
    ref = event.get("objectRef") or {}
    return Request(
        audit_id=str(event.get("auditID", "")),
        verb=str(event.get("verb", "")),
        resource=str(ref.get("resource", "")),
        subresource=str(ref.get("subresource", "")),
        namespace=str(ref.get("namespace", "")),
        name=str(ref.get("name", "")),
        code=int((event.get("responseStatus") or {}).get("code") or 0),
        user=str((event.get("user") or {}).get("username", "")),
        user_agent=str(event.get("userAgent", "")),
        uri=str(event.get("requestURI", "")),
    )


class AuditLog:
    """Reads the log from a mark on: ``mark = log.mark()``, act, then ``log.requests(since=mark)``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """The log's current end; requests logged after it are the ones ``since=`` returns."""
        return self.path.stat().st_size if self.path.exists() else 0

    def events(self, since: int = 0) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with open(self.path, "rb") as log:
            log.seek(since)
            for line in log:
                if line.endswith(b"\n"):  # a line being written is not an event yet
                    yield json.loads(line)

    def requests(self, since: int = 0, *, user: str | None = None, user_agent: str | None = None) -> list[Request]:
        """Each request once, in log order, optionally only one user's or one user agent's (prefix)."""
        seen: dict[str, Request] = {}
        for event in self.events(since):
            found = _request(event)
            if found.audit_id in seen:
                if event.get("stage") == "ResponseComplete" and found.code:
                    seen[found.audit_id] = found  # the final code of a watch that ended
                continue
            if user is not None and found.user != user:
                continue
            if user_agent is not None and not found.user_agent.startswith(user_agent):
                continue
            seen[found.audit_id] = found
        return list(seen.values())

    def counts(self, since: int = 0, **who: str) -> Counter[tuple[str, str]]:
        """Requests by (verb, resource), e.g. ``counts(user="op")[("create", "pods")]``."""
        return Counter(r.key for r in self.requests(since, **who))
