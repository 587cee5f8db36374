"""What only the emulator can show: operator SIGKILL and restart, faults and cut watches, idle cost."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter

from harness import E2EJob, Forever, Role, Run

from mljob.testing import Exit


def pod_adds(world) -> Counter[str]:
    """Every pod creation the store accepted, by name (subscribed in the emulator's loop)."""
    added: Counter[str] = Counter()

    def listen(change) -> None:
        if change.resource.key == ("", "pods") and change.type == "ADDED":
            added[change.obj["metadata"]["name"]] += 1

    world.on_loop(world.emulator.store.subscribe, listen)
    return added


def test_sigkill_mid_job_keeps_restart_counts_and_never_duplicates_a_pod(world):
    w = world()
    b = w.backend
    added = pod_adds(w)
    name = "kill-me"
    spec = E2EJob(name, "pytorch", {"Master": Role(1, (Forever(),)), "Worker": Role(2, (Forever(),), "OnFailure")})
    b.script(spec)
    w.on_loop(w.kubelet.script, f"{name}-worker-0", Exit(1, 0.2), Forever())
    b.create("mljobs", spec.body("default"))
    b.wait(lambda: b.status(name).get("restartCount") == 1 and b.phase(name) == "Running", what="one restart")

    w.operator.kill()
    creates_before = w.emulator.stats.counts[("create", "pods")]
    # While the operator is down: another in-place restart, and a pod evicted (it must be recreated).
    w.on_loop(w.kubelet.exit, f"{name}-worker-1", 1)
    w.on_loop(w.kubelet.evict, f"{name}-master-0")
    time.sleep(0.5)
    w.operator.start()

    b.wait(lambda: b.status(name).get("restartCount") == 3 and b.phase(name) == "Running", what="counted on")
    status = b.status(name)
    assert status["replicaStatuses"]["Worker"]["restarts"] == 2
    assert status["replicaStatuses"]["Master"]["restarts"] == 1
    assert added == {f"{name}-master-0": 2, f"{name}-worker-0": 1, f"{name}-worker-1": 1}
    # The restarted operator saw every pod before planning: its only create was the evicted master.
    assert w.emulator.stats.counts[("create", "pods")] - creates_before == 1
    assert w.emulator.stats.statuses[409] == 0

    # A second kill in the middle of a recreation: still exactly one pod per name.
    w.on_loop(w.kubelet.evict, f"{name}-worker-1")
    b.wait(lambda: b.status(name).get("restartCount") == 4, what="fourth restart")
    w.operator.kill()
    w.operator.start()
    b.wait(lambda: b.phase(name) == "Running" and len(b.pod_names(name)) == 3, what="running again")
    assert b.status(name)["restartCount"] == 4
    assert added[f"{name}-worker-1"] == 2
    # Not just the end state: at no committed moment did one replica have two pods.
    assert w.history.max_live == 1
    assert not w.history.violations, w.history.violations

    # And it finishes with the right status: the master's success ends the job (the PyTorch rule).
    w.on_loop(w.kubelet.exit, f"{name}-master-0", 0)
    status = b.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded", status
    assert status["restartCount"] == 4
    assert status["replicaStatuses"]["Master"] == {"active": 0, "succeeded": 1, "failed": 0, "restarts": 1}
    assert status["replicaStatuses"]["Worker"]["restarts"] == 3


def test_every_job_converges_with_failing_writes_and_cut_watches(world):
    w = world(termination_delay=0.1)
    b = w.backend
    added = pod_adds(w)
    w.on_loop(w.emulator.faults.error_rate, ("create", "patch", "delete", "update"), 0.05, codes=(500, 409, 429))
    w.on_loop(w.emulator.cut_watches_every, 1.0)  # "every few seconds", faster than the jobs take to finish
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
        status = b.wait_phase(name, "Succeeded", "Failed", timeout=45)
        assert status["phase"] == phase, (name, status)
        assert status["restartCount"] == restarts, (name, status)
    for name in ("chaos-tf", "chaos-fail", "chaos-deadline"):  # runs-until-stopped roles and running pods stopped
        b.wait(
            lambda n=name: not [p for p in b.pod_names(n) if "-ps-" in p or "-scheduler-" in p or "-server-" in p],
            20,
            f"{name} stopped",
        )
    stats = w.emulator.stats
    assert stats.injected > 0
    assert stats.counts[("watch", "pods")] >= 3, stats.counts  # the pod watch was cut and resumed, twice at least
    assert all(n == 1 for p, n in added.items() if not p.startswith("chaos-backoff")), added
    assert added["chaos-backoff-worker-0"] == 4  # the first run and three recreations


IDLE_WINDOW = 5.0
"""Seconds of idleness measured, not the issue's minute, because what could send a request while
nothing changes is a short list and the window is not what rules it out: the controller's timers
(armed for a deadline or TTL, here an hour away, or to retry a failed pass, which would show as a
failed request before the window), kopf's peering keepalives (none standalone), kopf timers and
daemons (none registered) and watch reconnects (kopf sets no timeout; this emulator cuts none).
The window checks that nothing outside that list fires. ``bench/operator.py`` (``--idle 60``, its
default) measures the full minute: 0 requests, watch and discovery included."""


def test_an_idle_running_job_costs_zero_api_requests(world):
    w = world()
    b = w.backend
    name = "idle"
    b.submit(
        E2EJob(
            name,
            "pytorch",
            {"Master": Role(1, (Forever(),)), "Worker": Role(3, (Forever(),), "OnFailure")},
            run_policy={"activeDeadlineSeconds": 3600},
        )
    )
    w.on_loop(w.kubelet.script, f"{name}-worker-2", Exit(1, 0.2), Forever())  # some work before idling
    b.wait(lambda: b.phase(name) == "Running" and b.status(name).get("restartCount") == 1, what="running again")
    time.sleep(1.0)  # let the last status write and its echo settle
    moment, events = time.monotonic(), w.emulator.stats.watch_events
    time.sleep(IDLE_WINDOW)
    assert w.emulator.stats.since(moment) == []  # not a write, not a read, not even a watch reconnect
    assert w.emulator.stats.watch_events == events
    # Pods came from the watch stream: one LIST when the pod watch started, none per reconcile.
    assert w.emulator.stats.counts[("list", "pods")] == 1, w.emulator.stats.counts


def test_metrics_are_served(world):
    import socket

    w = world(operator=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w.operator.extra_args = ["--metrics-port", str(port)]
    w.operator.start()
    b = w.backend
    b.submit(E2EJob("metrics", "pytorch", {"Worker": Role(2, (Run(1, 0.2), Run(0, 0.2)), "OnFailure")}))
    b.wait_phase("metrics", "Succeeded")
    text = ""

    def scraped() -> bool:
        nonlocal text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
        finished = 'mljob_jobs_finished_total{framework="pytorch",namespace="default",outcome="Succeeded"'
        return f'{finished},reason="Succeeded"}} 1.0' in text

    b.wait(scraped, what="metrics")
    assert 'mljob_pods_created_total{framework="pytorch",namespace="default"} 2.0' in text
    assert 'mljob_restarts_total{framework="pytorch",namespace="default"} 2.0' in text
    assert 'mljob_jobs{framework="pytorch",namespace="default",phase="Succeeded"} 1.0' in text
    assert "mljob_reconcile_duration_seconds_bucket" in text
    assert 'job="' not in text  # never a job name as a label
