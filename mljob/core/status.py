"""The status a person reads, and the restart ledger the operator keeps beside it.

Conditions follow the Kubernetes convention: one entry per type, ``lastTransitionTime`` moves only
when the status flips, and at most one of Running / Restarting / Succeeded / Failed is True. The
phase is derived from them, never set on its own.

Why a ledger: ``restartCount`` must survive an operator restart, and in-place restarts are only
visible as container ``restartCount`` values that grow. To count the *increase* exactly once the
operator must remember, per pod incarnation (uid), how many restarts it has already counted and
whether it already counted the pod's recreation. That record is machine bookkeeping, so it lives
in one annotation on the MLJob (:data:`LEDGER_ANNOTATION`) instead of cluttering the status; the
per-role totals live there too, so one write carries the whole truth and the status, a pure
projection of it, can always be recomputed if a crash falls between the two writes.

The ledger is written only when there is something to record: the first restart. Until then an
absent ledger reads as "nothing counted", and the fingerprint of the spec the job started with
travels on its pods (the ``mljob.io/spec-hash`` label, set when each is created), so a job that
never restarts costs no request for it. Once written, the ledger carries that fingerprint too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mljob.api import Condition, ConditionType, MLJob, MLJobStatus, Phase
from mljob.framework import Elastic

LEDGER_ANNOTATION = "mljob.io/ledger"
"""JSON: ``{"spec": hash, "restarts": {role: n}, "pods": {name: {"uid", "seen", "recreated"}}}``."""

TRUE, FALSE = "True", "False"
EXCLUSIVE = (ConditionType.RUNNING, ConditionType.RESTARTING, ConditionType.SUCCEEDED, ConditionType.FAILED)
"""At most one of these is True at a time."""
TERMINAL = (ConditionType.SUCCEEDED, ConditionType.FAILED)


def condition(status: MLJobStatus, kind: ConditionType) -> Condition | None:
    return next((c for c in status.conditions if c.type == kind), None)


def is_true(status: MLJobStatus, kind: ConditionType) -> bool:
    found = condition(status, kind)
    return found is not None and found.status == TRUE


def terminal(status: MLJobStatus) -> ConditionType | None:
    """Succeeded or Failed when the job has finished, else None."""
    return next((kind for kind in TERMINAL if is_true(status, kind)), None)


def set_condition(
    conditions: list[Condition], kind: ConditionType, value: bool, reason: str, message: str, now: datetime
) -> list[Condition]:
    """``conditions`` with ``kind`` set; the transition time moves only when the status flips.

    Setting one of :data:`EXCLUSIVE` True turns the others that exist False, with the same reason.
    A False condition that never existed is not added: absent already reads as "not yet".
    """
    wanted = TRUE if value else FALSE
    result: list[Condition] = []
    found = False
    for c in conditions:
        if c.type == kind:
            found = True
            time = c.last_transition_time if c.status == wanted else now
            result.append(
                Condition(type=kind, status=wanted, reason=reason, message=message, last_transition_time=time)
            )
        elif value and kind in EXCLUSIVE and c.type in EXCLUSIVE and c.status == TRUE:
            result.append(
                Condition(type=c.type, status=FALSE, reason=reason, message=message, last_transition_time=now)
            )
        else:
            result.append(c)
    if not found and value:
        result.append(Condition(type=kind, status=wanted, reason=reason, message=message, last_transition_time=now))
    return result


def clear_condition(
    conditions: list[Condition], kind: ConditionType, reason: str, message: str, now: datetime
) -> list[Condition]:
    """Turn ``kind`` False if it is True; leave everything else as it is."""
    if not any(c.type == kind and c.status == TRUE for c in conditions):
        return conditions
    return set_condition(conditions, kind, False, reason, message, now)


def derive_phase(conditions: Iterable[Condition]) -> Phase:
    """The one phase a person reads: terminal, then Suspended, Restarting, Running, else Pending."""
    true = {c.type for c in conditions if c.status == TRUE}
    for kind, phase in (
        (ConditionType.SUCCEEDED, Phase.SUCCEEDED),
        (ConditionType.FAILED, Phase.FAILED),
        (ConditionType.SUSPENDED, Phase.SUSPENDED),
        (ConditionType.RESTARTING, Phase.RESTARTING),
        (ConditionType.RUNNING, Phase.RUNNING),
    ):
        if kind in true:
            return phase
    return Phase.PENDING


def merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) that turns ``old`` into ``new``: removed keys become null."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_diff(before, value)
            if nested:
                patch[key] = nested
        elif before != value or key not in old:
            patch[key] = value
    return patch


def status_patch(old: MLJobStatus | None, new: MLJobStatus) -> dict[str, Any] | None:
    """The merge patch for ``/status``, or None when nothing a person can see changed."""
    before = old.to_dict() if old is not None else {}
    diff = merge_diff(before, new.to_dict())
    return diff or None


def spec_hash(job: MLJob, elastic: Elastic | None = None) -> str:
    """A fingerprint of what the pods are rendered from; changes to the run policy do not count, nor, in an
    elastic job, its elastic role's replica count (scaling adds or removes pods; the others run on). Its bounds
    do count: where they default to the count, a scale changes them, and the pods' ``PET_NNODES`` with them."""
    spec = job.spec.model_dump(mode="json", by_alias=True, include={"framework", "replica_specs", "framework_options"})
    if elastic is not None and elastic.role in spec["replicaSpecs"]:
        spec["replicaSpecs"][elastic.role] = {**spec["replicaSpecs"][elastic.role], "replicas": None}
        spec["elastic"] = [elastic.min_replicas, elastic.max_replicas]
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class PodRecord:
    """What the ledger already counted for one pod incarnation."""

    uid: str
    seen: int = 0
    """Container restarts of this incarnation already counted."""
    recreated: bool = False
    """This incarnation's failure was already counted as a restart by recreation."""


@dataclass
class Ledger:
    """Restart bookkeeping that survives operator restarts; see the module docstring for why."""

    spec: str = ""
    restarts: dict[str, int] = field(default_factory=dict)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    changed: bool = False
    """Something was counted or the spec fingerprint moved: the annotation must be written."""

    @classmethod
    def read(cls, job: MLJob) -> Ledger:
        """The ledger in the job's annotation; seeded from the status when missing or unreadable."""
        text = job.metadata.annotations.get(LEDGER_ANNOTATION)
        if text:
            try:
                data = json.loads(text)
                return cls(
                    spec=str(data.get("spec", "")),
                    restarts={str(k): int(v) for k, v in (data.get("restarts") or {}).items()},
                    pods={
                        str(name): PodRecord(str(rec["uid"]), int(rec.get("seen", 0)), bool(rec.get("recreated")))
                        for name, rec in (data.get("pods") or {}).items()
                    },
                )
            except (ValueError, TypeError, KeyError, AttributeError):
                pass
        status = job.status or MLJobStatus()
        return cls(restarts={role: rs.restarts for role, rs in status.replica_statuses.items() if rs.restarts})

    def record(self, pod_name: str, pod_uid: str) -> PodRecord:
        """The record for this incarnation; a new uid under the same name starts from zero."""
        rec = self.pods.get(pod_name)
        if rec is None or rec.uid != pod_uid:
            rec = self.pods[pod_name] = PodRecord(pod_uid)
        return rec

    def count(self, role: str, n: int) -> None:
        self.restarts[role] = self.restarts.get(role, 0) + n
        self.changed = True

    def saw(self, rec: PodRecord, restarts: int) -> int:
        """Record ``restarts`` in-place restarts of ``rec``'s pod; returns how many are new."""
        new = max(0, restarts - rec.seen)
        if new:
            rec.seen = restarts
            self.changed = True
        return new

    def recreating(self, rec: PodRecord) -> None:
        rec.recreated = True
        self.changed = True

    def started(self, spec: str) -> None:
        """The pods are (re)created from the spec with fingerprint ``spec``."""
        if self.spec != spec:
            self.spec = spec
            self.changed = True

    @property
    def total(self) -> int:
        return sum(self.restarts.values())

    def dump(self, live_uids: Iterable[str]) -> str:
        """The annotation value; records of pods that are gone or have nothing counted are dropped."""
        live = set(live_uids)
        pods = {
            name: {"uid": rec.uid, "seen": rec.seen, **({"recreated": True} if rec.recreated else {})}
            for name, rec in sorted(self.pods.items())
            if rec.uid in live and (rec.seen or rec.recreated)
        }
        data = {"spec": self.spec, "restarts": dict(sorted(self.restarts.items())), "pods": pods}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))
