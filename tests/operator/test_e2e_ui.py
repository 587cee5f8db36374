"""`mljob ui` in headless Chromium (Debian's, driven by Playwright) against the local control plane.

The UI runs as a person starts it (`mljob ui --port 0`, the cluster from KUBECONFIG) beside the session's shared
operator. Screenshots of every page land in test-artifacts/ui/ (kept by CI, and the README's picture). A job's
training progress is written into its status subresource as the operator's progress endpoint writes it
(:mod:`mljob.core.progress`), so the page's bar and curves are tested on the object shape the API server keeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import E2EJob, Forever, Kube, Role, Run
from playwright.sync_api import Browser, expect, sync_playwright
from test_e2e_deployment import DEPLOY, kubectl

from mljob.core import progress

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
WAIT_MS = 90_000  # generous: a loaded 2-core machine runs the operator, the control plane and the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Module-scoped on purpose: while Playwright's sync API is open its event loop counts as running in the main
    thread, so every later asyncio test (pytest-asyncio, asyncio.run) would fail with "cannot be called from a
    running event loop"."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "no chromium on PATH: `make test` installs Debian's (apt-get install chromium)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium)
        yield launched
        launched.close()


@contextlib.contextmanager
def running_ui(kubeconfig: Path, log: Path, kube: Kube) -> Iterator[str]:
    """`mljob ui --port 0` as a person starts it, every namespace; its URL once it listens."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "from mljob.cli import main; main()", "ui", "--port", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip

    def url() -> str | None:
        assert process.poll() is None, f"mljob ui exited {process.returncode}: {log.read_text()}"
        found = re.search(r"serving (http://\S+)", log.read_text())
        return found.group(1) if found else None

    try:
        found = kube.wait(url, what="mljob ui listening")

        def synced() -> bool:
            return bool(json.loads(fetch(f"{found}healthz"))["synced"] == ["mljobs", "pods"])

        kube.wait(synced, what="mljob ui to have listed MLJobs and pods")  # before that, a page may say 404
        yield found
    finally:
        process.terminate()
        process.wait(20)


@pytest.fixture
def ui(e2e: Any, backend: Kube, tmp_path: Path) -> Iterator[str]:
    with running_ui(e2e.kubeconfig, tmp_path / "ui.log", backend) as url:
        yield url


def job_row(page: Any, namespace: str, name: str) -> Any:
    return page.locator(f'tr.job[data-namespace="{namespace}"][data-name="{name}"]')


HOSTILE = "<img src=x onerror=alert(1)>"
"""A metric name is the user's: the page must show it as text."""


def report_progress(kube: Kube, name: str, *reports: dict[str, Any]) -> dict[str, Any]:
    """Patch the job's status subresource with what the operator's progress endpoint writes after ``reports`` (one
    a second, the last one now), and check that the API server kept all of it (it prunes what the CRD lacks)."""
    state = progress.Progress()
    now = datetime.now(UTC)
    for i, body in enumerate(reports):
        at = now - timedelta(seconds=len(reports) - 1 - i)
        state = progress.fold(state, progress.parse_report({"trainerStatus": body}, at), at)
    fields = state.to_status()
    kube.custom.patch_namespaced_custom_object_status(
        "mljob.io", "v1alpha1", kube.namespace, "mljobs", name, {"status": fields}
    )
    kept = kube.status(name)
    assert {k: kept.get(k) for k in fields} == fields, f"the API server pruned some of {fields}: {kept}"
    return fields


def test_the_list_shows_jobs_and_a_jobs_page_follows_its_phase_live(e2e: Any, backend: Kube, ui: str, browser: Browser):
    ns = backend.namespace
    other = f"{ns[:56]}-other"
    backend.create_namespace(other)
    try:
        backend.submit(E2EJob("endless", "pytorch", {"Master": Role(1, (Forever(),)), "Worker": Role(2, (Forever(),))}))
        backend.submit(E2EJob("quick", "pytorch", {"Master": Role(1, (Run(0, 0.5),))}))
        backend.other(other).submit(E2EJob("elsewhere", "tensorflow", {"Worker": Role(1, (Forever(),))}))
        page = browser.new_page(viewport={"width": 1280, "height": 900})

        page.goto(ui)
        expect(page.locator("body")).to_have_attribute("data-live", "on", timeout=WAIT_MS)
        expect(job_row(page, ns, "endless").locator(".phase")).to_have_text("Running", timeout=WAIT_MS)
        expect(job_row(page, ns, "endless").locator(".ready")).to_have_text("3/3", timeout=WAIT_MS)
        expect(job_row(page, ns, "quick").locator(".phase")).to_have_text("Succeeded", timeout=WAIT_MS)
        expect(job_row(page, other, "elsewhere")).to_be_visible()  # every namespace
        expect(page.locator('svg.phase-plot path[data-phase="Succeeded"]')).to_have_count(1)
        expect(page.locator('svg.phase-plot path[data-phase="Running"]')).to_have_count(1)
        page.screenshot(path=ARTIFACTS / "jobs.png", full_page=True)

        page.goto(f"{ui}?namespace={other}")  # one namespace, from a link in the table
        expect(job_row(page, other, "elsewhere")).to_be_visible()
        expect(job_row(page, ns, "endless")).to_have_count(0)

        # kwok serves these two replicas' logs through the API server (ControlPlane.give_log); worker-1 has none.
        e2e.control_plane.give_log(ns, "endless-master-0", "step 1 loss 0.93", "step 2 loss 0.71")
        e2e.control_plane.give_log(ns, "endless-worker-0", "worker 0 ready")
        page.goto(ui)
        job_row(page, ns, "endless").locator("td.name a").click()
        expect(page.locator("#phase")).to_have_text("Running", timeout=WAIT_MS)
        replicas = page.locator("table.replicas tbody tr")
        expect(replicas).to_have_count(3)
        expect(page.locator('tr[data-replica="master-0"] td.node')).to_have_text(re.compile(r"kwok-node-\d"))
        expect(page.locator('table.conditions tr[data-type="Running"]')).to_contain_text("True")
        expect(page.locator("table.events")).to_contain_text("Scheduled")
        expect(page.locator("section.log")).to_have_count(3)  # a tail, or why there is none, per replica
        master_log = page.locator('section.log[data-replica="master-0"] pre')
        expect(master_log).to_have_text("step 1 loss 0.93\nstep 2 loss 0.71")
        expect(page.locator('section.log[data-replica="worker-0"] pre')).to_have_text("worker 0 ready")
        expect(page.locator('section.log[data-replica="worker-1"] .notice')).to_contain_text("no log: ")
        expect(page.locator("#progress")).to_have_count(0)  # no report yet: no progress section

        # Training reports come in: the open page shows the bar, the curves and the latest metrics, live.
        page.evaluate("window.notReloaded = true")
        steps = range(10, 430, 10)
        fields = report_progress(
            backend, "endless",
            *({"step": s, "totalSteps": 1000, "metrics": [{"name": "accuracy", "value": f"{s / 1000:.3f}"},
                                                         {"name": "loss", "value": f"{100 / (s + 50):.4f}"},
                                                         {"name": HOSTILE, "value": "1"}]} for s in steps),
        )  # fmt: skip
        bar = page.locator("#progress .bar")
        expect(bar.locator(".fill")).to_have_attribute("style", "width: 42%", timeout=WAIT_MS)
        expect(bar).to_have_attribute("aria-valuenow", "42")
        expect(page.locator("#progress .progress-label")).to_have_text("42%")
        expect(page.locator("#progress .steps")).to_have_text("420/1000")
        if fields["eta"]:
            expect(page.locator("#progress .eta")).to_have_text(f"ETA {fields['eta']}")
        expect(page.locator("#progress .reported")).to_contain_text(" ago")
        charts = page.locator("#progress figure.chart")
        expect(charts).to_have_count(3)
        expect(charts.first).to_have_attribute("data-metric", "loss")  # the loss curve leads
        loss = page.locator('#progress svg.metric-chart[data-metric="loss"]')
        expect(loss).to_have_attribute("data-points", str(len(steps)))
        points = loss.locator("polyline").get_attribute("points")
        assert points is not None
        assert len(points.split()) == len(steps)
        expect(loss.locator(".x-first")).to_have_text("10")
        expect(loss.locator(".x-last")).to_have_text("420")
        expect(loss.locator(".y-max")).to_have_text(f"{100 / 60:.4g}")
        expect(page.locator('table.metrics tr[data-metric="loss"] td.value')).to_have_text(f"{100 / 470:.4f}")
        hostile = page.locator("table.metrics tbody tr").filter(has_text=HOSTILE)
        expect(hostile).to_have_count(1)  # shown as text ...
        expect(page.locator("#progress img")).to_have_count(0)  # ... never as markup
        assert page.evaluate("window.notReloaded") is True, "the progress came in place, without a reload"
        page.screenshot(path=ARTIFACTS / "job-running.png", full_page=True)

        page.evaluate("window.notReloaded = true")
        backend.exit("endless-master-0", 0)  # the master finishes: the job succeeds, and the open page shows it
        expect(page.locator("#phase")).to_have_text("Succeeded", timeout=WAIT_MS)
        expect(page.locator('table.conditions tr[data-type="Succeeded"]')).to_contain_text("True")
        # The operator ends a finished job's progress: a full bar, the last step, no time left; the curves stay.
        expect(page.locator("#progress .bar .fill")).to_have_attribute("style", "width: 100%", timeout=WAIT_MS)
        expect(page.locator("#progress .steps")).to_have_text("1000/1000")
        expect(page.locator("#progress .eta")).to_have_count(0)
        expect(page.locator('#progress svg.metric-chart[data-metric="loss"]')).to_have_attribute(
            "data-points", str(len(steps))
        )
        assert page.evaluate("window.notReloaded") is True, "the page was updated in place, not reloaded"
        page.screenshot(path=ARTIFACTS / "job-succeeded.png", full_page=True)

        page.goto(ui)  # the list: a compact bar for the job that reported, an empty cell for the one that did not
        expect(job_row(page, ns, "endless").locator("td.progress .progress-label")).to_have_text("100%")
        expect(job_row(page, ns, "endless").locator("td.progress .bar .fill")).to_have_attribute("style", "width: 100%")
        expect(job_row(page, ns, "quick").locator("td.progress")).to_have_text("")
        page.screenshot(path=ARTIFACTS / "jobs-progress.png", full_page=True)

        missing = page.goto(f"{ui}jobs/{ns}/nope")
        assert missing is not None
        assert missing.status == 404
        expect(page.locator(".notice.error")).to_contain_text(f"mljob nope not found in namespace {ns}")
        page.screenshot(path=ARTIFACTS / "job-missing.png", full_page=True)
        page.close()
    finally:
        backend.delete_namespace(other)


def test_the_ui_only_reads(ui: str):
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        request = urllib.request.Request(ui, method=method, data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 405, method
    with urllib.request.urlopen(f"{ui}healthz", timeout=30) as health:
        assert health.status == 200


def test_deploy_ui_installs_a_ui_that_can_read_everything_it_shows_and_write_nothing(e2e, backend: Kube, tmp_path):
    """`kubectl apply -k deploy/ui`, then the UI as that ServiceAccount: every request it makes is allowed."""
    if e2e.control_plane is None:
        pytest.skip("applies deploy/ui cluster-wide: only on the local control plane")
    admin = e2e.kubeconfig
    kubectl(admin, "create", "namespace", "mljob-system", check=False)  # deploy/ makes it; this test needs only it
    applied = kubectl(admin, "apply", "-k", str(DEPLOY / "ui"))
    for kind in ("serviceaccount/mljob-ui", "clusterrole.rbac.authorization.k8s.io/mljob-ui",
                 "deployment.apps/mljob-ui", "service/mljob-ui"):  # fmt: skip
        assert kind in applied.stdout, applied.stdout
    try:
        token = kubectl(admin, "-n", "mljob-system", "create", "token", "mljob-ui", "--duration=1h").stdout.strip()
        user = "system:serviceaccount:mljob-system:mljob-ui"
        sa = e2e.control_plane.token_kubeconfig(token, user, tmp_path / "ui.kubeconfig")
        for verb, what, allowed in (
            ("watch", "mljobs.mljob.io", "yes"), ("get", "pods/log", "yes"), ("list", "events", "yes"),
            ("delete", "mljobs.mljob.io", "no"), ("patch", "mljobs.mljob.io", "no"), ("create", "pods", "no"),
            ("get", "secrets", "no"),
        ):  # fmt: skip
            said = kubectl(sa, "auth", "can-i", verb, what, "-A", check=False).stdout.strip()
            assert said == allowed, (verb, what, said)

        backend.submit(E2EJob("seen", "pytorch", {"Master": Role(1, (Forever(),))}))
        backend.wait_phase("seen", "Running")
        mark = e2e.audit.mark()
        with running_ui(sa, tmp_path / "ui.log", backend) as url:
            page = fetch(f"{url}jobs/{backend.namespace}/seen")
            assert 'id="phase">Running<' in page, page
            assert "master-0" in page
            health = json.loads(fetch(f"{url}healthz"))
            assert health == {"synced": ["mljobs", "pods"], "errors": {}}
        mine = e2e.audit.requests(mark, user=user)
        assert {r.key for r in mine} >= {("list", "mljobs"), ("watch", "mljobs"), ("watch", "pods"), ("list", "events")}
        assert [r for r in mine if r.code == 403] == []
        assert {r.verb for r in mine} <= {"get", "list", "watch"}
    finally:
        kubectl(admin, "delete", "-k", str(DEPLOY / "ui"), "--wait=false", check=False)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def test_the_ui_stays_live_when_its_watches_are_cut(world, browser: Browser, tmp_path):
    """Through the fault proxy: every watch stream is cut while a job's page is open; the UI resumes its watches
    and the page still follows the job to Succeeded."""
    w = world(proxy={})
    kube = w.kube
    kube.submit(E2EJob("cut", "pytorch", {"Master": Role(1, (Forever(),))}))
    with running_ui(w.tmp / "proxy.kubeconfig", tmp_path / "ui.log", kube) as url:
        page = browser.new_page()
        page.goto(f"{url}jobs/{kube.namespace}/cut")
        expect(page.locator("#phase")).to_have_text("Running", timeout=WAIT_MS)
        cut = w.proxy.stats.cut
        w.proxy.cut_watches()
        kube.wait(lambda: w.proxy.stats.cut >= cut + 2, what="the UI's two watches (and the operator's) cut")
        kube.exit("cut-master-0", 0)
        expect(page.locator("#phase")).to_have_text("Succeeded", timeout=WAIT_MS)
        page.close()
