"""Fault injection and request accounting, both switchable at runtime from a test.

Faults are decided per request by verb and resource, so a test can make 5% of pod creations
fail with 500, make exactly the next status patch conflict, slow everything down, or cut watch
streams, and then assert that the operator converges anyway. Accounting counts what the operator
asked for, so a test can assert that an idle operator stays quiet.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter, deque
from collections.abc import Iterable

from mljob.testing.errors import ApiError

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "discovery")
_REASONS = {
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
    403: "Forbidden",
    404: "NotFound",
    422: "Invalid",
}


@dataclasses.dataclass
class FaultRule:
    """Answer matching requests with ``code``; ``times`` limits how often (None: forever)."""

    verbs: frozenset[str] | None = None  # None: every verb except discovery
    resource: str | None = None  # the accounting label: "pods", "pods/status", "mljobs.example.com"
    name: str | None = None
    code: int = 500
    probability: float = 1.0
    times: int | None = None
    retry_after: float = 1.0  # for 429: the Retry-After header and details.retryAfterSeconds
    hits: int = 0

    def matches(self, verb: str, resource: str, name: str | None) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.verbs is None and verb == "discovery":
            return False
        if self.verbs is not None and verb not in self.verbs:
            return False
        if self.resource is not None and resource != self.resource and resource.split("/")[0] != self.resource:
            return False
        return self.name is None or self.name == name


class Faults:
    """The runtime fault switchboard; every HTTP request consults it before doing anything."""

    def __init__(self, seed: int | None = 0) -> None:
        self.random = random.Random(seed)
        self.rules: list[FaultRule] = []
        self.latency: float = 0.0
        self.latency_by_verb: dict[str, float] = {}
        self.jitter: float = 0.0
        self.watch_cut_interval: float | None = None

    def clear(self) -> None:
        """Back to a healthy API server."""
        self.rules.clear()
        self.latency = 0.0
        self.latency_by_verb.clear()
        self.jitter = 0.0
        self.watch_cut_interval = None

    def error_rate(
        self,
        verbs: str | Iterable[str],
        rate: float,
        *,
        codes: Iterable[int] = (500,),
        resource: str | None = None,
        retry_after: float = 1.0,
    ) -> list[FaultRule]:
        """Fail a fraction of requests, the code chosen evenly from ``codes`` (e.g. 500, 409, 429)."""
        verb_set = frozenset([verbs] if isinstance(verbs, str) else verbs)
        code_list = list(codes)
        rules = [
            FaultRule(
                verbs=verb_set, resource=resource, code=code, probability=rate / len(code_list), retry_after=retry_after
            )
            for code in code_list
        ]
        self.rules.extend(rules)
        return rules

    def fail_next(
        self,
        verb: str,
        *,
        resource: str | None = None,
        name: str | None = None,
        code: int = 500,
        times: int = 1,
        retry_after: float = 1.0,
    ) -> FaultRule:
        """Deterministically fail the next ``times`` matching requests."""
        rule = FaultRule(
            verbs=frozenset([verb]), resource=resource, name=name, code=code, times=times, retry_after=retry_after
        )
        self.rules.append(rule)
        return rule

    def delay_for(self, verb: str) -> float:
        base = self.latency_by_verb.get(verb, self.latency)
        return base + (self.random.uniform(0, self.jitter) if self.jitter else 0.0)

    def check(self, verb: str, resource: str, name: str | None) -> None:
        """Raise the injected error for this request, if one is due."""
        for rule in self.rules:
            if rule.matches(verb, resource, name) and (
                rule.probability >= 1.0 or self.random.random() < rule.probability
            ):
                rule.hits += 1
                headers = {}
                details: dict[str, object] = {"name": name or "", "kind": resource}
                if rule.code == 429:
                    headers["Retry-After"] = str(int(rule.retry_after)) if rule.retry_after >= 1 else "0"
                    details["retryAfterSeconds"] = int(rule.retry_after)
                reason = (
                    "AlreadyExists"
                    if (rule.code, verb) == (409, "create")
                    else _REASONS.get(rule.code, "InternalError")
                )
                raise ApiError(
                    rule.code, reason, f"injected fault: {verb} {resource} -> {rule.code} {reason}", details, headers
                )


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    at: float
    method: str
    path: str
    verb: str
    resource: str
    status: int


class RequestStats:
    """Counts HTTP requests by (verb, resource); watch keepalives (BOOKMARKs) are counted apart."""

    def __init__(self, log_limit: int = 10_000) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.statuses: Counter[int] = Counter()
        self.log: deque[RequestRecord] = deque(maxlen=log_limit)
        self.watch_events = 0
        self.bookmarks = 0
        self.injected = 0

    def record(self, method: str, path: str, verb: str, resource: str, status: int) -> None:
        self.counts[(verb, resource)] += 1
        self.statuses[status] += 1
        self.log.append(RequestRecord(time.monotonic(), method, path, verb, resource, status))

    def reset(self) -> None:
        self.counts.clear()
        self.statuses.clear()
        self.log.clear()
        self.watch_events = self.bookmarks = self.injected = 0

    def total(
        self,
        verbs: str | Iterable[str] | None = None,
        resource: str | None = None,
        *,
        exclude: Iterable[str] = ("watch", "discovery"),
    ) -> int:
        """Requests matching the verbs and resource (``pods`` also counts ``pods/status``).

        By default watch-stream (re)connections and discovery are not counted: they are the
        operator's standing costs, not work it does.
        """
        wanted = None if verbs is None else frozenset([verbs] if isinstance(verbs, str) else verbs)
        skipped = frozenset(exclude) if wanted is None else frozenset()
        return sum(
            n
            for (verb, res), n in self.counts.items()
            if (wanted is None or verb in wanted)
            and verb not in skipped
            and (resource is None or res == resource or res.split("/")[0] == resource)
        )

    def since(self, moment: float) -> list[RequestRecord]:
        """Requests after a ``time.monotonic()`` moment, e.g. to check an idle period."""
        return [r for r in self.log if r.at >= moment]
