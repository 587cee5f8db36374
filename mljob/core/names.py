"""Names, addresses and labels of a job's children: deterministic, so creates are idempotent."""

from __future__ import annotations

import re

from mljob.framework import Replica

Key = tuple[str, str]
"""A job as the operator and the UI index it: (namespace, job name)."""

LABEL_JOB = "mljob.io/job-name"
LABEL_FRAMEWORK = "mljob.io/framework"
LABEL_ROLE = "mljob.io/replica-type"
LABEL_INDEX = "mljob.io/replica-index"
LABEL_LEADER = "mljob.io/leader"
LABEL_SPEC_HASH = "mljob.io/spec-hash"
"""On every pod: the fingerprint of the spec it was rendered from (as ``pod-template-hash`` on a ReplicaSet's)."""
RESERVED_LABEL_PREFIX = "mljob.io/"

DNS_LABEL_MAX = 63
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def pod_name(job: str, replica: Replica) -> str:
    """``<job>-<role lower>-<index>``: also the pod's hostname."""
    return f"{job}-{replica.role.lower()}-{replica.index}"


def service_host(job: str, namespace: str, replica: Replica) -> str:
    """The DNS name of a replica behind the job's one headless service."""
    return f"{pod_name(job, replica)}.{job}.{namespace}.svc"


def dns1035_problem(name: str) -> str | None:
    """Why ``name`` cannot be a DNS-1035 label (a Service name), or None."""
    return _label_problem(name, _DNS1035_LABEL, "DNS-1035", "starting with a letter and ending with a letter or digit")


def dns1123_problem(name: str) -> str | None:
    """Why ``name`` cannot be a DNS-1123 label (a pod hostname), or None."""
    return _label_problem(name, _DNS1123_LABEL, "DNS-1123", "starting and ending with a letter or digit")


def _label_problem(name: str, pattern: re.Pattern[str], kind: str, ends: str) -> str | None:
    if len(name) > DNS_LABEL_MAX:
        return f"{name!r} is {len(name)} characters; a DNS label has at most {DNS_LABEL_MAX}"
    if not pattern.match(name):
        return f"{name!r} is not a {kind} label: lower-case letters, digits and '-', {ends}"
    return None


QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""The label that puts a job in a Kueue LocalQueue, as on every job kind Kueue manages."""


def selector(job: str) -> dict[str, str]:
    """The labels that select every child of ``job``."""
    return {LABEL_JOB: job}
