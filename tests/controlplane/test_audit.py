"""Counting requests from the API server's audit log: each request once, watches by their start."""

from __future__ import annotations

import json

from controlplane.audit import AuditLog


def event(audit_id: str, stage: str, verb: str, resource: str, code: int | None = None, **more) -> str:
    body = {
        "auditID": audit_id,
        "stage": stage,
        "verb": verb,
        "objectRef": {"resource": resource, "namespace": "ns", "name": more.get("name", "")},
        "user": {"username": more.get("user", "op")},
        "userAgent": more.get("agent", "mljob-operator/0.1.0"),
        "requestURI": f"/api/v1/namespaces/ns/{resource}",
    }
    if code is not None:
        body["responseStatus"] = {"code": code}
    return json.dumps(body) + "\n"


def test_each_request_counts_once_and_a_watch_keeps_its_final_code(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text(
        event("1", "ResponseStarted", "watch", "pods", 200)
        + event("2", "ResponseComplete", "create", "pods", 201, name="p")
        + event("3", "ResponseComplete", "get", "pods", 200, user="someone-else")
        + event("1", "ResponseComplete", "watch", "pods", 200)
    )
    audit = AuditLog(log)
    assert [r.verb for r in audit.requests()] == ["watch", "create", "get"]
    assert [r.verb for r in audit.requests(user="op")] == ["watch", "create"]
    assert audit.counts(user="op") == {("watch", "pods"): 1, ("create", "pods"): 1}
    assert audit.requests(user_agent="kopf/") == []


def test_a_mark_counts_only_what_came_after_and_a_half_written_line_waits(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text(event("1", "ResponseComplete", "create", "pods", 201))
    audit = AuditLog(log)
    mark = audit.mark()
    with open(log, "a") as out:
        out.write(event("2", "ResponseComplete", "delete", "pods", 200))
        out.write(event("3", "ResponseComplete", "patch", "mljobs", 409)[:-10])  # still being written
    found = audit.requests(mark)
    assert [(r.verb, r.code) for r in found] == [("delete", 200)]
    assert AuditLog(tmp_path / "absent.log").requests() == []
