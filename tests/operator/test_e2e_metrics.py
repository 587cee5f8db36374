"""The operator's metrics, exact: a known set of jobs on the real control plane, and every figure checked, also
across an operator restart (counted once per transition, never recomputed from what the restarted one sees)."""

from __future__ import annotations

import urllib.request
from collections import Counter
from typing import Any

from harness import E2EJob, Forever, Kube, Role
from prometheus_client.parser import text_string_to_metric_families

from controlplane.cluster import free_port

VERBS = {"create": "POST", "patch": "PATCH", "delete": "DELETE"}


def get(url: str) -> str | None:
    """The body, or None while nothing listens there yet (the operator is starting)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value} for every sample the operator exposes ({} while it is starting)."""
    text = get(f"http://127.0.0.1:{port}/metrics") or ""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics: dict[str, Any], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for key, v in metrics.get(name, {}).items() if set(labels.items()) <= set(key))


def run_to_running_then_exit(b: Kube, job: E2EJob, code: int) -> None:
    b.submit(job)
    b.wait_phase(job.name, "Running")
    for pod in b.pods(job.name):
        b.exit(pod, code)


def test_every_figure_is_exact_and_a_restarted_operator_counts_nothing_twice(world, e2e):
    w = world(operator=False)
    b = w.kube
    port, health = free_port(), free_port()
    w.operator.extra_args = ["--metrics-port", str(port), "--health-port", str(health)]
    w.operator.start()
    b.wait(lambda: get(f"http://127.0.0.1:{health}/healthz") is not None, what="the operator's /healthz")
    mark = w.mark()
    ns = b.namespace
    forever = (Forever(),)
    run_to_running_then_exit(b, E2EJob("ok-a", "pytorch", {"Master": Role(1, forever), "Worker": Role(2, forever)}), 0)
    run_to_running_then_exit(b, E2EJob("ok-b", "tensorflow", {"Worker": Role(1, forever)}), 0)
    run_to_running_then_exit(b, E2EJob("bad", "pytorch", {"Master": Role(1, forever, "Never")}), 1)
    flaky = E2EJob("flaky", "pytorch", {"Master": Role(1, (Forever(),), "OnFailure")})
    b.submit(flaky)
    b.wait_phase("flaky", "Running")
    b.exit("flaky-master-0", 1)  # restarted in place: one restart
    b.wait(lambda: b.status("flaky").get("restartCount") == 1, what="flaky's restart counted")
    b.wait_phase("flaky", "Running")
    b.exit("flaky-master-0", 0)
    invalid = E2EJob("invalid", "pytorch", {"Master": Role(1), "Chief": Role(1)})
    b.submit(invalid)
    for name, phase in (("ok-a", "Succeeded"), ("ok-b", "Succeeded"), ("bad", "Failed"), ("flaky", "Succeeded"),
                        ("invalid", "Failed")):  # fmt: skip
        assert b.wait_phase(name, "Succeeded", "Failed")["phase"] == phase, name
    w.catch_up()

    def settled() -> dict[str, Any] | None:
        m = scrape(port)
        done = value(m, "mljob_jobs", namespace=ns, phase="Succeeded") + value(
            m, "mljob_jobs", namespace=ns, phase="Failed"
        )
        return m if done == 5 else None

    m = b.wait(settled, what="the phase gauge to show every job finished")
    pt, tf = {"namespace": ns, "framework": "pytorch"}, {"namespace": ns, "framework": "tensorflow"}
    assert value(m, "mljob_jobs_created_total", **pt) == 3  # ok-a, bad, flaky; invalid is never accepted
    assert value(m, "mljob_jobs_created_total", **tf) == 1
    assert value(m, "mljob_jobs_finished_total", **pt, outcome="Succeeded") == 2
    assert value(m, "mljob_jobs_finished_total", **pt, outcome="Failed") == 2
    assert value(m, "mljob_jobs_finished_total", **pt, outcome="Failed", reason="InvalidSpec") == 1
    assert value(m, "mljob_jobs_finished_total", **tf, outcome="Succeeded") == 1
    assert value(m, "mljob_pods_created_total", **pt) == 5
    assert value(m, "mljob_pods_created_total", **tf) == 1
    assert value(m, "mljob_restarts_total", **pt) == 1
    assert value(m, "mljob_restarts_total", **tf) == 0
    assert value(m, "mljob_job_time_to_running_seconds_count", framework="pytorch") == 3
    assert value(m, "mljob_job_time_to_running_seconds_count", framework="tensorflow") == 1
    assert value(m, "mljob_jobs", **pt, phase="Succeeded") == 2
    assert value(m, "mljob_jobs", **pt, phase="Failed") == 2
    assert value(m, "mljob_jobs", **tf, phase="Succeeded") == 1
    assert value(m, "mljob_reconcile_duration_seconds_count") > 0

    # The operator's writes, as the API server's audit log has them, verb by verb and code by code (a write
    # made just now may be in one and not yet in the other: wait until they agree).
    def agree() -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]] | None:
        audited = Counter((VERBS[r.verb], str(r.code)) for r in w.requests(mark) if r.verb in VERBS)
        counted: Counter[tuple[str, str]] = Counter()
        for key, v in scrape(port).get("mljob_api_requests_total", {}).items():
            labels = dict(key)
            if labels["verb"] in VERBS.values():
                counted[(labels["verb"], labels["code"])] = int(v)
        return (counted, audited) if counted == audited else None

    counted, _ = b.wait(agree, what="the operator's request counts to match the audit log")
    assert counted[("POST", "201")] >= 6  # every pod, service and event it created is in there

    w.operator.stop()  # a restarted operator sees five finished jobs: nothing is counted again
    w.operator.start()
    after = b.wait(lambda: (lambda m: m if value(m, "mljob_jobs", namespace=ns) == 5 else None)(scrape(port)),
                   what="the restarted operator's gauge")  # fmt: skip
    for name in ("mljob_jobs_created_total", "mljob_jobs_finished_total", "mljob_pods_created_total",
                 "mljob_restarts_total", "mljob_job_time_to_running_seconds_count"):  # fmt: skip
        assert value(after, name) == 0, name
    assert value(after, "mljob_jobs", **pt, phase="Failed") == 2
