"""``mljob.progress``, the training script's helper (issue 26), without the network: ``_post`` is replaced and
the bodies it would send are checked, against the endpoint's own parser too. The clock is injected."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from mljob import progress
from mljob.core.progress import parse_report

ROOT = Path(__file__).resolve().parents[2]
URL = "https://mljob-operator.mljob-system.svc:9445/apis/mljob.io/v1alpha1/namespaces/ns/mljobs/job/status"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(progress, "datetime", SimpleNamespace(now=lambda tz: T0.astimezone(tz)))
    monkeypatch.setattr(progress, "_last_sent", -math.inf)
    return clock


@pytest.fixture
def sent(monkeypatch, clock):
    """The bodies the helper posts, to ``URL``; every post is taken."""
    bodies: list[dict[str, object]] = []

    def post(url, body):
        assert url == URL
        bodies.append(body)
        return True

    monkeypatch.setattr(progress, "_post", post)
    monkeypatch.setenv(progress.ENV_URL, URL)
    return bodies


def trainer(bodies):
    """The trainerStatus of the one body sent."""
    (body,) = bodies
    return body["trainerStatus"]


@pytest.mark.parametrize("url", [None, ""])
def test_outside_a_job_nothing_is_sent(monkeypatch, clock, url):
    calls = []
    monkeypatch.setattr(progress, "_post", lambda *args: calls.append(args) or True)
    if url is None:
        monkeypatch.delenv(progress.ENV_URL, raising=False)
    else:
        monkeypatch.setenv(progress.ENV_URL, url)
    assert progress.enabled() is False
    assert progress.report(1, 10, loss=0.5) is False
    assert progress.report(10, 10) is False
    assert progress.send(percent=100) is False
    assert calls == []


def test_a_report_is_trainers_body_with_mljobs_steps(sent):
    assert progress.enabled() is True
    assert progress.report(10, 100, loss=0.5, epoch=2, phase="warmup") is True
    assert sent == [
        {
            "trainerStatus": {
                "lastUpdatedTime": "2026-03-01T12:00:00Z",
                "step": 10,
                "totalSteps": 100,
                "metrics": [
                    {"name": "loss", "value": "0.5"},
                    {"name": "epoch", "value": "2"},
                    {"name": "phase", "value": "warmup"},
                ],
            }
        }
    ]
    report = parse_report(sent[0], T0)
    assert (report.step, report.total, report.time) == (10, 100, T0)


def test_the_answer_of_the_post_is_returned(monkeypatch, clock):
    monkeypatch.setenv(progress.ENV_URL, URL)
    monkeypatch.setattr(progress, "_post", lambda url, body: False)
    assert progress.report(1, 10) is False


def test_percent_and_eta_are_sent_within_trainers_bounds(sent):
    progress.report(percent=150, eta=-5, every=0)
    progress.report(percent=-3, eta=12.7, every=0)
    assert [b["trainerStatus"]["progressPercentage"] for b in sent] == [100, 0]
    assert [b["trainerStatus"]["estimatedRemainingSeconds"] for b in sent] == [0, 12]
    for body in sent:
        parse_report(body, T0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "soon", object()])
def test_a_number_that_is_no_integer_is_left_out_and_never_raises(sent, bad):
    assert progress.report(5, 10, percent=bad, eta=bad) is True
    assert progress.report(bad, bad, every=0) is True
    first, second = (b["trainerStatus"] for b in sent)
    assert (first["step"], first["totalSteps"]) == (5, 10)
    assert set(first) == {"lastUpdatedTime", "step", "totalSteps"}
    assert set(second) == {"lastUpdatedTime"}


def test_metrics_with_names_that_are_no_identifiers(sent):
    progress.send(3, 10, metrics={"val/loss": 0.25, "eval-acc": 1})
    assert trainer(sent)["metrics"] == [{"name": "val/loss", "value": "0.25"}, {"name": "eval-acc", "value": "1"}]


# throttling


def test_calls_within_every_seconds_are_skipped(sent, clock):
    results = []
    for now in (1000.0, 1000.5, 1000.99, 1001.0, 1001.5, 1003.0):
        clock.now = now
        results.append(progress.report(int(now), 10_000, every=1.0))
    assert results == [True, False, False, True, False, True]
    assert [b["trainerStatus"]["step"] for b in sent] == [1000, 1001, 1003]


def test_a_skipped_call_does_not_restart_the_interval(sent, clock):
    progress.report(1, 100, every=2.0)
    clock.now += 1.9
    assert progress.report(2, 100, every=2.0) is False
    clock.now += 0.1
    assert progress.report(3, 100, every=2.0) is True


def test_the_last_step_and_100_percent_are_always_sent(sent, clock):
    assert progress.report(1, 10, every=60) is True
    clock.now += 0.01
    assert progress.report(2, 10, every=60) is False
    assert progress.report(10, 10, every=60) is True
    assert progress.report(11, 10, every=60) is True  # past the end: still final
    assert progress.report(percent=100, every=60) is True
    assert progress.report(percent=100.0, every=60) is True
    assert progress.report(percent=99, every=60) is False
    assert [b["trainerStatus"].get("step") for b in sent] == [1, 10, 11, None, None]


def test_every_zero_sends_every_call(sent):
    assert all(progress.report(i, 10, every=0) for i in range(5))
    assert len(sent) == 5


# metric values


class Float32:
    """A number that is not a float (numpy's float32); ``str()`` of it is what it holds."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return repr(self.value)


class Tensor:
    """A one-element tensor: ``float()`` works, its ``str()`` is long."""

    def __float__(self) -> float:
        return 0.3125

    def __str__(self) -> str:
        return "tensor(0.3125, device='cuda:0', grad_fn=<NllLossBackward0>)" * 2


def test_non_finite_metrics_are_dropped(sent):
    progress.report(
        1, 10, loss=math.nan, acc=math.inf, low=-math.inf, f32=Float32(math.nan), ok=0.5, word="nan-free", every=0
    )
    progress.report(2, 10, loss=math.nan, every=0)
    first, second = (b["trainerStatus"] for b in sent)
    assert first["metrics"] == [{"name": "ok", "value": "0.5"}, {"name": "word", "value": "nan-free"}]
    assert "metrics" not in second
    for body in sent:
        parse_report(body, T0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0421, "0.0421"),
        (1 / 3, "0.333333"),
        (0.1 + 0.2, "0.3"),
        (1e-7, "1e-07"),
        (123456789.0, "1.23457e+08"),
        (2.0, "2"),
        (7, "7"),
        (10**12, "1000000000000"),
        (True, "True"),
        ("0.123456789", "0.123456789"),
        (Float32(0.10000000149011612), "0.1"),
        (Tensor(), "0.3125"),
    ],
)
def test_floats_are_shortened(sent, value, text):
    progress.report(1, 10, m=value)
    assert trainer(sent)["metrics"] == [{"name": "m", "value": text}]


def test_metrics_the_endpoint_would_refuse_are_left_out(sent):
    metrics = {"": 1, "n" * 65: 1, "long": "v" * 65, "empty": "", **{f"m{i}": i for i in range(300)}}
    progress.send(1, 10, metrics=metrics)
    values = trainer(sent)["metrics"]
    assert len(values) == 256
    assert values[0] == {"name": "m0", "value": "0"}
    parse_report(sent[0], T0)


# the import


def test_importing_the_helper_needs_only_the_standard_library():
    code = (
        "import sys\n"
        "import mljob.progress\n"
        "from mljob import progress\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pluggy', 'kopf', 'kubernetes'))\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
