"""The UI's pure part: rows, replicas, Events and the phase-over-time history and plot, from plain objects."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from mljob.ui import view

T0 = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job(name: str, phase: str | None = None, ns: str = "team", created: float = 0, **status: object) -> dict:
    body: dict = {
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": ts(created)},
        "spec": {"framework": "pytorch", "replicaSpecs": {"Master": {"replicas": 1}, "Worker": {"replicas": 3}}},
    }
    if phase is not None:
        body["status"] = {"phase": phase, **status}
    return body


def pod(job_name: str, role: str, index: int, phase: str = "Running", ready: bool = True, ns: str = "team") -> dict:
    return {
        "metadata": {
            "name": f"{job_name}-{role.lower()}-{index}",
            "namespace": ns,
            "labels": {
                "mljob.io/job-name": job_name,
                "mljob.io/replica-type": role,
                "mljob.io/replica-index": str(index),
            },
        },
        "spec": {"nodeName": f"node-{index}", "containers": [{"name": "pytorch"}]},
        "status": {
            "phase": phase,
            "podIP": f"10.0.0.{index}",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "pytorch", "restartCount": index, "state": {"running": {}}}],
        },
    }


def test_rows_count_ready_replicas_per_job_and_list_the_newest_first():
    jobs = {("team", "old"): job("old", "Running", created=0), ("team", "new"): job("new", None, created=90)}
    pods = [
        pod("old", "Master", 0),
        pod("old", "Worker", 0),
        pod("old", "Worker", 1, ready=False),
        pod("old", "Worker", 2, phase="Pending", ready=False),
        pod("old", "Worker", 0, ns="elsewhere"),  # same job name, another namespace: not this job's
    ]
    rows = view.job_rows(jobs, pods, T0 + timedelta(seconds=200))
    assert [r.name for r in rows] == ["new", "old"]
    new, old = rows
    assert (old.phase, old.ready, old.total, old.age, old.framework) == ("Running", 2, 4, "3m", "pytorch")
    assert (new.phase, new.ready, new.total, new.age) == ("Pending", 0, 4, "110s")


def test_a_job_the_models_would_refuse_is_still_shown():
    odd = {"metadata": {"name": "odd", "namespace": "team"}, "spec": {"replicaSpecs": "not a mapping"}}
    (row,) = view.job_rows({("team", "odd"): odd}, [], T0)
    assert (row.name, row.framework, row.phase, row.total, row.age) == ("odd", "?", "Pending", 0, "?")


def test_replicas_are_in_role_and_index_order_with_their_node_and_why_they_wait():
    waiting = pod("j", "Worker", 10, phase="Pending", ready=False)
    waiting["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ImagePullBackOff"}}
    del waiting["spec"]["nodeName"]
    pods = view.pods_of(("team", "j"), [waiting, pod("j", "Worker", 2), pod("j", "Master", 0), pod("x", "Master", 0)])
    rows = view.replicas(pods)
    assert [r.replica for r in rows] == ["master-0", "worker-2", "worker-10"]
    assert (rows[1].node, rows[1].ready, rows[1].restarts, rows[1].ip) == ("node-2", True, 2, "10.0.0.2")
    assert (rows[2].node, rows[2].reason, rows[2].ready) == ("(not scheduled)", "ImagePullBackOff", False)


def test_events_are_the_jobs_and_its_pods_oldest_first():
    def event(name: str, reason: str, at: float, kind: str = "Pod", ns: str = "team") -> dict:
        return {
            "involvedObject": {"kind": kind, "name": name, "namespace": ns},
            "reason": reason,
            "message": f"{reason} {name}",
            "type": "Normal",
            "lastTimestamp": ts(at),
        }

    events = [
        event("j-master-0", "Scheduled", 5),
        event("j", "Created", 1, kind="MLJob"),
        event("other-master-0", "Scheduled", 2),
        event("j", "Created", 3, kind="MLJob", ns="elsewhere"),
        event("j-worker-3", "Killing", 6),  # a replica's pod that is gone now
        event("j-worker-extra-master-0", "Scheduled", 7),  # job j-worker-extra's pod
    ]
    rows = view.event_rows(events, ("team", "j"), ["j-master-0"], T0 + timedelta(seconds=65))
    assert [(r.object, r.reason, r.last_seen) for r in rows] == [
        ("mljob/j", "Created", "64s"),
        ("pod/j-master-0", "Scheduled", "60s"),
        ("pod/j-worker-3", "Killing", "59s"),
    ]


def test_the_past_comes_from_conditions_and_the_present_from_the_watch():
    started = T0 + timedelta(seconds=100)
    history = view.History(since=started)
    conditions = [
        {"type": "Created", "status": "True", "lastTransitionTime": ts(0)},
        {"type": "Running", "status": "True", "lastTransitionTime": ts(30)},
        {"type": "Restarting", "status": "False", "lastTransitionTime": ts(20)},
    ]
    history.observe(job("a", "Running", created=0, conditions=conditions), started)
    history.observe(job("b", "Pending", created=110), T0 + timedelta(seconds=110))
    history.observe(job("b", "Running", created=110), T0 + timedelta(seconds=120))
    history.observe(job("a", "Succeeded", created=0, conditions=conditions), T0 + timedelta(seconds=150))

    def at(seconds: float) -> dict[str, int]:
        return dict(history.counts(T0 + timedelta(seconds=seconds)))

    assert at(-1) == {}
    assert at(10) == {"Pending": 1}
    assert at(40) == {"Running": 1}
    assert at(115) == {"Running": 1, "Pending": 1}
    assert at(160) == {"Succeeded": 1, "Running": 1}
    history.delete(("team", "b"), T0 + timedelta(seconds=170))
    assert at(160) == {"Succeeded": 1, "Running": 1}, "a deleted job keeps its past"
    assert at(180) == {"Succeeded": 1}
    history.expire(T0 + timedelta(seconds=170) + history.retention + timedelta(seconds=1))
    assert at(160) == {"Succeeded": 1}


def test_the_plot_stacks_one_band_per_phase_with_steps_at_the_changes():
    history = view.History(since=T0)
    history.observe(job("a", "Pending"), T0)
    history.observe(job("b", "Pending"), T0)
    history.observe(job("a", "Running"), T0 + timedelta(seconds=30))
    series = history.series(T0, T0 + timedelta(seconds=60), samples=7)
    svg = view.phase_plot(series, width=144, height=130)  # a 100 x 100 plotting area from (36, 8)
    assert 'data-peak="2"' in svg
    bands = dict(re.findall(r'data-phase="(\w+)" data-now="(\d+)"', svg))
    assert bands == {"Pending": "1", "Running": "1"}
    paths = dict(re.findall(r'data-phase="(\w+)"[^>]*d="M ([^"]*) Z"', svg))
    # Pending at the bottom: two jobs (full height, y 8) until the sample at 30 s (x 86), then one (y 58).
    assert paths["Pending"] == "36.0,8.0 86.0,8.0 86.0,58.0 136.0,58.0 L 136.0,108.0 36.0,108.0"
    # Running on top of it: from that sample on, the band between the two.
    assert paths["Running"] == "36.0,8.0 136.0,8.0 L 136.0,58.0 86.0,58.0 86.0,8.0 36.0,8.0"


def test_an_empty_cluster_plots_axes_and_no_bands():
    history = view.History(since=T0)
    svg = view.phase_plot(history.series(T0 - timedelta(minutes=1), T0))
    assert "<path" not in svg
    assert 'data-peak="0"' in svg
