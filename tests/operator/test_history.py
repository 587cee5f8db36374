"""The invariant checker the end-to-end tests run on every committed version: it must catch what it claims to."""

from __future__ import annotations

from typing import Any

from harness import Change, History


def change(kind: str, plural: str, obj: dict[str, Any]) -> Change:
    return Change(kind, plural, obj)


def pod(name: str, index: str, owned: bool = True) -> dict[str, Any]:
    refs = [{"kind": "MLJob", "uid": "u1", "controller": True}] if owned else []
    labels = {"mljob.io/replica-type": "worker", "mljob.io/replica-index": index}
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels, "ownerReferences": refs}}


def job(rv: int, phase: str, *true: str) -> dict[str, Any]:
    conditions = [{"type": t, "status": "True"} for t in true]
    return {
        "metadata": {"name": "j", "namespace": "ns", "uid": "u1", "resourceVersion": str(rv)},
        "status": {"phase": phase, "conditions": conditions},
    }


def test_two_live_pods_for_one_replica_are_caught_and_a_replacement_after_deletion_is_not():
    h = History()
    h.listen(change("ADDED", "pods", pod("j-worker-0", "0")))
    h.listen(change("DELETED", "pods", pod("j-worker-0", "0")))
    h.listen(change("ADDED", "pods", pod("j-worker-0", "0")))
    h.listen(change("ADDED", "pods", pod("stranger", "0", owned=False)))
    assert h.violations == []
    h.listen(change("ADDED", "pods", pod("j-worker-0-copy", "0")))
    assert len(h.violations) == 1


def test_exclusive_conditions_and_leaving_a_terminal_phase_are_caught():
    h = History()
    h.listen(change("MODIFIED", "mljobs", job(1, "Running", "Created", "Running")))
    h.listen(change("MODIFIED", "mljobs", job(2, "Succeeded", "Created", "Succeeded")))
    assert h.violations == []
    h.listen(change("MODIFIED", "mljobs", job(3, "Running", "Running", "Succeeded")))
    assert len(h.violations) == 2


def test_violations_are_told_apart_by_namespace_and_pod_creations_counted():
    h = History()
    h.listen(change("ADDED", "pods", pod("j-worker-0", "0")))
    h.listen(change("ADDED", "pods", pod("j-worker-0-copy", "0")))
    assert len(h.violations_in("ns")) == 1
    assert h.violations_in("other") == []
    assert h.adds("ns") == {"j-worker-0": 1, "j-worker-0-copy": 1}
    assert h.max_live["ns"] == 2
