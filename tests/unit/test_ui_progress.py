"""The UI's training progress: the bar, the metric curves drawn on the server, the latest metrics, from a status.

Statuses are built the way the operator builds them (:mod:`mljob.core.progress`'s ``fold`` and ``to_status``) where
the shape matters, so a change of the producer's shape shows up here; plain dicts where a status is malformed.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mljob.core import progress as core
from mljob.ui import server, view

T0 = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
HOSTILE = '</title><script>alert("x")</script>&\''
SVG = "{http://www.w3.org/2000/svg}"


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job(status: dict[str, Any] | None = None, name: str = "j") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "team", "creationTimestamp": ts(0)},
        "spec": {"framework": "pytorch", "replicaSpecs": {"Master": {"replicas": 1}}},
        "status": {"phase": "Running", **(status or {})},
    }


def reported(*reports: dict[str, Any], every: float = 10) -> dict[str, Any]:
    """The status fields the operator writes after these reports, one every ``every`` seconds."""
    state = core.Progress()
    for i, body in enumerate(reports):
        now = T0 + timedelta(seconds=every * (i + 1))
        state = core.fold(state, core.parse_report({"trainerStatus": body}, now), now)
    return state.to_status()


def chart(points: list[tuple[int, float]], name: str = "loss") -> str:
    """A chart with a 100 x 100 plotting area whose top left corner is at (48, 8)."""
    return str(view.metric_chart(view.Curve(name, tuple(points)), width=156, height=126))


def polyline(svg: str) -> list[str]:
    found = re.search(r'<polyline[^>]* points="([^"]*)"', svg)
    assert found is not None, svg
    return found.group(1).split()


def labels(svg: str) -> dict[str, str]:
    return dict(re.findall(r'class="tick ([\w-]+)">([^<]*)<', svg))


def render_job(body: dict[str, Any]) -> str:
    row = view.job_row(body, [], T0 + timedelta(seconds=70))
    context: dict[str, Any] = {
        "scope": "team", "errors": {}, "synced": True, "base": "../../", "key": ("team", row.name), "job": body,
        "row": row, "replicas": [], "conditions": [], "events": [], "events_error": "", "logs": [], "more_pods": 0,
    }  # fmt: skip
    return server.templates().get_template("_job.html").render(**context)


def render_jobs(*bodies: dict[str, Any]) -> str:
    rows = view.job_rows({view.key_of(b): b for b in bodies}, [], T0 + timedelta(seconds=70))
    return (
        server.templates()
        .get_template("_jobs.html")
        .render(scope="team", errors={}, synced=True, base="./", rows=rows, only=None, counts=[], plot="", since=T0)
    )


# --- what the status says ------------------------------------------------------------------------------------


def test_a_job_that_never_reported_has_no_progress_no_bar_and_no_section():
    quiet = job()
    assert view.progress_of(quiet["status"], T0) is None
    assert view.progress_of(None, T0) is None
    # What the operator's models write for a job without reports: empty display strings, no history.
    assert view.progress_of({"phase": "Running", "progress": "", "eta": "", "metricHistory": []}, T0) is None
    assert view.job_row(quiet, [], T0).progress is None
    page = render_job(quiet)
    assert "<h2>Progress</h2>" not in page
    assert 'id="progress"' not in page
    assert "<svg" not in page
    listed = render_jobs(quiet)
    assert re.search(r'<td class="progress"></td>', listed), listed
    assert 'class="bar"' not in listed


def test_the_operators_status_reads_back_as_percent_step_eta_age_and_metrics():
    status = reported(
        {"step": 100, "totalSteps": 1000, "metrics": [{"name": "loss", "value": "0.9"}]},
        {"step": 420, "totalSteps": 1000, "metrics": [{"name": "loss", "value": "0.5"}, {"name": "acc", "value": "a"}]},
    )
    shown = view.progress_of(status, T0 + timedelta(seconds=70))
    assert shown is not None
    assert (shown.label, shown.percent, shown.steps, shown.width) == ("42%", 42, "420/1000", "42%")
    assert shown.eta == status["eta"] != ""  # the operator's own string, not recomputed
    assert (shown.updated, shown.reported) == (T0 + timedelta(seconds=20), "50s")
    assert shown.metrics == (("loss", "0.5"), ("acc", "a"))
    assert [(c.name, c.points) for c in shown.curves] == [("loss", ((100, 0.9), (420, 0.5)))]  # acc is no number


@pytest.mark.parametrize(("percent", "width"), [(0, "0%"), (42, "42%"), (100, "100%")])
def test_the_bar_is_as_wide_as_the_percentage(percent: int, width: str):
    status = reported({"progressPercentage": percent})
    shown = view.progress_of(status, T0)
    assert shown is not None
    assert (shown.width, shown.label) == (width, f"{percent}%")
    page = render_job(job(status))
    assert f'aria-valuenow="{percent}"><span class="fill" style="width: {width}">' in page
    assert f'<span class="progress-label">{percent}%</span>' in page
    assert f'style="width: {width}"' in render_jobs(job(status))


def test_a_step_without_a_total_shows_the_step_and_no_bar():
    status = reported({"step": 420})
    shown = view.progress_of(status, T0)
    assert shown is not None
    assert (shown.label, shown.width, shown.steps, shown.percent) == ("step 420", None, "420", None)
    page = render_job(job(status))
    assert 'class="bar"' not in page
    assert '<span class="progress-label">step 420</span>' in page
    assert '<dd class="steps">420</dd>' in page


def test_a_status_in_trainers_bare_shape_gets_the_display_strings_computed():
    status = {"trainerStatus": {"progressPercentage": 7, "estimatedRemainingSeconds": 190}}
    shown = view.progress_of(status, T0)
    assert shown is not None
    assert (shown.label, shown.eta, shown.reported, shown.metrics, shown.curves) == ("7%", "3m10s", "", (), ())


def test_a_finished_job_keeps_its_bar_full_and_shows_no_eta():
    status = reported({"step": 420, "totalSteps": 1000})
    status.update(core.finished(status, succeeded=True) or {})
    shown = view.progress_of(status, T0)
    assert shown is not None
    assert (shown.label, shown.width, shown.steps, shown.eta) == ("100%", "100%", "1000/1000", "")


def test_a_malformed_status_is_shown_as_far_as_it_makes_sense():
    status = {
        "trainerStatus": {
            "progressPercentage": 420,  # out of range: no bar
            "step": True,
            "totalSteps": "1000",
            "lastUpdatedTime": "2026-12-04T12:00:00",  # no zone
            "metrics": [{"name": "loss"}, "x", {"name": "ok", "value": 1}],
        },
        "progress": 42,
        "metricHistory": [
            {"name": "short", "x": [1, 2, 3], "y": [1.0, 2.0]},  # the longer list's extra points are dropped
            {"name": "bad", "x": [1, "2", 3.5, 4, 5], "y": [1.0, 2.0, 3.0, True, math.inf]},
            {"name": "none", "x": ["a"], "y": ["b"]},
            {"x": [1], "y": [1]},
            "not a curve",
        ],
    }
    shown = view.progress_of(status, T0)
    assert shown is not None
    assert (shown.label, shown.percent, shown.width, shown.step, shown.total) == ("", None, None, None, None)
    assert (shown.updated, shown.reported) == (None, "")
    assert shown.metrics == (("ok", "1"),)
    assert [(c.name, c.points) for c in shown.curves] == [("short", ((1, 1.0), (2, 2.0))), ("bad", ((1, 1.0),))]
    assert "<svg" in render_job(job(status))


# --- the curves ----------------------------------------------------------------------------------------------


def test_the_loss_curve_comes_first_and_at_most_eight_are_kept():
    history = [{"name": f"m{i}", "x": [1], "y": [float(i)]} for i in range(9)]
    history.insert(3, {"name": "loss", "x": [1], "y": [0.5]})
    shown = view.progress_of({"metricHistory": history}, T0)
    assert shown is not None
    assert [c.name for c in shown.curves] == ["loss", "m0", "m1", "m2", "m3", "m4", "m5", "m6"]
    first = view.progress_of({"metricHistory": history[4:]}, T0)
    assert first is not None
    assert first.curves[0].name == "m3"  # no loss: the first curve leads


def test_points_are_scaled_to_the_plotting_area_with_the_value_axis_upwards():
    svg = chart([(100, 2.0), (150, 1.5), (300, 1.0)])
    assert polyline(svg) == ["48.0,8.0", "73.0,58.0", "148.0,108.0"]
    assert labels(svg) == {"y-max": "2", "y-min": "1", "x-first": "100", "x-last": "300"}
    assert re.search(r'<circle class="latest" cx="148.0" cy="108.0"', svg)
    assert 'data-points="3"' in svg
    ET.fromstring(svg)  # well-formed


def test_a_single_point_sits_in_the_middle():
    svg = chart([(7, 0.25)])
    assert polyline(svg) == ["98.0,58.0"]
    assert labels(svg) == {"y-max": "0.25", "y-min": "0.25", "x-first": "7", "x-last": "7"}
    assert re.search(r'<circle class="latest" cx="98.0" cy="58.0"', svg)


def test_a_flat_line_runs_across_the_middle():
    svg = chart([(0, 3.0), (50, 3.0), (100, 3.0)])
    assert polyline(svg) == ["48.0,58.0", "98.0,58.0", "148.0,58.0"]
    assert labels(svg) == {"y-max": "3", "y-min": "3", "x-first": "0", "x-last": "100"}


def test_a_full_history_of_128_points_is_drawn_whole():
    reports = [
        {"step": s, "totalSteps": 1000, "metrics": [{"name": "loss", "value": str(1 / s)}]} for s in range(1, 129)
    ]
    status = reported(*reports, every=1)
    (curve,) = status["metricHistory"]
    assert len(curve["x"]) == core.HISTORY_POINTS  # what the operator keeps
    shown = view.progress_of(status, T0)
    assert shown is not None
    svg = str(view.metric_chart(shown.curves[0], width=156, height=126))
    points = polyline(svg)
    assert len(points) == 128
    assert 'data-points="128"' in svg
    xs = [float(p.split(",")[0]) for p in points]
    ys = [float(p.split(",")[1]) for p in points]
    assert (xs[0], xs[-1], min(ys), max(ys)) == (48.0, 148.0, 8.0, 108.0)
    assert xs == sorted(xs)  # the steps go right
    assert ys == sorted(ys)  # the loss goes down (y grows downwards)
    assert labels(svg)["x-first"] == str(curve["x"][0])
    assert labels(svg)["x-last"] == str(curve["x"][-1])
    assert labels(svg)["y-max"] == f"{max(curve['y']):.4g}"


def test_a_hand_made_history_too_long_to_draw_is_thinned_keeping_the_last_point():
    n = 3 * view.CHART_POINTS + 1
    shown = view.progress_of({"metricHistory": [{"name": "loss", "x": list(range(n)), "y": [1.0] * n}]}, T0)
    assert shown is not None
    (curve,) = shown.curves
    assert len(curve.points) <= view.CHART_POINTS
    assert curve.points[-1][0] == n - 1


def test_a_hostile_metric_name_is_escaped_everywhere():
    metrics = [{"name": HOSTILE, "value": "0.5"}, {"name": "note", "value": "<b>x</b>"}]
    status = reported({"step": 1, "totalSteps": 2, "metrics": metrics})
    shown = view.progress_of(status, T0)
    assert shown is not None
    svg = str(view.metric_chart(shown.curves[0]))
    assert "<script" not in svg
    assert "&lt;/title&gt;&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;&#39;" in svg
    tree = ET.fromstring(svg)  # the name cannot break out of an attribute or element
    assert tree.get("data-metric") == HOSTILE
    assert tree.findtext(f"{SVG}title") == f"{HOSTILE} by step"
    page = render_job(job(status))
    assert "<script" not in page
    assert "<b>" not in page
    assert page.count("&lt;script&gt;") >= 4  # the chart's figure, title, caption and the metrics table


def test_the_job_page_shows_the_bar_every_curve_and_the_latest_metrics():
    status = reported(
        {"step": 10, "totalSteps": 100, "metrics": [{"name": "acc", "value": "0.5"}, {"name": "loss", "value": "2"}]},
        {"step": 20, "totalSteps": 100, "metrics": [{"name": "acc", "value": "0.6"}, {"name": "loss", "value": "1"}]},
    )
    page = render_job(job(status))
    section = page[page.index('<section class="progress"') : page.index("<h2>Replicas")]
    assert re.findall(r'<figure class="chart" data-metric="(\w+)">', section) == ["loss", "acc"]
    assert section.count("<polyline") == 2
    assert '<dd class="steps">20/100</dd>' in section
    assert f'<span class="eta" title="estimated time left">ETA {status["eta"]}</span>' in section
    assert '<dd class="reported">50s ago</dd>' in section
    assert re.findall(r'<tr data-metric="(\w+)"><td>\w+</td><td class="value">([^<]*)</td>', section) == [
        ("acc", "0.6"),
        ("loss", "1"),
    ]
