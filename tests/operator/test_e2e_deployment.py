"""How the operator is deployed: which namespaces it watches, and peering (several replicas, one acts).

These start the real ``mljob operator`` command with the arguments deploy/ and the README give.
The peering resources come from deploy/ itself, so a broken manifest fails here too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from harness import E2EJob, OperatorProcess, Role, Run

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def created_pods_in_log(operator: OperatorProcess, job: str) -> list[str]:
    """The ``created pod`` lines the operator logged for ``job``: what it says it did to which job."""
    return [line for line in operator.log().splitlines() if f"/{job}: created pod {job}-" in line]


def test_repeatable_namespace_watches_exactly_those_namespaces(world):
    w = world(operator=False)
    for ns in ("team-a", "team-b", "team-c"):
        w.on_loop(w.emulator.store.create_namespace, ns)
    w.operator.args = ["--namespace", "team-a", "--namespace", "team-b"]
    w.operator.start()
    b = w.backend
    for ns in ("team-a", "team-b", "team-c"):
        w.on_loop(w.kubelet.script, f"ns-{ns}-*", *_exits(Run(0, 0.2)))
        b.emu.create("mljobs", E2EJob(f"ns-{ns}", "pytorch", {"Worker": Role(1)}).body(ns), ns)

    def phase(ns: str) -> str:
        return str(((b.emu.get("mljobs", f"ns-{ns}", ns) or {}).get("status") or {}).get("phase") or "")

    b.wait(lambda: phase("team-a") == phase("team-b") == "Succeeded", what="both watched namespaces done")
    time.sleep(0.5)
    assert phase("team-c") == ""  # not watched: not even a status
    assert w.on_loop(w.emulator.list, "pods", "team-c") == []
    log = w.operator.log()
    assert "team-a/ns-team-a: created pod ns-team-a-worker-0" in log
    assert "team-c" not in log.split("watching MLJobs in", 1)[1].splitlines()[0]


def test_with_peering_only_one_replica_acts_and_the_other_takes_over_when_it_leaves(world):
    w = world(operator=False)
    for crd in _docs("peering.yaml"):
        w.emu.create("customresourcedefinitions", crd)
    (peering,) = _docs("peering-object.yaml")
    w.emu.create("clusterkopfpeerings", peering, None)
    args = ["--all-namespaces", "--peering", peering["metadata"]["name"]]
    first = w.operator
    first.args = args
    first.start()
    b = w.backend

    def peers() -> dict[str, Any]:
        body = w.emu.get("clusterkopfpeerings", peering["metadata"]["name"], None) or {}
        return dict(body.get("status") or {})

    b.wait(lambda: len(peers()) == 1, what="the first replica in the peering")
    second = OperatorProcess(first.kubeconfig, "default", w.tmp / "operator-2.log", args).start()
    try:
        b.wait(lambda: len(peers()) == 2, what="both replicas in the peering")
        # kopf starts a peered operator paused; only the one with the highest priority resumes.
        b.wait(lambda: "Resuming operations" in first.log(), what="the older replica to act")
        assert "Resuming operations" not in second.log()

        b.submit(E2EJob("peer-1", "pytorch", {"Master": Role(1, (Run(0, 0.3),)), "Worker": Role(2, (Run(0, 0.3),))}))
        assert b.wait_phase("peer-1", "Succeeded", "Failed")["phase"] == "Succeeded"
        assert len(created_pods_in_log(first, "peer-1")) == 3
        assert created_pods_in_log(second, "peer-1") == []
        assert "peer-1" not in second.log()
        assert w.emulator.stats.statuses[409] == 0  # nobody raced anybody for a write

        first.stop()  # a clean shutdown leaves the peering at once: the other one resumes
        b.wait(lambda: len(peers()) == 1, what="the first replica to leave the peering")
        b.submit(E2EJob("peer-2", "pytorch", {"Worker": Role(2, (Run(0, 0.3),))}))
        assert b.wait_phase("peer-2", "Succeeded", "Failed")["phase"] == "Succeeded"
        assert "Resuming operations" in second.log()
        assert len(created_pods_in_log(second, "peer-2")) == 2
        assert "peer-2" not in first.log()
    finally:
        second.stop()
    # Everything both replicas asked of the API, deploy/'s ClusterRole allows.
    used = {key for key in w.emulator.stats.counts if key[0] != "discovery"}
    assert used, w.emulator.stats.counts
    assert not {key for key in used if not rbac_allows(*key)}, used


def rbac_allows(verb: str, resource: str) -> bool:
    """Whether deploy/rbac.yaml's ClusterRole grants ``verb`` on the emulator's resource label."""
    (role,) = [d for d in _docs("rbac.yaml") if d["kind"] == "ClusterRole"]
    name, _, sub = resource.partition("/")
    plural, _, group = name.partition(".")
    wanted = f"{plural}/{sub}" if sub else plural
    return any(
        group in rule["apiGroups"] and wanted in rule["resources"] and verb in rule["verbs"] for rule in role["rules"]
    )


def _exits(*runs: Run) -> list[Any]:
    from mljob.testing import Exit

    return [Exit(r.code, r.after) for r in runs]


def test_the_command_refuses_an_unclear_scope_before_touching_any_cluster():
    import subprocess
    import sys

    for args in ([], ["--namespace", "a", "--all-namespaces"], ["-A", "--peering", "p", "--standalone"]):
        done = subprocess.run(
            [sys.executable, "-c", "from mljob.cli import main; main()", "operator", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={"KUBECONFIG": "/nonexistent", "PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert "give --namespace NS (repeatable) or --all-namespaces" in done.stderr
        assert "Traceback" not in done.stderr
