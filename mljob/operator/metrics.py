"""The operator's Prometheus metrics: the only module that imports ``prometheus_client``.

Every name starts with ``mljob_`` and every label set is bounded (framework, namespace, outcome,
reason, result, phase): never a job or pod name, which would grow a series per job forever.
Small named helpers keep call sites readable and the label names in one place. Each operator
gets its own :class:`~prometheus_client.CollectorRegistry`, so tests never share counters.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

JobPhases = Callable[[], Iterable[tuple[str, str, str]]]
"""Yields (namespace, framework, phase) for every job the operator knows."""


class _PhaseCollector(Collector):
    """``mljob_jobs``: jobs by phase, computed at scrape time from the operator's in-memory view."""

    def __init__(self, source: JobPhases) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mljob_jobs",
            "MLJobs the operator watches, by phase.",
            labels=[
                "namespace",
                "framework",
                "phase",
            ],
        )
        for (namespace, framework, phase), n in sorted(Tally(self.source()).items()):
            family.add_metric([namespace, framework, phase], n)
        yield family


class Metrics:
    """The metrics of one operator process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._accepted = Counter(
            "mljob_jobs_created_total",
            "Jobs the operator accepted (their Created condition turned True), once per job.",
            ["framework", "namespace"],
            registry=r,
        )
        self._to_running = Histogram(
            "mljob_job_time_to_running_seconds",
            "From a job's creation to the first time every replica runs, once per job.",
            ["framework"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self._requests = Counter(
            "mljob_api_requests_total",
            "The operator's own API requests (kopf's watches excluded), by verb and HTTP status (0: no response).",
            ["verb", "code"],
            registry=r,
        )
        self._finished = Counter(
            "mljob_jobs_finished_total",
            "Jobs that reached a terminal phase, by outcome (Succeeded or Failed) and reason.",
            ["framework", "namespace", "outcome", "reason"],
            registry=r,
        )
        self._created = Counter(
            "mljob_pods_created_total", "Pods the operator created.", ["framework", "namespace"], registry=r
        )
        self._deleted = Counter(
            "mljob_pods_deleted_total",
            "Pods the operator deleted, by reason (restart, cleanup, suspend, spec).",
            ["framework", "namespace", "reason"],
            registry=r,
        )
        self._restarts = Counter(
            "mljob_restarts_total",
            "Replica restarts counted against backoffLimit (in place or by recreating the pod).",
            ["framework", "namespace"],
            registry=r,
        )
        self._duration = Histogram(
            "mljob_reconcile_duration_seconds",
            "Time of one reconcile pass, API calls included, by result (ok, conflict, error).",
            ["result"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self._api_errors = Counter(
            "mljob_api_errors_total",
            "API requests that failed, by HTTP status (0: no response).",
            ["status"],
            registry=r,
        )
        self._admission = Counter(
            "mljob_admission_reviews_total",
            "MLJobs the admission webhook reviewed, by decision (allowed, denied).",
            ["decision"],
            registry=r,
        )

    def watch_phases(self, source: JobPhases) -> None:
        self.registry.register(_PhaseCollector(source))

    def job_accepted(self, framework: str, namespace: str) -> None:
        self._accepted.labels(framework, namespace).inc()

    def job_running(self, framework: str, seconds: float) -> None:
        self._to_running.labels(framework).observe(seconds)

    def api_request(self, verb: str, code: int) -> None:
        self._requests.labels(verb, str(code)).inc()

    def job_finished(self, framework: str, namespace: str, outcome: str, reason: str) -> None:
        self._finished.labels(framework, namespace, outcome, reason).inc()

    def pods_created(self, framework: str, namespace: str, n: int = 1) -> None:
        if n:
            self._created.labels(framework, namespace).inc(n)

    def pod_deleted(self, framework: str, namespace: str, reason: str) -> None:
        self._deleted.labels(framework, namespace, reason).inc()

    def restarts(self, framework: str, namespace: str, n: int) -> None:
        if n:
            self._restarts.labels(framework, namespace).inc(n)

    def reconciled(self, seconds: float, result: str) -> None:
        self._duration.labels(result).observe(seconds)

    def admission(self, decision: str) -> None:
        self._admission.labels(decision).inc()

    def api_error(self, status: int) -> None:
        self._api_errors.labels(str(status)).inc()

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose ``/metrics`` on ``port`` from a background thread (prometheus_client's own server)."""
        start_http_server(port, addr=addr, registry=self.registry)

    def sample(self, name: str, **labels: str) -> float:
        """The current value of one sample (0 when absent): for tests and logs."""
        value = self.registry.get_sample_value(name, labels)
        return value or 0.0
