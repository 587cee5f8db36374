"""A thousand generated MLJobs through validate and render: no crash; every invalid one names its field."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from mljob.core.render import render
from mljob.core.validation import check_document
from mljob.framework import replicas_of

from .strategies import PLUGINS, invalid_jobs, valid_jobs

SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(valid_jobs())
def test_a_valid_job_checks_clean_and_renders_one_pod_per_replica_and_one_service(doc: dict[str, Any]):
    checked = check_document(doc, PLUGINS)
    assert checked.ok, [str(p) for p in checked.problems]
    assert checked.job is not None
    assert checked.framework is not None
    children = render(checked.job, checked.framework, PLUGINS, uid="u")
    pods = [c for c in children if c["kind"] == "Pod"]
    assert len(pods) == len(replicas_of(checked.job))
    assert len({p["metadata"]["name"] for p in pods}) == len(pods)
    assert [c["kind"] for c in children].count("Service") == 1


@SETTINGS
@given(invalid_jobs())
def test_an_invalid_job_is_refused_naming_the_field_it_broke(case: tuple[dict[str, Any], str, str]):
    doc, mutation, path = case
    checked = check_document(doc, PLUGINS)
    assert not checked.ok, mutation
    paths = [p.path for p in checked.problems]
    assert all(paths), (mutation, [str(p) for p in checked.problems])  # every problem names a field
    assert any(p == path or p.startswith(path + ".") or p.startswith(path + "[") for p in paths), (
        mutation,
        path,
        [str(p) for p in checked.problems],
    )
