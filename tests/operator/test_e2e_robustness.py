"""The operator under stress on the real control plane: SIGKILL and restart, faults and cut watches, idle cost.

Requests are counted by the API server itself (its audit log, by the world's operator identity); faults come
from the fault-injecting proxy (controlplane/proxy.py) in front of it.
"""

from __future__ import annotations

import time
import urllib.request

from harness import E2EJob, Forever, Role, Run

from mljob import __version__


def restarts(b, pod: str) -> int:
    statuses = (b.pods(pod.rsplit("-", 2)[0]).get(pod) or {}).get("status", {}).get("containerStatuses") or [{}]
    return int(statuses[0].get("restartCount") or 0)


def test_sigkill_mid_job_keeps_restart_counts_and_never_duplicates_a_pod(world):
    w = world()
    b = w.kube
    name = "kill-me"
    b.submit(E2EJob(name, "pytorch", {"Master": Role(1, (Forever(),)), "Worker": Role(2, (Forever(),), "OnFailure")}))
    b.wait_phase(name, "Running")
    b.exit(f"{name}-worker-0", 1)
    b.wait(lambda: b.status(name).get("restartCount") == 1 and b.phase(name) == "Running", what="one restart")

    w.operator.kill()
    mark = w.mark()
    # While the operator is down: another in-place restart, and a pod evicted (it must be recreated).
    b.exit(f"{name}-worker-1", 1)
    b.evict(f"{name}-master-0")
    b.wait(lambda: restarts(b, f"{name}-worker-1") == 1, what="worker-1 restarted by its kubelet")
    b.wait(lambda: b.pods(name)[f"{name}-master-0"]["status"].get("phase") == "Failed", what="master evicted")
    w.operator.start()

    b.wait(lambda: b.status(name).get("restartCount") == 3 and b.phase(name) == "Running", what="counted on")
    status = b.status(name)
    assert status["replicaStatuses"]["Worker"]["restarts"] == 2
    assert status["replicaStatuses"]["Master"]["restarts"] == 1
    w.catch_up()
    assert w.history.adds(b.namespace) == {f"{name}-master-0": 2, f"{name}-worker-0": 1, f"{name}-worker-1": 1}
    # The restarted operator saw every pod before planning: its only create was the evicted master.
    mine = w.requests(mark)
    assert [r.name for r in mine if r.key == ("create", "pods")] == [f"{name}-master-0"]
    assert [r for r in mine if r.code == 409] == []

    # A second kill in the middle of a recreation: still exactly one pod per name.
    b.evict(f"{name}-worker-1")
    b.wait(lambda: b.status(name).get("restartCount") == 4, what="fourth restart")
    w.operator.kill()
    w.operator.start()
    b.wait(lambda: b.phase(name) == "Running" and len(b.pod_names(name)) == 3, what="running again")
    assert b.status(name)["restartCount"] == 4
    w.catch_up()
    assert w.history.adds(b.namespace)[f"{name}-worker-1"] == 2
    # Not just the end state: at no committed moment did one replica have two pods.
    assert w.history.max_live[b.namespace] == 1
    assert not w.history.violations_in(b.namespace)

    # And it finishes with the right status: the master's success ends the job (the PyTorch rule).
    b.wait(lambda: b.pods(name)[f"{name}-master-0"]["status"].get("phase") == "Running", what="master up")
    b.exit(f"{name}-master-0", 0)
    status = b.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert status["restartCount"] == 4
    assert status["replicaStatuses"]["Master"] == {"active": 0, "succeeded": 1, "failed": 0, "restarts": 1}
    assert status["replicaStatuses"]["Worker"]["restarts"] == 3


def test_every_job_converges_with_failing_writes_and_cut_watches(world):
    # 5% of writes fail (500, 409, 429) and every watch is cut 1 s after it starts, faster than jobs finish.
    w = world(proxy={"error_rate": 0.05, "codes": (500, 409, 429), "cut_watches_after": 1.0})
    b = w.kube
    mark = w.mark()
    jobs = {
        "chaos-ok": (
            E2EJob("chaos-ok", "pytorch", {"Master": Role(1, (Run(0, 1.0),)), "Worker": Role(3, (Run(0, 1),))}),
            "Succeeded",
            0,
        ),
        "chaos-restart": (
            E2EJob(
                "chaos-restart", "pytorch", {"Worker": Role(2, (Run(1, 0.3), Run(1, 0.3), Run(0, 0.5)), "OnFailure")}
            ),
            "Succeeded",
            4,
        ),
        "chaos-tf": (
            E2EJob(
                "chaos-tf",
                "tensorflow",
                {"Chief": Role(1, (Run(0, 1.5),)), "PS": Role(2, (Forever(),)), "Worker": Role(2, (Run(0, 1),))},
            ),
            "Succeeded",
            0,
        ),
        "chaos-fail": (
            E2EJob(
                "chaos-fail",
                "mxnet",
                {
                    "Scheduler": Role(1, (Forever(),)),
                    "Server": Role(1, (Forever(),)),
                    "Worker": Role(2, (Run(4, 0.5),), "Never"),
                },
            ),
            "Failed",
            0,
        ),
        "chaos-backoff": (
            E2EJob(
                "chaos-backoff",
                "pytorch",
                {"Worker": Role(1, (Run(137, 0.2),), "ExitCode")},
                run_policy={"backoffLimit": 3},
            ),
            "Failed",
            3,
        ),
        "chaos-deadline": (
            E2EJob(
                "chaos-deadline", "pytorch", {"Worker": Role(2, (Forever(),))}, run_policy={"activeDeadlineSeconds": 3}
            ),
            "Failed",
            0,
        ),
    }
    for spec, _, _ in jobs.values():
        b.submit(spec)
    for name, (_, phase, restarts) in jobs.items():
        status = b.wait_phase(name, "Succeeded", "Failed", timeout=90)
        assert status["phase"] == phase, (name, status)
        assert status["restartCount"] == restarts, (name, status)
    for name in ("chaos-tf", "chaos-fail", "chaos-deadline"):  # runs-until-stopped roles and running pods stopped
        b.wait(
            lambda n=name: not [p for p in b.pod_names(n) if "-ps-" in p or "-scheduler-" in p or "-server-" in p],
            60,
            f"{name} stopped",
        )
    assert w.proxy is not None
    assert sum(w.proxy.stats.injected.values()) > 0, w.proxy.stats
    assert w.proxy.stats.cut >= 2, w.proxy.stats
    # The pod watch was cut and resumed, twice at least, as the API server saw it.
    watches = [r for r in w.requests(mark) if r.verb == "watch" and r.resource == "pods"]
    assert len(watches) >= 3, watches
    w.catch_up()
    added = w.history.adds(b.namespace)
    assert all(n == 1 for p, n in added.items() if not p.startswith("chaos-backoff")), added
    assert added["chaos-backoff-worker-0"] == 4  # the first run and three recreations


IDLE_WINDOW = 5.0
"""Seconds of idleness measured, not the issue's minute, because what could send a request while
nothing changes is a short list and the window is not what rules it out: the controller's timers
(armed for a deadline or TTL, here an hour away, or to retry a failed pass, which would show as a
failed request before the window), kopf's peering keepalives (none standalone), kopf timers and
daemons (none registered) and watch reconnects (kopf sets no timeout; the API server ends a watch
after 30 minutes at the earliest).
The window checks that nothing outside that list fires. ``bench/operator.py`` (``--idle 60``, its
default) measures the full minute: 0 requests, watch and discovery included."""


def test_an_idle_running_job_costs_zero_api_requests(world):
    w = world()
    b = w.kube
    name = "idle"
    b.submit(
        E2EJob(
            name,
            "pytorch",
            {"Master": Role(1, (Forever(),)), "Worker": Role(3, (Forever(),), "OnFailure")},
            run_policy={"activeDeadlineSeconds": 3600},
        )
    )
    b.wait_phase(name, "Running")
    b.exit(f"{name}-worker-2", 1)  # some work before idling
    b.wait(lambda: b.phase(name) == "Running" and b.status(name).get("restartCount") == 1, what="running again")
    b.messages(name, "Restarted")  # the pass that wrote the status has posted its event too: nothing is pending
    w.catch_up()
    mark = w.mark()
    time.sleep(IDLE_WINDOW)  # the measurement itself: a window in which nothing happens
    idle = w.requests(mark)
    assert idle == [], idle  # not a write, not a read, not even a watch reconnect
    # Pods came from the watch stream: one LIST when the pod watch started, none per reconcile.
    lists = [r for r in w.requests() if r.key == ("list", "pods")]
    assert len(lists) == 1, lists
    # And every request of the operator said who it is.
    assert {r.user_agent.split(" ")[0] for r in w.requests()} == {f"mljob-operator/{__version__}"}


def test_metrics_are_served(world):
    import socket

    w = world(operator=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w.operator.extra_args = ["--metrics-port", str(port)]
    w.operator.start()
    b = w.kube
    ns = b.namespace
    b.submit(E2EJob("metrics", "pytorch", {"Worker": Role(2, (Run(1, 0.2), Run(0, 0.2)), "OnFailure")}))
    b.wait_phase("metrics", "Succeeded")
    text = ""

    def scraped() -> bool:
        nonlocal text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
        finished = f'mljob_jobs_finished_total{{framework="pytorch",namespace="{ns}",outcome="Succeeded"'
        return f'{finished},reason="Succeeded"}} 1.0' in text

    b.wait(scraped, what="metrics")
    assert f'mljob_pods_created_total{{framework="pytorch",namespace="{ns}"}} 2.0' in text
    assert f'mljob_restarts_total{{framework="pytorch",namespace="{ns}"}} 2.0' in text
    assert f'mljob_jobs{{framework="pytorch",namespace="{ns}",phase="Succeeded"}} 1.0' in text
    assert "mljob_reconcile_duration_seconds_bucket" in text
    assert 'job="' not in text  # never a job name as a label
