"""The pure progress core (issue 26): Trainer's TrainJobStatus reports checked, folded, written and read back.

No clock and no I/O: every time is injected (``T0`` plus seconds).
"""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mljob.api import MLJobStatus
from mljob.core.progress import (
    CA_ANNOTATION,
    CA_FILE,
    ENV_CA_CERT,
    ENV_TOKEN,
    ENV_URL,
    HISTORY_METRICS,
    HISTORY_POINTS,
    MAX_BODY,
    MAX_ETA,
    MOUNT_PATH,
    TOKEN_FILE,
    TOKEN_SECONDS,
    VOLUME,
    Coalescer,
    Curve,
    Endpoint,
    Progress,
    Report,
    ReportError,
    audience,
    duration,
    finished,
    fold,
    from_status,
    parse_report,
    path,
    pod_wiring,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
ENDPOINT = Endpoint(url="https://mljob-operator.mljob-system.svc:9445/", ca_pem=PEM)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def status(**fields: object) -> dict[str, object]:
    return {"trainerStatus": fields}


def run(*reports: tuple[float, dict[str, object]], state: Progress | None = None) -> Progress:
    """Fold ``(seconds after T0, trainerStatus fields)`` in order, each parsed as the endpoint parses it."""
    state = state or Progress()
    for seconds, fields in reports:
        state = fold(state, parse_report(status(**fields), at(seconds)), at(seconds))
    return state


def metric(name: str, value: str) -> dict[str, str]:
    return {"name": name, "value": value}


# parse_report: what is taken


def test_the_kubeflow_sdk_report_parses_as_sent():
    """kubeflow 0.5.0's update_trainjob_status: isoformat() with microseconds and +00:00, metrics as str(v)."""
    sent_at = T0.replace(microsecond=123456)
    body = {
        "trainerStatus": {
            "lastUpdatedTime": sent_at.isoformat(),
            "progressPercentage": 42,
            "estimatedRemainingSeconds": 10,
            "metrics": [{"name": "loss", "value": "0.3"}],
        }
    }
    assert body["trainerStatus"]["lastUpdatedTime"] == "2026-03-01T12:00:00.123456+00:00"
    report = parse_report(json.dumps(body).encode(), T0)
    assert report == Report(percent=42, eta_seconds=10, metrics=(("loss", "0.3"),), time=sent_at)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T12:00:00Z", T0),  # Kubernetes' own, and mljob's helper's
        ("2026-03-01T12:00:00.5Z", T0.replace(microsecond=500000)),
        ("2026-03-01T12:00:00.123456789Z", T0.replace(microsecond=123456)),  # Go's RFC3339Nano
        ("2026-03-01T13:00:00+01:00", T0),
        (datetime(2026, 3, 1, 7, tzinfo=timezone(timedelta(hours=-5))).isoformat(), T0),
    ],
)
def test_times_in_every_rfc3339_shape_are_taken(text, expected):
    assert parse_report(status(lastUpdatedTime=text), T0).time == expected


def test_mljobs_step_fields_and_numbers_as_metric_values():
    report = parse_report(
        status(step=420, totalSteps=1000.0, metrics=[metric("phase", "warmup"), {"name": "lr", "value": 0.5}]), T0
    )
    assert (report.step, report.total) == (420, 1000)
    assert report.metrics == (("phase", "warmup"), ("lr", "0.5"))


def test_a_name_sent_twice_keeps_the_last_value():
    report = parse_report(status(metrics=[metric("loss", "1"), metric("acc", "0.5"), metric("loss", "2")]), T0)
    assert report.metrics == (("loss", "2"), ("acc", "0.5"))


@pytest.mark.parametrize(
    "body", [b"{}", "{}", {}, {"trainerStatus": None}, {"somethingElse": 1}, {"trainerStatus": {}}]
)
def test_a_report_without_trainer_status_is_empty(body):
    report = parse_report(body, T0)
    assert report == Report()
    assert report.empty


def test_a_time_just_within_the_slack_is_taken():
    assert parse_report(status(lastUpdatedTime="2026-03-01T12:09:59Z"), T0).time == at(599)


def test_a_body_of_exactly_the_limit_is_taken():
    head = b'{"trainerStatus": {"step": 1}, "pad": "'
    body = head + b"x" * (MAX_BODY - len(head) - 2) + b'"}'
    assert len(body) == MAX_BODY
    assert parse_report(body, T0).step == 1


# parse_report: what is refused, with the field path


def many_metrics(count: int) -> list[dict[str, str]]:
    return [metric(f"m{i}", "1") for i in range(count)]


REFUSED = {
    "percent above 100": (status(progressPercentage=101), "trainerStatus.progressPercentage"),
    "percent below 0": (status(progressPercentage=-1), "trainerStatus.progressPercentage"),
    "percent a string": (status(progressPercentage="x"), "trainerStatus.progressPercentage"),
    "percent a bool": (status(progressPercentage=True), "trainerStatus.progressPercentage"),
    "percent NaN": (status(progressPercentage=float("nan")), "trainerStatus.progressPercentage"),
    "percent a fraction": (status(progressPercentage=42.5), "trainerStatus.progressPercentage"),
    "percent NaN on the wire": (b'{"trainerStatus": {"progressPercentage": NaN}}', "trainerStatus.progressPercentage"),
    "eta negative": (status(estimatedRemainingSeconds=-1), "trainerStatus.estimatedRemainingSeconds"),
    "eta above int32": (status(estimatedRemainingSeconds=2**31), "trainerStatus.estimatedRemainingSeconds"),
    "eta infinite on the wire": (
        b'{"trainerStatus": {"estimatedRemainingSeconds": 1e999}}',
        "trainerStatus.estimatedRemainingSeconds",
    ),
    "257 metrics": (status(metrics=many_metrics(257)), "trainerStatus.metrics"),
    "metrics not a list": (status(metrics={"loss": "1"}), "trainerStatus.metrics"),
    "a metric not an object": (status(metrics=["loss"]), "trainerStatus.metrics[0]"),
    "empty name": (status(metrics=[metric("", "1")]), "trainerStatus.metrics[0].name"),
    "65-character name": (status(metrics=[metric("n" * 65, "1")]), "trainerStatus.metrics[0].name"),
    "name not a string": (status(metrics=[{"name": 5, "value": "1"}]), "trainerStatus.metrics[0].name"),
    "empty value": (status(metrics=[metric("ok", "1"), metric("loss", "")]), "trainerStatus.metrics[1].value"),
    "65-character value": (status(metrics=[metric("loss", "v" * 65)]), "trainerStatus.metrics[0].value"),
    "value missing": (status(metrics=[{"name": "loss"}]), "trainerStatus.metrics[0].value"),
    "value a bool": (status(metrics=[{"name": "loss", "value": True}]), "trainerStatus.metrics[0].value"),
    "value a list": (status(metrics=[{"name": "loss", "value": [1]}]), "trainerStatus.metrics[0].value"),
    "value nan": (status(metrics=[metric("loss", "nan")]), "trainerStatus.metrics[0].value"),
    "value NaN": (status(metrics=[metric("loss", "NaN")]), "trainerStatus.metrics[0].value"),
    "value inf": (status(metrics=[metric("loss", "inf")]), "trainerStatus.metrics[0].value"),
    "value -Infinity": (status(metrics=[metric("loss", "-Infinity")]), "trainerStatus.metrics[0].value"),
    "value +Infinity": (status(metrics=[metric("loss", "+Infinity")]), "trainerStatus.metrics[0].value"),
    "value -nan": (status(metrics=[metric("loss", "-nan")]), "trainerStatus.metrics[0].value"),
    "value overflowing": (status(metrics=[metric("loss", "1e999")]), "trainerStatus.metrics[0].value"),
    "value a float inf": (status(metrics=[{"name": "loss", "value": float("inf")}]), "trainerStatus.metrics[0].value"),
    "step above totalSteps": (status(step=11, totalSteps=10), "trainerStatus.step"),
    "step negative": (status(step=-1), "trainerStatus.step"),
    "step beyond 2**53": (status(step=2**53 + 1), "trainerStatus.step"),
    "totalSteps 0": (status(totalSteps=0), "trainerStatus.totalSteps"),
    "time unparseable": (status(lastUpdatedTime="yesterday"), "trainerStatus.lastUpdatedTime"),
    "time naive": (status(lastUpdatedTime="2026-03-01T12:00:00"), "trainerStatus.lastUpdatedTime"),
    "time a date": (status(lastUpdatedTime="2026-03-01"), "trainerStatus.lastUpdatedTime"),
    "time a number": (status(lastUpdatedTime=1772366400), "trainerStatus.lastUpdatedTime"),
    "time far in the future": (status(lastUpdatedTime="2026-03-01T12:10:01Z"), "trainerStatus.lastUpdatedTime"),
    "trainerStatus not an object": ({"trainerStatus": [1]}, "trainerStatus"),
    "not JSON": (b'{"trainerStatus": ', ""),
    "not UTF-8": (b"\xff\xfe", ""),
    "a JSON list": (b"[]", ""),
    "a JSON number": ("42", ""),
    "a list": ([{"trainerStatus": {}}], ""),
    "over 64 KiB": (b"{" + b" " * MAX_BODY + b"}", ""),
    "over 64 KiB in UTF-8, under in characters": ('{"x": "' + "é" * 40000 + '"}', ""),
}


@pytest.mark.parametrize(("body", "field_path"), REFUSED.values(), ids=REFUSED.keys())
def test_a_report_that_is_refused_names_its_field(body, field_path):
    with pytest.raises(ReportError) as refused:
        parse_report(body, T0)
    assert refused.value.field_path == field_path
    assert str(refused.value).startswith(f"{field_path}: " if field_path else refused.value.message)


def test_256_metrics_are_taken():
    assert len(parse_report(status(metrics=many_metrics(256)), T0).metrics) == 256


# fold


def test_the_percentage_is_worked_out_from_step_and_total():
    state = run((0, {"step": 25, "totalSteps": 200}))
    assert (state.percent, state.step, state.total, state.display()) == (12, 25, 200, "12%")


def test_the_reports_own_percentage_and_eta_win():
    state = run(
        (0, {"step": 10, "totalSteps": 100}),
        (10, {"step": 20, "progressPercentage": 50, "estimatedRemainingSeconds": 7}),
    )
    assert (state.percent, state.eta_seconds) == (50, 7)


def test_the_eta_is_the_rate_since_the_first_report_applied_to_what_is_left():
    first = run((0, {"step": 10, "totalSteps": 100}))
    assert first.eta_seconds is None  # no rate yet
    state = run((10, {"step": 20}), state=first)
    assert (state.percent, state.eta_seconds, state.display()) == (20, 80, "20%")
    state = run((30, {"step": 40}), state=state)
    assert state.eta_seconds == 60  # 30 steps in 30 s since the anchor, 60 left


def test_the_eta_of_a_percentage_only_report_as_the_sdk_sends():
    state = run((0, {"progressPercentage": 10}), (100, {"progressPercentage": 20}))
    assert state.eta_seconds == 800


def test_the_rate_is_measured_by_the_operators_clock_not_the_reports():
    state = run(
        (0, {"step": 10, "totalSteps": 100, "lastUpdatedTime": "2026-03-01T11:00:00Z"}),
        (10, {"step": 20, "lastUpdatedTime": "2026-03-01T11:00:01Z"}),
    )
    assert state.eta_seconds == 80
    assert state.updated == datetime(2026, 3, 1, 11, 0, 1, tzinfo=UTC)


def test_updated_is_the_operators_time_when_the_report_gives_none():
    assert run((5, {"step": 1})).updated == at(5)


def test_training_that_goes_backwards_measures_the_rate_from_there():
    state = run((0, {"step": 10, "totalSteps": 100}), (40, {"step": 50}))
    assert state.eta_seconds == 50
    state = run((50, {"step": 20}), state=state)  # resumed from an earlier checkpoint
    assert state.anchor == (at(50), 20.0)
    assert (state.percent, state.eta_seconds) == (20, None)
    state = run((60, {"step": 30}), state=state)
    assert state.eta_seconds == 70  # 10 steps in 10 s since the restart, not since T0


def test_at_100_percent_nothing_is_left():
    assert run((0, {"step": 10, "totalSteps": 10})).eta_seconds == 0
    assert run((0, {"progressPercentage": 100, "estimatedRemainingSeconds": 30})).eta_seconds == 0


def test_a_metrics_only_report_keeps_the_percentage():
    sdk = run((0, {"progressPercentage": 40}), (10, {"metrics": [metric("loss", "0.5")]}))
    assert (sdk.percent, sdk.display()) == (40, "40%")
    steps = run((0, {"step": 40, "totalSteps": 100}), (10, {"metrics": [metric("loss", "0.5")]}))
    assert (steps.percent, steps.step, steps.total) == (40, 40, 100)


def test_an_empty_report_changes_nothing():
    state = run((0, {"step": 1, "totalSteps": 2}))
    assert fold(state, Report(), at(99)) is state


def test_a_step_past_an_earlier_total_leaves_the_total_unknown():
    state = run((0, {"step": 5, "totalSteps": 10}), (10, {"step": 12}))
    assert (state.step, state.total, state.percent, state.display()) == (12, None, None, "step 12")


def test_metrics_keep_the_latest_value_of_each_name_in_first_seen_order():
    state = run(
        (0, {"metrics": [metric("loss", "1.0"), metric("phase", "warmup")]}),
        (1, {"metrics": [metric("acc", "0.1"), metric("loss", "0.8")]}),
        (2, {"metrics": [metric("loss", "0.6")]}),
    )
    assert state.metrics == (("loss", "0.6"), ("phase", "warmup"), ("acc", "0.1"))


def test_a_curve_is_kept_for_each_numeric_metric_by_step():
    state = run(
        (0, {"step": 1, "totalSteps": 9, "metrics": [metric("loss", "1.0"), metric("phase", "warmup")]}),
        (1, {"step": 2, "metrics": [metric("loss", "0.5"), metric("phase", "train")]}),
        (2, {"metrics": [metric("loss", "0.4")]}),  # no step: the latest step's point is replaced
    )
    assert state.curves == (Curve("loss", (1, 2), (1.0, 0.4)),)


def test_a_curve_without_steps_is_by_report():
    state = run(*((i, {"metrics": [metric("loss", str(10 - i))]}) for i in range(3)))
    assert state.curves == (Curve("loss", (1, 2, 3), (10.0, 9.0, 8.0)),)


def test_at_most_eight_curves_the_first_reported():
    names = [f"m{i}" for i in range(HISTORY_METRICS + 2)]
    state = run((0, {"step": 1, "metrics": [metric(n, "1") for n in names]}))
    assert [c.name for c in state.curves] == names[:HISTORY_METRICS]
    assert len(state.metrics) == len(names)


def test_a_thousand_steps_thin_to_at_most_128_points_over_the_whole_run():
    state = Progress()
    for step in range(1, 1001):
        state = fold(state, Report(step=step, total=1000, metrics=(("loss", str(1 / step)),)), at(step))
    (curve,) = state.curves
    gaps = {b - a for a, b in zip(curve.x, curve.x[1:], strict=False)}
    assert HISTORY_POINTS // 2 <= len(curve.x) <= HISTORY_POINTS
    assert curve.x[0] == 1
    assert curve.x[-1] > 1000 - curve.spacing
    assert gaps == {curve.spacing} == {8}  # thinned three times: 1, 2, 4, 8
    assert curve.y == tuple(1 / x for x in curve.x)


def test_the_spacing_doubles_at_each_thinning():
    curve = Curve("loss")
    spacings = []
    for x in range(1, 600):
        curve = curve.add(x, 0.0)
        if not spacings or curve.spacing != spacings[-1]:
            spacings.append(curve.spacing)
    assert spacings == [1, 2, 4, 8]


def test_uneven_steps_still_fill_the_curve():
    """Reports thinned by the helper's ``every`` come some steps apart, unevenly (37, 38, 37...): the curve
    fills and thins as with even steps, rather than the spacing growing at each skipped report."""
    curve, step, gaps = Curve("loss"), 0, random.Random(26)
    for _ in range(2000):
        step += gaps.choice([37, 38])
        curve = curve.add(step, 1.0)
    gaps = [b - a for a, b in zip(curve.x, curve.x[1:], strict=False)]
    assert HISTORY_POINTS // 2 <= len(curve.x) <= HISTORY_POINTS
    assert max(gaps) <= 2 * min(gaps)  # as even over the run as the reports allow, not dense early and sparse late
    assert step - curve.x[-1] <= max(gaps)


def test_a_curve_resumed_from_an_earlier_step_drops_the_points_after_it():
    curve = Curve("loss")
    for x in range(1, 11):
        curve = curve.add(x, float(x))
    curve = curve.add(5, 0.5)
    assert (curve.x, curve.y) == ((1, 2, 3, 4, 5), (1.0, 2.0, 3.0, 4.0, 0.5))


# to_status, display, duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""),
        (0, "0s"),
        (42, "42s"),
        (60, "1m"),
        (190, "3m10s"),
        (3600, "1h"),
        (3720, "1h2m"),
        (86400, "1d"),
        (90000, "1d1h"),
    ],
)
def test_duration_is_kubectls_short_style(seconds, text):
    assert duration(seconds) == text


def test_display():
    assert Progress().display() == ""
    assert Progress(step=420).display() == "step 420"
    assert Progress(step=420, percent=42).display() == "42%"


def sample() -> Progress:
    return run(
        (0, {"step": 10, "totalSteps": 100, "metrics": [metric("loss", "1.5"), metric("phase", "warmup")]}),
        (10, {"step": 20, "metrics": [metric("loss", "1.25")], "lastUpdatedTime": "2026-03-01T12:00:10.5+00:00"}),
    )


def test_to_status_is_trainers_shape_plus_mljobs_fields():
    assert sample().to_status() == {
        "trainerStatus": {
            "progressPercentage": 20,
            "estimatedRemainingSeconds": 80,
            "metrics": [metric("loss", "1.25"), metric("phase", "warmup")],
            "step": 20,
            "totalSteps": 100,
            "lastUpdatedTime": "2026-03-01T12:00:10Z",
        },
        "progress": "20%",
        "eta": "1m20s",
        "metricHistory": [{"name": "loss", "x": [10, 20], "y": [1.5, 1.25]}],
    }


@pytest.mark.parametrize("state", [Progress(), sample(), run((0, {"step": 7})), run((0, {"progressPercentage": 100}))])
def test_the_status_model_takes_what_to_status_writes(state):
    written = state.to_status()
    model = MLJobStatus.model_validate({"phase": "Running", **written})
    back = model.to_dict()
    assert back["trainerStatus"] == {"metrics": [], **written["trainerStatus"]}  # the model writes no metrics as []
    assert back.get("metricHistory", []) == written.get("metricHistory", [])
    assert (model.progress, model.eta) == (written["progress"], written["eta"])


# finished


def test_a_job_that_succeeded_is_at_100_percent_with_nothing_left():
    before = sample().to_status()
    fields = finished(before, succeeded=True)
    assert fields is not None
    assert fields["trainerStatus"] == {
        **before["trainerStatus"],
        "progressPercentage": 100,
        "estimatedRemainingSeconds": 0,
        "step": 100,
    }
    assert (fields["progress"], fields["eta"]) == ("100%", "")
    after = {**before, **fields}
    assert finished(after, succeeded=True) is None  # already ended: nothing to write
    MLJobStatus.model_validate(after)


def test_a_job_that_succeeded_without_a_total_keeps_its_step():
    fields = finished(run((0, {"step": 7})).to_status(), succeeded=True)
    assert fields is not None
    assert fields["trainerStatus"]["step"] == 7
    assert "totalSteps" not in fields["trainerStatus"]


def test_a_job_that_failed_loses_its_eta_and_keeps_its_percentage():
    before = sample().to_status()
    fields = finished(before, succeeded=False)
    assert fields is not None
    assert fields == {
        "trainerStatus": {k: v for k, v in before["trainerStatus"].items() if k != "estimatedRemainingSeconds"},
        "eta": "",
    }
    assert fields["trainerStatus"]["progressPercentage"] == 20
    assert finished({**before, **fields}, succeeded=False) is None


@pytest.mark.parametrize(
    "before", [None, {}, {"phase": "Running"}, {"trainerStatus": {}}, {"trainerStatus": None}, {"trainerStatus": "x"}]
)
@pytest.mark.parametrize("succeeded", [True, False])
def test_a_job_that_never_reported_gets_no_progress_fields(before, succeeded):
    assert finished(before, succeeded) is None


# from_status


def test_from_status_goes_on_from_what_the_status_says():
    state = sample()
    back = from_status(state.to_status(), at(3600))
    assert (back.percent, back.eta_seconds, back.step, back.total) == (20, 80, 20, 100)
    assert back.metrics == state.metrics
    assert back.curves == state.curves
    assert back.updated == datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)  # second precision, as written
    assert back.anchor is None  # the rate starts over
    assert back.to_status() == state.to_status()


def test_from_status_then_fold_measures_a_new_rate():
    back = from_status(sample().to_status(), at(100))
    state = run((100, {"step": 30}), (110, {"step": 40}), state=back)
    assert state.eta_seconds == 60


def test_a_curve_without_steps_goes_on_after_a_restart():
    """Its x is the report's count, which is not in the status: counting again from 1 would drop every point."""
    state = run(*((i, {"metrics": [metric("loss", str(10 - i))]}) for i in range(5)))
    back = from_status(state.to_status(), at(60))
    back = run((60, {"metrics": [metric("loss", "4")]}), state=back)
    assert back.curves == (Curve("loss", (1, 2, 3, 4, 5, 6), (10.0, 9.0, 8.0, 7.0, 6.0, 4.0)),)


def test_a_long_eta_is_capped_so_it_reads_back():
    state = run((0, {"step": 1, "totalSteps": 2**53}), (10**6, {"step": 2}))
    assert state.eta_seconds == MAX_ETA
    assert from_status(state.to_status(), at(10**6)).eta_seconds == MAX_ETA


GARBAGE = {
    "none": None,
    "empty": {},
    "not a mapping": ["trainerStatus"],
    "a string": "status",
    "trainerStatus a string": {"trainerStatus": "x"},
    "trainerStatus a list": {"trainerStatus": [1, 2]},
    "percent out of range": {
        "trainerStatus": {"progressPercentage": 400},
        "metricHistory": [{"name": "l", "x": [1], "y": [1]}],
    },
    "step above total": {"trainerStatus": {"step": 5, "totalSteps": 2}},
    "bad time": {"trainerStatus": {"lastUpdatedTime": "soon"}},
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_from_status_of_garbage_is_empty(garbage):
    assert from_status(garbage, T0) == Progress()


BAD_HISTORY = {
    "a number": 5,
    "a string": "loss",
    "a mapping": {"name": "loss", "x": [1], "y": [1.0]},
    "items not mappings": [1, "x", None],
    "name missing": [{"x": [1], "y": [1.0]}],
    "lengths differ": [{"name": "loss", "x": [1, 2], "y": [1.0]}],
    "x not numbers": [{"name": "loss", "x": ["a"], "y": [1.0]}],
    "y not numbers": [{"name": "loss", "x": [1], "y": [{}]}],
    "y nan": [{"name": "loss", "x": [1], "y": ["nan"]}],
    "x infinite": [{"name": "loss", "x": [1e999], "y": [1.0]}],
    "x a mapping": [{"name": "loss", "x": {"a": 1}, "y": [1.0]}],
}


@pytest.mark.parametrize("history", BAD_HISTORY.values(), ids=BAD_HISTORY.keys())
def test_from_status_leaves_out_a_history_that_does_not_read_back(history):
    back = from_status({"trainerStatus": {"step": 3}, "metricHistory": history}, T0)
    assert (back.step, back.curves) == (3, ())
    json.dumps(back.to_status(), allow_nan=False)


# Coalescer


def test_the_first_report_of_a_job_is_due_at_once():
    coalescer = Coalescer(interval=3.0)
    assert coalescer.next_at() is None
    coalescer.touch("a", 100.0)
    assert coalescer.next_at() == 100.0
    assert coalescer.due(100.0) == ["a"]
    assert coalescer.due(100.0) == []


def test_a_report_within_the_interval_waits_for_it():
    coalescer = Coalescer(interval=3.0)
    coalescer.touch("a", 100.0)
    coalescer.due(100.0)
    coalescer.touch("a", 101.0)
    assert coalescer.next_at() == 103.0
    assert coalescer.due(102.9) == []
    assert coalescer.due(103.0) == ["a"]


def test_a_report_after_the_interval_is_due_at_once():
    coalescer = Coalescer(interval=3.0)
    coalescer.touch("a", 100.0)
    coalescer.due(100.0)
    coalescer.touch("a", 110.0)
    assert coalescer.due(110.0) == ["a"]


def test_many_reports_cost_one_write():
    coalescer = Coalescer(interval=3.0)
    coalescer.touch("a", 100.0)
    coalescer.due(100.0)
    for i in range(50):
        coalescer.touch("a", 100.0 + i / 20)
    assert coalescer.due(102.0) == []
    assert coalescer.due(104.0) == ["a"]
    assert coalescer.due(200.0) == []


def test_jobs_are_coalesced_apart():
    coalescer = Coalescer(interval=3.0)
    coalescer.touch("a", 100.0)
    coalescer.due(100.0)
    coalescer.touch("a", 101.0)
    coalescer.touch("b", 101.0)
    assert coalescer.due(101.0) == ["b"]
    assert coalescer.due(103.0) == ["a"]


def test_a_forgotten_job_is_not_written_and_starts_over():
    coalescer = Coalescer(interval=3.0)
    coalescer.touch("a", 100.0)
    coalescer.due(100.0)
    coalescer.touch("a", 101.0)
    coalescer.forget("a")
    assert coalescer.next_at() is None
    assert coalescer.due(200.0) == []
    coalescer.touch("a", 101.5)
    assert coalescer.due(101.5) == ["a"]  # no interval kept from before
    coalescer.forget("never seen")


# pod_wiring


def a_pod():
    return {
        "metadata": {"name": "job-worker-0", "annotations": {"keep": "me"}},
        "spec": {
            "containers": [
                {
                    "name": "trainer",
                    "env": [{"name": "A", "value": "1"}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                },
                {"name": "sidecar", "env": [{"name": ENV_URL, "value": "http://mine"}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


def env_of(container):
    return {e["name"]: e.get("value") for e in container["env"]}


URL = "https://mljob-operator.mljob-system.svc:9445/apis/mljob.io/v1alpha1/namespaces/team-a/mljobs/bert/status"


def test_every_container_gets_trainers_env_and_keeps_its_own_values():
    pod = a_pod()
    pod_wiring(pod, ENDPOINT, "team-a", "bert")
    trainer, sidecar = pod["spec"]["containers"]
    wiring = {ENV_URL: URL, ENV_CA_CERT: f"{MOUNT_PATH}/{CA_FILE}", ENV_TOKEN: f"{MOUNT_PATH}/{TOKEN_FILE}"}
    assert env_of(trainer) == {"A": "1", **wiring}
    assert env_of(sidecar) == {**wiring, ENV_URL: "http://mine"}
    assert [e["name"] for e in sidecar["env"]].count(ENV_URL) == 1
    assert trainer["volumeMounts"] == [
        {"name": "data", "mountPath": "/data"},
        {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True},
    ]
    assert sidecar["volumeMounts"] == [{"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}]


def test_the_volume_holds_a_token_for_this_job_and_the_ca_from_the_annotation():
    pod = a_pod()
    pod_wiring(pod, ENDPOINT, "team-a", "bert")
    assert pod["metadata"]["annotations"] == {"keep": "me", CA_ANNOTATION: PEM}
    volumes = pod["spec"]["volumes"]
    assert [v["name"] for v in volumes] == ["data", VOLUME]
    token, ca = volumes[1]["projected"]["sources"]
    assert token == {
        "serviceAccountToken": {
            "audience": audience("team-a", "bert"),
            "expirationSeconds": TOKEN_SECONDS,
            "path": TOKEN_FILE,
        }
    }
    assert ca == {
        "downwardAPI": {
            "items": [{"path": CA_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{CA_ANNOTATION}']"}}]
        }
    }


def test_the_audience_is_one_jobs():
    assert audience("team-a", "bert") == "mljob.io/v1alpha1/namespaces/team-a/mljobs/bert/status"
    assert path("team-a", "bert") == "/apis/" + audience("team-a", "bert")
    assert len({audience("a", "b"), audience("b", "a"), audience("a", "c")}) == 3


def test_wiring_twice_is_wiring_once():
    pod = a_pod()
    pod_wiring(pod, ENDPOINT, "team-a", "bert")
    once = copy.deepcopy(pod)
    pod_wiring(pod, ENDPOINT, "team-a", "bert")
    assert pod == once


def test_a_template_written_for_trainer_keeps_its_volume_and_mount():
    own_volume = {"name": VOLUME, "secret": {"secretName": "mine"}}
    pod = {
        "spec": {
            "containers": [{"name": "t", "volumeMounts": [{"name": "other", "mountPath": MOUNT_PATH}]}],
            "volumes": [own_volume],
        }
    }
    pod_wiring(pod, ENDPOINT, "team-a", "bert")
    assert pod["spec"]["volumes"] == [own_volume]
    assert pod["spec"]["containers"][0]["volumeMounts"] == [{"name": "other", "mountPath": MOUNT_PATH}]


def test_nulls_in_a_template_are_wired_as_empty():
    pod = {
        "metadata": {"annotations": None},
        "spec": {"containers": [{"name": "t", "env": None, "volumeMounts": None}], "volumes": None},
    }
    pod_wiring(pod, ENDPOINT, "team-a", "bert")
    assert pod["metadata"]["annotations"] == {CA_ANNOTATION: PEM}
    assert [v["name"] for v in pod["spec"]["volumes"]] == [VOLUME]
    container = pod["spec"]["containers"][0]
    assert set(env_of(container)) == {ENV_URL, ENV_CA_CERT, ENV_TOKEN}
    assert container["volumeMounts"] == [{"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}]


def test_a_bare_pod_is_given_metadata_and_a_volume():
    pod = {}
    pod_wiring(pod, Endpoint(url="https://x:1", ca_pem=PEM), "ns", "j")
    assert pod["metadata"] == {"annotations": {CA_ANNOTATION: PEM}}
    assert [v["name"] for v in pod["spec"]["volumes"]] == [VOLUME]
