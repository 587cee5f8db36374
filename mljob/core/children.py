"""Reading observed pods: ownership, phase, restarts and why a replica stopped.

Pure functions over the plain dicts the watch stream delivers, so the reconciler and its tests
never need a Kubernetes client. Every decision the reconciler takes about one pod starts here:
is it ours, is it going away, did it finish, did it restart in place, and may it be retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mljob.core.kinds import MLJOB, JobKind
from mljob.core.names import LABEL_SPEC_HASH
from mljob.core.rules import LOST_NODE_REASONS, Stop

PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
UNKNOWN = "Unknown"


def controller_ref(obj: Mapping[str, Any], kind: JobKind | None = MLJOB) -> Mapping[str, Any] | None:
    """The controller ownerReference to an object of ``kind`` (None: of any kind), or None.

    Only a *controller* reference counts: labels can be forged by anyone who can create a pod,
    an ownerReference to a live uid cannot be guessed.
    """
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller") and (kind is None or kind.controls(ref)):
            return ref  # type: ignore[no-any-return]
    return None


def controller_uid(obj: Mapping[str, Any], kind: JobKind | None = MLJOB) -> str | None:
    """The uid of the job that controls ``obj``; the reconciler ignores a child whose uid differs."""
    ref = controller_ref(obj, kind)
    return str(ref["uid"]) if ref and ref.get("uid") else None


def controller_name(obj: Mapping[str, Any], kind: JobKind | None = MLJOB) -> str | None:
    """The name of the job of ``kind`` that controls ``obj``: the key children are indexed under."""
    ref = controller_ref(obj, kind)
    return str(ref["name"]) if ref and ref.get("name") else None


def name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def fingerprint(pod: Mapping[str, Any]) -> str:
    """The fingerprint of the spec the pod was rendered from (its ``mljob.io/spec-hash`` label); "" if none."""
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_SPEC_HASH) or "")


def terminating(obj: Mapping[str, Any]) -> bool:
    """Deletion has started: the name stays taken until the object is gone, so wait for it."""
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or PENDING)


def scheduled(pod: Mapping[str, Any]) -> bool:
    """Whether the scheduler has bound the pod to a node (PodScheduled is True)."""
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "PodScheduled" and c.get("status") == "True" for c in conditions)


def ready(pod: Mapping[str, Any]) -> bool:
    """The kubelet says the pod is Ready (every container running and passing its readiness probe)."""
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def finished(pod: Mapping[str, Any]) -> bool:
    return phase(pod) in (SUCCEEDED, FAILED)


def replica_of(pod: Mapping[str, Any], kind: JobKind = MLJOB) -> tuple[str, int] | None:
    """(lower-case role, index) from the pod's labels (``kind``'s keys), for pods the spec no longer names."""
    return kind.replica_of((pod.get("metadata") or {}).get("labels") or {})


def _container_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]


def restarts(pod: Mapping[str, Any]) -> int:
    """Container restarts the kubelet did in place, summed over containers (Kubeflow counts the same)."""
    return sum(int(c.get("restartCount") or 0) for c in _container_statuses(pod))


def running(pod: Mapping[str, Any]) -> bool:
    """Phase Running and every regular container running (not in CrashLoopBackOff, not exited)."""
    if phase(pod) != RUNNING:
        return False
    statuses = (pod.get("status") or {}).get("containerStatuses") or ()
    return all("running" in (c.get("state") or {}) for c in statuses)


def _pick(statuses: list[Mapping[str, Any]], container: str, key: str) -> Mapping[str, Any] | None:
    """The ``key`` state (``state``/``lastState``) that explains a stop.

    The wiring container's if it failed, else any that failed (a sidecar can fail a pod whose program
    exited 0), else the wiring container's, else the first.
    """
    terminated: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = [
        (c, t) for c in statuses if (t := (c.get(key) or {}).get("terminated"))
    ]
    ours = [t for c, t in terminated if c.get("name") == container]
    failed = [t for _, t in terminated if t.get("exitCode")]
    for t in (*(t for t in ours if t.get("exitCode")), *failed, *ours):
        return t
    return terminated[0][1] if terminated else None


def stop_of(pod: Mapping[str, Any], container: str) -> Stop:
    """Why a Failed (or node-lost) pod stopped; ``container`` is the framework's wiring container."""
    status = pod.get("status") or {}
    pod_reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    terminated = _pick(list(status.get("containerStatuses") or ()), container, "state")
    if terminated is None:
        terminated = _pick(list(status.get("initContainerStatuses") or ()), container, "state")
    if terminated is None:
        return Stop(pod_reason=pod_reason or ("" if message else "Unknown"), message=message)
    code = terminated.get("exitCode")
    return Stop(
        code=int(code) if isinstance(code, int) else None,
        reason=str(terminated.get("reason") or ""),
        pod_reason=pod_reason,
        message=message or str(terminated.get("message") or ""),
    )


def last_stop_of(pod: Mapping[str, Any], container: str) -> Stop:
    """Why the last in-place restart happened: the ``lastState.terminated`` the kubelet keeps."""
    statuses = _container_statuses(pod)
    terminated = _pick(statuses, container, "lastState")
    if terminated is None:
        return Stop()
    code = terminated.get("exitCode")
    return Stop(code=int(code) if isinstance(code, int) else None, reason=str(terminated.get("reason") or ""))


def lost(pod: Mapping[str, Any]) -> bool:
    """The node stopped reporting (phase Unknown, reason NodeLost): the replica is gone for practical purposes."""
    return phase(pod) == UNKNOWN and str((pod.get("status") or {}).get("reason") or "") in LOST_NODE_REASONS


def waiting_reason(pod: Mapping[str, Any]) -> str:
    """Why a pending pod is not running yet (ImagePullBackOff, Unschedulable, ...), for the status message."""
    for c in _container_statuses(pod):
        reason = ((c.get("state") or {}).get("waiting") or {}).get("reason")
        if reason and reason not in ("ContainerCreating", "PodInitializing"):
            return str(reason)
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            reason, message = (
                str(cond.get("reason") or "Unschedulable"),
                " ".join(str(cond.get("message") or "").split()),
            )
            # The scheduler's own words say what is missing (CPUs, a gang's room, a node label): keep them.
            return f"{reason} ({message[:200].rstrip()})" if message else reason
    return ""


_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences", "deletionTimestamp")


_KEPT_POD_STATUS = ("phase", "reason", "message")
_KEPT_CONDITION = ("type", "status", "reason", "message")
_KEPT_CONTAINER = ("name", "restartCount", "state", "lastState")


def slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the reconciler reads of a service or a placement object: the operator's index keeps only this."""
    meta = obj.get("metadata") or {}
    kept: dict[str, Any] = {"metadata": {k: meta[k] for k in _KEPT_METADATA if k in meta}}
    if "status" in obj:
        kept["status"] = obj["status"]
    return kept


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What the reconciler reads of a pod (:func:`slim`, and of its status only what this module reads).

    The operator keeps this of every pod of every job for as long as the job lives: images, ids, addresses
    and probe times are not kept.
    """
    kept = slim({"metadata": pod.get("metadata") or {}})
    status = pod.get("status")
    if isinstance(status, Mapping):
        lean: dict[str, Any] = {k: status[k] for k in _KEPT_POD_STATUS if k in status}
        if status.get("conditions"):
            lean["conditions"] = [{k: c[k] for k in _KEPT_CONDITION if k in c} for c in status["conditions"]]
        for key in ("initContainerStatuses", "containerStatuses"):
            if status.get(key):
                lean[key] = [{k: c[k] for k in _KEPT_CONTAINER if k in c} for c in status[key]]
        kept["status"] = lean
    return kept


def slim_of(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps of a child of ``kind``: :func:`slim_pod` for a Pod, :func:`slim` for the rest."""
    return slim_pod(obj) if kind == "Pod" else slim(obj)
