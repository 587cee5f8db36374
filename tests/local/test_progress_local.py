"""``mljob run``'s progress endpoint: replicas report with :mod:`mljob.progress` (and by hand, badly), the run
shows it on its status line and in its summary, and nothing a replica sends disturbs the run.

The end-to-end tests run :func:`mljob.local.run_file` in this process with the tiny framework (``localfw.py``);
their replicas are ``python -c`` scripts that print what they saw, which the tests read back.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from localfw import Tiny, container, tiny_plugins, write_job

from mljob import MLJob, Replica
from mljob.core.progress import (
    ENV_CA_CERT,
    ENV_TOKEN,
    ENV_URL,
    MAX_BODY,
    Progress,
    TokenBucket,
    failure,
    fold,
    parse_report,
    path,
)
from mljob.local import run_file
from mljob.local.display import Counts, Display, final_progress, live_progress, status_text
from mljob.local.launch import Launch
from mljob.local.progress import ProgressServer, bearer, final
from mljob.local.supervisor import Supervisor

URL = re.compile(r"http://127\.0\.0\.1:\d+/apis/mljob\.io/v1alpha1/namespaces/default/mljobs/tiny/status")


def run(folder: Path, roles: dict[str, Any]) -> tuple[int, str, str]:
    job = write_job(folder, roles)
    out, err = io.StringIO(), io.StringIO()
    code = run_file(job, plugins=tiny_plugins(), out=out, err=err, live=False)
    return code, out.getvalue(), err.getvalue()


def python(script: str, **extra: Any) -> dict[str, Any]:
    return container(["python", "-c", script], **extra)


def said(out: str, replica: str, word: str) -> list[str]:
    """What ``replica`` printed after ``word`` on lines that start with it."""
    prefix = f"[{replica}] {word} "
    return [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]


def progress_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[mljob] progress")]


# End to end: what a person sees.

TRAIN = """
import mljob.progress as progress
sent = sum(progress.report(step=i, total=20, loss=round(1 / i, 4), every=0) for i in range(1, 21))
print("SENT", sent)
"""


def test_reports_show_in_the_summary_at_100_percent_with_the_latest_loss(tmp_path):
    code, out, err = run(tmp_path, {"Lead": (1, "Never", python(TRAIN))})
    assert code == 0, out + err
    assert said(out, "lead-0", "SENT") == ["20"]
    assert progress_lines(out) == ["[mljob] progress 100% (step 20/20) · loss=0.05"]
    assert out.index("[mljob] progress") < out.index("[mljob] job succeeded")


HALFWAY = """
import sys
import mljob.progress as progress
print("SENT", progress.report(step=5, total=10, loss=0.5, acc="0.75"))
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize(
    ("exit_code", "shown"),
    [
        (0, "[mljob] progress 100% (step 10/10) · loss=0.5 · acc=0.75"),  # the operator's rule: success is 100%
        (1, "[mljob] progress 50% (step 5/10) · loss=0.5 · acc=0.75"),  # a failure keeps what was reported
    ],
)
def test_the_summary_ends_at_100_percent_only_when_the_job_succeeds(tmp_path, exit_code, shown):
    lead = container(["python", "-c", HALFWAY, str(exit_code)])
    code, out, _ = run(tmp_path, {"Lead": (1, "Never", lead)})
    assert code == exit_code
    assert said(out, "lead-0", "SENT") == ["True"]
    assert progress_lines(out) == [shown]


def test_a_job_that_never_reports_shows_no_progress(tmp_path):
    code, out, _ = run(tmp_path, {"Lead": (1, "Never", python("print('TRAINED')"))})
    assert code == 0
    assert "[lead-0] TRAINED" in out
    assert progress_lines(out) == []
    assert "%" not in out


ENV = """
import json, os, stat
token = os.environ.get("KUBEFLOW_TRAINER_SERVER_TOKEN")
mode = stat.S_IMODE(os.stat(token).st_mode) if token and os.path.exists(token) else None
length = len(open(token).read()) if mode is not None else 0
seen = {name: os.environ.get(name) for name in ("KUBEFLOW_TRAINER_SERVER_URL", "KUBEFLOW_TRAINER_SERVER_CA_CERT")}
print("ENV", json.dumps({**seen, "token": token, "mode": mode, "length": length}))
"""


def test_replicas_get_the_url_and_the_token_path_and_a_job_may_set_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_URL, "https://enclosing-trainer.example/status")  # mljob run inside a Trainer pod
    monkeypatch.setenv(ENV_CA_CERT, "/var/run/secrets/kubeflow/trainer/ca.crt")
    own = python(ENV, env=[{"name": ENV_URL, "value": "http://127.0.0.1:1/mine"}])
    code, out, err = run(tmp_path, {"Lead": (1, "Never", python(ENV)), "Worker": (2, "Never", own)})
    assert code == 0, out + err
    seen = {r: json.loads(said(out, r, "ENV")[0]) for r in ("lead-0", "worker-0", "worker-1")}
    lead = seen["lead-0"]
    assert URL.fullmatch(lead[ENV_URL]), lead
    assert lead[ENV_CA_CERT] is None  # plain http on loopback: no CA, and not the enclosing job's
    assert lead["mode"] == 0o600
    assert lead["length"] >= 32  # secrets.token_urlsafe(32)
    assert Path(lead["token"]).name == "progress-token"
    assert not Path(lead["token"]).exists()  # it went with the run's folder
    for worker in ("worker-0", "worker-1"):
        assert seen[worker][ENV_URL] == "http://127.0.0.1:1/mine"
        assert seen[worker]["token"] == lead["token"]


ABUSE = """
import json, os, urllib.error, urllib.request

url = os.environ["KUBEFLOW_TRAINER_SERVER_URL"]
token = open(os.environ["KUBEFLOW_TRAINER_SERVER_TOKEN"]).read().strip()
good = {"Authorization": "Bearer " + token}
junk = [{"name": "loss", "value": "999"}]


def send(case, body, headers=good, method="POST", to=url):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(to, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            code, answer, retry = response.status, json.load(response), None
    except urllib.error.HTTPError as error:
        code, answer, retry = error.code, json.load(error), error.headers.get("Retry-After")
    print("ANSWER", json.dumps({"case": case, "code": code, "answer": answer, "retry": retry}), flush=True)
    return code


status = lambda **fields: {"trainerStatus": fields}
send("good", status(step=3, totalSteps=10, metrics=[{"name": "loss", "value": "0.7"}]))
send("no token", status(step=4, metrics=junk), headers={})
send("wrong token", status(step=4, metrics=junk), headers={"Authorization": "Bearer " + token[::-1]})
send("not json", b'{"trainerStatus": {"step": 4,')
send("nested too deep", b"[" * 60000)
send("percent 250", status(progressPercentage=250, metrics=junk))
send("step above total", status(step=12, totalSteps=10, metrics=junk))
send("too big", b" " * 70000)
send("get", None, method="GET")
send("unknown path", status(step=4), to=url.replace("/status", "/scale"))
send("another job", status(step=4, metrics=junk), to=url.replace("/mljobs/tiny/", "/mljobs/other/"))
for i in range(5000):  # well past the burst; ends at the first refusal
    if send("flood", status(step=3, totalSteps=10, metrics=[{"name": "loss", "value": "0.7"}])) == 429:
        break
"""


def test_bad_requests_are_refused_as_trainer_refuses_them_and_the_job_still_succeeds(tmp_path):
    code, out, err = run(tmp_path, {"Lead": (1, "Never", python(ABUSE))})
    assert code == 0, out + err
    answers: dict[str, dict[str, Any]] = {}
    for line in said(out, "lead-0", "ANSWER"):
        answer = json.loads(line)
        answers[answer["case"]] = answer  # the flood's last answer wins
    codes = {case: a["code"] for case, a in answers.items()}
    assert codes == {
        "good": 200,
        "no token": 401,
        "wrong token": 403,
        "not json": 422,
        "nested too deep": 422,
        "percent 250": 422,
        "step above total": 422,
        "too big": 413,
        "get": 405,
        "unknown path": 404,
        "another job": 403,
        "flood": 429,
    }
    assert answers["good"]["answer"] == {
        "trainerStatus": {"metrics": [{"name": "loss", "value": "0.7"}], "step": 3, "totalSteps": 10}
    }
    for case, answer in answers.items():
        if case != "good":
            body = answer["answer"]
            assert (body["kind"], body["apiVersion"], body["status"], body["code"]) == (
                "Status",
                "v1",
                "Failure",
                answer["code"],
            )
    assert "trainerStatus.progressPercentage" in answers["percent 250"]["answer"]["message"]
    assert "trainerStatus.step" in answers["step above total"]["answer"]["message"]
    assert answers["flood"]["answer"]["reason"] == "TooManyRequests"
    assert int(answers["flood"]["retry"]) >= 1
    assert answers["another job"]["answer"]["reason"] == "Forbidden"
    # No refused report reached the progress: loss=999 never shows; success makes the 30% a 100%.
    assert progress_lines(out) == ["[mljob] progress 100% (step 10/10) · loss=0.7"]


# The endpoint in this process, with a clock the test holds.


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _post(
    session: aiohttp.ClientSession, url: str, body: Any, token: str | None, method: str = "POST"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.request(method, url, data=data, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


def test_the_endpoint_folds_good_reports_and_rate_limits_per_job(tmp_path):
    clock = Clock()

    async def scenario() -> tuple[list[int], Progress, str]:
        with ProgressServer("team", "bert", tmp_path, rate=1.0, burst=2, clock=clock) as server:
            token = server.token_file.read_text()
            await server.start()
            try:
                async with aiohttp.ClientSession() as session:
                    codes = []
                    for step in (10, 20, 30):  # a burst of 2: the third is refused
                        report = {
                            "trainerStatus": {"step": step, "totalSteps": 40, "metrics": [{"name": "l", "value": "1"}]}
                        }
                        codes.append((await _post(session, server.url, report, token))[0])
                    _, body, headers = await _post(session, server.url, {"trainerStatus": {"step": 30}}, token)
                    codes.append(body["code"])
                    retry = headers["Retry-After"]
                    clock.now += 1.0  # one more token
                    codes.append((await _post(session, server.url, {"trainerStatus": {"step": 30}}, token))[0])
            finally:
                await server.stop()
            return codes, server.progress, retry

    codes, progress, retry = asyncio.run(scenario())
    assert codes == [200, 200, 429, 429, 200]
    assert retry == "1"
    assert (progress.step, progress.total, progress.percent, progress.reports) == (30, 40, 75, 3)
    assert progress.metrics == (("l", "1"),)


def test_the_endpoint_answers_each_refusal_with_trainers_code_and_reason(tmp_path):
    async def scenario() -> dict[str, tuple[int, str]]:
        with ProgressServer("default", "tiny", tmp_path) as server:
            token = server.token_file.read_text()
            other = server.url.replace("/tiny/", "/other/")
            await server.start()
            try:
                async with aiohttp.ClientSession() as session:
                    cases = {
                        "empty": (server.url, {}, token, "POST"),
                        "get": (server.url, b"", token, "GET"),
                        "exactly max": (server.url, b" " * (MAX_BODY - 2) + b"{}", token, "POST"),
                        "one over": (server.url, b" " * (MAX_BODY - 1) + b"{}", token, "POST"),
                        "other job no token": (other, {}, None, "POST"),
                        "root": (server.url.split("/apis/")[0] + "/", {}, token, "POST"),
                    }
                    got = {}
                    for case, (url, body, auth, method) in cases.items():
                        status, answer, _ = await _post(session, url, body, auth, method)
                        got[case] = (status, answer.get("reason", ""))
                    headers = {"Authorization": f"bearer {token}"}
                    async with session.post(server.url, data=b"{}", headers=headers) as response:
                        got["lowercase scheme"] = (response.status, "")
            finally:
                await server.stop()
            assert server.progress == Progress()  # an empty report writes nothing, as Trainer's
            return got

    assert asyncio.run(scenario()) == {
        "empty": (200, ""),
        "get": (405, "MethodNotAllowed"),
        "lowercase scheme": (200, ""),
        "exactly max": (200, ""),
        "one over": (413, "RequestEntityTooLarge"),
        "other job no token": (401, "Unauthorized"),  # who you are before what you may do
        "root": (404, "NotFound"),
    }


def test_the_server_environ_replaces_inherited_values_and_keeps_the_rest(tmp_path):
    with ProgressServer("default", "tiny", tmp_path) as server:
        inherited = {"PATH": "/bin", ENV_URL: "https://outer", ENV_CA_CERT: "/ca", ENV_TOKEN: "/outer-token"}
        assert server.environ(inherited) == {"PATH": "/bin", ENV_URL: server.url, ENV_TOKEN: str(server.token_file)}
        assert server.url.endswith(path("default", "tiny"))
        assert URL.fullmatch(server.url)


# Pure helpers.


def test_token_bucket_lets_a_burst_through_then_the_rate():
    bucket = TokenBucket(rate=10.0, burst=3)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.05) == pytest.approx(0.05)  # half a token refilled
    assert bucket.take(0.1) == 0.0
    assert bucket.take(100.0) == 0.0
    assert bucket.tokens == pytest.approx(2.0)  # refilled to the burst (3), no more, less the one taken


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), ("", None), (None, None)],
)
def test_bearer_reads_the_token_of_an_authorization_header(header, token):
    assert bearer(header) == token


def test_failure_is_a_kubernetes_status():
    assert failure(429, "slow down", {"retryAfterSeconds": 2}) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "slow down",
        "reason": "TooManyRequests",
        "code": 429,
        "details": {"retryAfterSeconds": 2},
    }


NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_echo_is_the_report_as_parsed():
    body = {"trainerStatus": {"step": 4.0, "totalSteps": 8, "metrics": [{"name": "loss", "value": 0.5}], "x": 1}}
    assert parse_report(body, NOW).wire() == {
        "trainerStatus": {"metrics": [{"name": "loss", "value": "0.5"}], "step": 4, "totalSteps": 8}
    }
    assert parse_report({}, NOW).wire() == {}


def progress_of(*reports: dict[str, Any]) -> Progress:
    state = Progress()
    for i, body in enumerate(reports):
        state = fold(state, parse_report({"trainerStatus": body}, NOW), NOW + timedelta(seconds=10 * i))
    return state


def test_final_is_100_percent_on_success_unchanged_on_failure_and_nothing_without_reports():
    halfway = progress_of({"step": 5, "totalSteps": 10, "metrics": [{"name": "loss", "value": "0.5"}]})
    done = final(halfway, True, NOW)
    assert (done.percent, done.step, done.total, done.eta_seconds, done.metrics) == (100, 10, 10, 0, (("loss", "0.5"),))
    assert done.reports == halfway.reports
    failed = final(halfway, False, NOW)
    assert (failed.percent, failed.step, failed.metrics) == (50, 5, (("loss", "0.5"),))
    assert final(Progress(), True, NOW) == Progress()
    metrics_only = final(progress_of({"metrics": [{"name": "acc", "value": "0.9"}]}), True, NOW)
    assert final_progress(metrics_only) == "100% · acc=0.9"


def test_live_progress_shows_percent_eta_and_the_first_three_metrics_cut_short():
    metrics = [{"name": n, "value": v} for n, v in [("loss", "0.31"), ("acc", "0.9"), ("lr", "1e-4"), ("gn", "2")]]
    moving = progress_of({"step": 10, "totalSteps": 100}, {"step": 40, "totalSteps": 100, "metrics": metrics})
    assert live_progress(moving) == "40% ETA 20s loss=0.31 acc=0.9 lr=1e-4"  # 30 steps in 10 s, 60 to go
    long = progress_of({"step": 7, "metrics": [{"name": "a_rather_long_metric_name", "value": "x\ny" * 5}]})
    assert live_progress(long) == "step 7 a_rather_long_metric_na…"
    assert live_progress(progress_of({"metrics": [{"name": "v", "value": "x\x1b[2Jy"}]})) == "v=x?[2Jy"
    assert live_progress(Progress()) == ""


def test_final_progress_lists_every_metric():
    state = progress_of({"step": 3, "totalSteps": 4, "metrics": [{"name": f"m{i}", "value": str(i)} for i in range(5)]})
    assert final_progress(state) == "75% (step 3/4) · m0=0 · m1=1 · m2=2 · m3=3 · m4=4"
    assert final_progress(progress_of({"step": 3})) == "step 3"
    assert final_progress(Progress()) == ""


def test_status_line_gains_progress_only_once_the_job_reports():
    counts = Counts(running=2, succeeded=0, failed=0, restarts=0, backoff_limit=6, elapsed=4.25)
    plain = " running 2 · succeeded 0 · failed 0 · restarts 0/6 · 4.2s"
    assert status_text(counts).plain == plain
    assert status_text(Counts(2, 0, 0, 0, 6, 4.25, progress=Progress())).plain == plain
    reported = progress_of(
        {"progressPercentage": 42, "estimatedRemainingSeconds": 190, "metrics": [{"name": "loss", "value": "0.31"}]}
    )
    assert status_text(Counts(2, 0, 0, 0, 6, 4.25, progress=reported)).plain == plain + " · 42% ETA 3m10s loss=0.31"


def test_the_supervisor_feeds_the_status_line_from_the_endpoint(tmp_path):
    job = MLJob.model_validate(
        yaml.safe_load(write_job(tmp_path, {"Lead": (1, "Never", container(["true"]))}).read_text())
    )
    launches = {Replica("Lead", 0): Launch(Replica("Lead", 0), ("true",), {}, {}, tmp_path)}
    reported = progress_of({"step": 1, "totalSteps": 4})
    supervisor = Supervisor(job, Tiny(), launches, Display(io.StringIO(), live=False), progress=lambda: reported)
    assert supervisor.counts().progress == reported
