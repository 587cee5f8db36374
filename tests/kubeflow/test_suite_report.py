"""How the harness of Kubeflow's own end-to-end suite (suite.py) reads pytest's JUnit XML report: each test's
outcome, and for a failure the first exception it raised (the suite raises another while cleaning up)."""

from __future__ import annotations

from tests.kubeflow.suite import Outcome, SuiteRun, first_error, parse_junit

API_FAILURE = """self = <kubeflow.training.api.training_client.TrainingClient object>
>           raise ApiException(http_resp=r)
E           kubernetes.client.exceptions.ApiException: (422)
E           Reason: Unprocessable Entity
E           HTTP response headers: HTTPHeaderDict({'Audit-Id': '77b2'})
E           HTTP response body: {"kind":"Status","message":"webhook denied the request: minAvailable: 10","code":422}

During handling of the above exception, another exception occurred:
E           RuntimeError: Failed to create TFJob: kubeflow-e2e-gang/tfjob. Error: (422)
"""

REPORT = f"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="kubeflow-training-1.9.4" tests="5">
<testcase classname="e2e.test_e2e_pytorchjob" name="test_sdk_e2e" time="15.2" />
<testcase classname="e2e.test_e2e_pytorchjob" name="test_sdk_e2e_with_gang_scheduling" time="0.000">
  <skipped type="pytest.skip" message="For gang-scheduling">skipped</skipped></testcase>
<testcase classname="e2e.test_e2e_tfjob" name="test_sdk_e2e_with_gang_scheduling" time="0.2">
  <failure message="RuntimeError: Failed to create TFJob: kubeflow-e2e-gang/tfjob. Error: (422)&#10;Reason: x"
  >{API_FAILURE.replace("<", "&lt;").replace(">", "&gt;")}</failure></testcase>
<testcase classname="e2e.test_e2e_jaxjob" name="test_sdk_e2e" time="120.0">
  <failure message="Failed: Timeout (&gt;120.0s) from pytest-timeout."
  >E   Failed: Timeout (&gt;120.0s) from pytest-timeout.</failure>
</testcase>
<testcase classname="e2e.test_e2e_mxjob" name="test_sdk_e2e" time="0.1">
  <error message="failed on setup with &quot;fixture 'x' not found&quot;"
  >E       fixture 'x' not found</error></testcase>
</testsuite></testsuites>
"""


def test_each_case_by_file_and_function_with_its_outcome():
    results = parse_junit(REPORT)
    assert {k: o.outcome for k, o in results.items()} == {
        "test_e2e_pytorchjob.py::test_sdk_e2e": "passed",
        "test_e2e_pytorchjob.py::test_sdk_e2e_with_gang_scheduling": "skipped",
        "test_e2e_tfjob.py::test_sdk_e2e_with_gang_scheduling": "failed",
        "test_e2e_jaxjob.py::test_sdk_e2e": "failed",
        "test_e2e_mxjob.py::test_sdk_e2e": "failed",
    }
    assert results["test_e2e_pytorchjob.py::test_sdk_e2e"].seconds == 15.2
    assert results["test_e2e_jaxjob.py::test_sdk_e2e"].reason == "Failed: Timeout (>120.0s) from pytest-timeout."
    assert results["test_e2e_mxjob.py::test_sdk_e2e"].reason == "(set-up or tear-down) fixture 'x' not found"


def test_a_failure_says_the_first_exception_and_the_api_servers_message():
    failed = parse_junit(REPORT)["test_e2e_tfjob.py::test_sdk_e2e_with_gang_scheduling"]
    assert failed.reason == ("ApiException: (422) Unprocessable Entity (webhook denied the request: minAvailable: 10)")
    assert failed.message == "RuntimeError: Failed to create TFJob: kubeflow-e2e-gang/tfjob. Error: (422)"
    assert first_error("no E lines here") == ""


def test_the_other_runs_tests_are_left_out_of_the_counts():
    run = SuiteRun("1.9.4", gang=False, namespace="kubeflow-e2e", results=parse_junit(REPORT))
    assert run.counts() == {"passed": 1, "failed": 3}
    assert next(o.test for o in run.ran()) == "test_e2e_jaxjob.py::test_sdk_e2e"  # by name
    assert Outcome("t", "skipped", "For plain scheduling").mode_skip
    assert not Outcome("t", "skipped", "no GPU").mode_skip
