"""What progress reporting costs the operator: requests per job and CPU, with every job reporting ten times a second.

    python bench/progress.py                          # 20 jobs of 1-2 pods, each reporting 10/s for 60 s
    python bench/progress.py --smoke                  # 3 jobs, 10/s for 5 s: proves the bench works (CI)
    python bench/progress.py --jobs 50 --rate 30 --seconds 30

The real operator runs as a subprocess (``mljob operator --progress-port``) against the local control plane
(controlplane/, `make controlplane`), as in tests/operator/test_e2e_progress.py. kwok plays the pods, so nothing
in them reads the projected token: the bench asks the API server for the token a kubelet would project (a
TokenRequest bound to each job's first pod, for the job's audience) and trusts the CA of the pod's
``mljob.io/progress-ca`` annotation. Then one thread per job plays that pod's training loop: a POST of Trainer's
``TrainJobStatus`` report (the step, the total, a loss) every 1/rate seconds on one HTTPS keep-alive connection,
as a real client does.

Two windows of the same length, on the same operator with the same jobs running: first a baseline where no job
reports, then one where every job does. Requests come from the API server's audit log (the operator's own
identity): status patches by job, TokenReviews, pod GETs, and anything else the reports set off; CPU is the
operator's user + system time from ``/proc/PID/stat``; the latency from a report to the status is measured by a
watch on the MLJobs (the first version whose ``trainerStatus.step`` has reached the report's step). A benchmark,
not a test: it prints numbers and asserts nothing about them; it fails only when the setup does (no report taken,
none ever in a status).
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import json
import math
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the control plane is a package of the repository

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from report import grid  # noqa: E402

from controlplane import ControlPlane  # noqa: E402
from controlplane.audit import AuditLog, Request  # noqa: E402
from controlplane.cluster import free_port  # noqa: E402
from controlplane.waiting import until as wait_for  # noqa: E402
from mljob.core import progress  # noqa: E402
from mljob.core.crd import crd  # noqa: E402
from mljob.operator.progress import RATE, TOKEN_TTL  # noqa: E402

COMMAND = [sys.executable, "-c", "from mljob.cli import main; main()", "operator"]
NAMESPACE = "bench"
USER = "bench-operator"
SECRET = f"{NAMESPACE}/mljob-progress-cert"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def job(name: str, pods: int) -> dict[str, object]:
    """A PyTorch job of ``pods`` pods (a Master, and a Worker when 2) that kwok runs until the bench stops."""
    template = {
        "metadata": {"annotations": {"kwok.mljob.io/runs": "forever"}},
        "spec": {"containers": [{"name": "pytorch", "image": "busybox:1.36"}]},
    }
    roles: dict[str, Any] = {"Master": {"replicas": 1, "template": template}}
    if pods > 1:
        roles["Worker"] = {"replicas": pods - 1, "template": template}
    return {
        "apiVersion": "mljob.io/v1alpha1",
        "kind": "MLJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"framework": "pytorch", "replicaSpecs": roles},
    }


# --- the operator process ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system seconds of a process, every thread (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` (now) and ``VmHWM`` (peak) of a process, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024 / 1e6
    return found


def scrape(port: int) -> dict[str, float]:
    """From the operator's /metrics (prometheus_client's own parser): the progress endpoint's answers by code and
    its patches, and the reconcile passes (count and seconds, every result)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mljob_progress_patches_total":
                found["patches"] = sample.value
            elif sample.name == "mljob_progress_reports_total":
                found[sample.labels["code"]] = sample.value
            elif sample.name in ("mljob_reconcile_duration_seconds_count", "mljob_reconcile_duration_seconds_sum"):
                key = "passes" if sample.name.endswith("_count") else "pass_seconds"
                found[key] = found.get(key, 0.0) + sample.value
    return found


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# --- the reporters ----------------------------------------------------------------------------------------------


@dataclass
class Reporter:
    """One job's training loop: ``count`` reports, one every ``1 / rate`` s from ``start``, on one connection."""

    job: str
    url: str
    token: str
    context: ssl.SSLContext
    rate: float
    count: int
    sent: list[tuple[int, float, int]] = field(default_factory=list)
    """(step, when it was sent, the answer's code; 0 for no answer)."""
    round_trips: list[float] = field(default_factory=list)
    connections: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def run(self, start: float) -> None:
        parts = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPSConnection(parts.hostname or "127.0.0.1", parts.port, context=self.context, timeout=10)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        try:
            for step in range(1, self.count + 1):
                delay = start + (step - 1) / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # on schedule; a late report goes at once, so the rate is kept on average
                loss = 2.5 * math.exp(-3 * step / self.count) + 0.05
                body = {
                    "trainerStatus": {
                        "step": step,
                        "totalSteps": self.count,
                        "metrics": [{"name": "loss", "value": f"{loss:.5f}"}],
                    }
                }
                data = json.dumps(body).encode()
                if conn.sock is None:
                    self.connections += 1  # http.client connects (TLS handshake included) on the next request
                sent = time.monotonic()
                try:
                    conn.request("POST", parts.path, data, headers)
                    response = conn.getresponse()
                    response.read()
                    code = response.status
                except (OSError, http.client.HTTPException) as error:
                    self.errors[type(error).__name__] += 1
                    conn.close()
                    code = 0
                self.round_trips.append(time.monotonic() - sent)
                self.sent.append((step, sent, code))
        finally:
            conn.close()

    @property
    def codes(self) -> Counter[int]:
        return Counter(code for _, _, code in self.sent)

    @property
    def last_accepted(self) -> int:
        return max((step for step, _, code in self.sent if code == 200), default=0)


class StatusWatch:
    """Each job's ``status.trainerStatus.step`` as it changed, and when (monotonic), from a watch on the MLJobs."""

    def __init__(self, custom: Any) -> None:
        self.custom = custom
        self.steps: dict[str, list[tuple[float, int]]] = {}
        self.phases: dict[str, str] = {}
        self.versions: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        watch: Any = importlib.import_module("kubernetes.watch")  # untyped: Any, as the bodies are

        version = ""
        while not self.stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self.custom.list_namespaced_custom_object, "mljob.io", "v1alpha1", NAMESPACE, "mljobs",
                    resource_version=version or None, timeout_seconds=5,
                )  # fmt: skip
                for event in stream:
                    now, obj = time.monotonic(), event["raw_object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "DELETED":
                        self.listen(obj, now)
            except Exception:
                time.sleep(0.1)

    def listen(self, obj: dict[str, Any], now: float) -> None:
        name, status = obj["metadata"]["name"], obj.get("status") or {}
        self.versions[name] += 1
        self.phases[name] = str(status.get("phase") or "")
        step = (status.get("trainerStatus") or {}).get("step")
        seen = self.steps.setdefault(name, [])
        if isinstance(step, int) and (not seen or step > seen[-1][1]):
            seen.append((now, step))

    def step(self, name: str) -> int:
        seen = self.steps.get(name)
        return seen[-1][1] if seen else 0

    def latencies(self, reporter: Reporter) -> list[float]:
        """Per accepted report, from its send to the first status that showed its step (or a later one)."""
        seen = self.steps.get(reporter.job, [])
        steps = [s for _, s in seen]
        out = []
        for step, sent, code in reporter.sent:
            i = bisect_left(steps, step)
            if code == 200 and i < len(seen):
                out.append(seen[i][0] - sent)
        return out


def token_for(core: Any, pod: dict[str, Any], job_name: str) -> str:
    """The token the kubelet would project into ``pod``: bound to it, for ``job_name``'s audience, for an hour."""
    from kubernetes import client

    account = pod["spec"].get("serviceAccountName") or "default"
    try:  # the controller-manager makes it too: whichever comes first
        core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": account}})
    except client.ApiException as error:
        if error.status != 409:
            raise
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[progress.audience(NAMESPACE, job_name)],
            expiration_seconds=progress.TOKEN_SECONDS,
            bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=pod["metadata"]["name"], uid=pod["metadata"]["uid"]
            ),
        )
    )
    return str(core.create_namespaced_service_account_token(account, NAMESPACE, request).status.token)


# --- the tables -------------------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def by_key(requests: Sequence[Request]) -> Counter[str]:
    """Requests by "verb resource", watches and discovery aside (the operator's standing cost)."""
    return Counter(" ".join(r.key) for r in requests if r.verb != "watch" and r.resource)


@dataclass
class Window:
    """One measured window: its length, the operator's CPU in it and the requests it sent."""

    seconds: float
    user: float
    system: float
    requests: list[Request]

    @classmethod
    def since(cls, started: float, cpu: tuple[float, float], now: tuple[float, float]) -> Window:
        return cls(time.monotonic() - started, now[0] - cpu[0], now[1] - cpu[1], [])

    @property
    def cpu(self) -> float:
        return self.user + self.system

    @property
    def share(self) -> float:
        return self.cpu / self.seconds if self.seconds else float("nan")


def bench(args: argparse.Namespace) -> None:
    kubernetes: Any = importlib.import_module("kubernetes")  # its models' types are not what the bench passes

    tmp = Path(tempfile.mkdtemp(prefix="mljob-bench-progress-"))
    names = [f"p-{i}" for i in range(args.jobs)]
    pods = {name: 1 + i % 2 for i, name in enumerate(names)}
    load_before = os.getloadavg()
    with ControlPlane(tmp / "controlplane") as cp:
        cp.start()
        api = kubernetes.config.new_client_from_config(str(cp.kubeconfig))
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        ext = kubernetes.client.ApiextensionsV1Api(api)
        ext.create_custom_resource_definition(crd())
        wait_for(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition("mljobs.mljob.io").status.conditions or ()
            ),
            60,
            "the CRD",
        )
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        audit = AuditLog(cp.audit_log)
        env = {**os.environ, "KUBECONFIG": str(cp.user_kubeconfig(USER, ("system:masters",)))}
        port, metrics_port = free_port(), free_port()
        watch = StatusWatch(custom)
        watch.thread.start()
        with open(tmp / "operator.log", "wb") as log:
            proc = subprocess.Popen(
                [*COMMAND, "--namespace", NAMESPACE, "--standalone", "--progress-port", str(port),
                 "--webhook-secret", SECRET, "--metrics-port", str(metrics_port)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for(
                lambda: len({r.resource for r in audit.requests(user=USER) if r.verb == "watch"}) >= 3, 60, "watches"
            )
            wait_for(lambda: listening(port), 30, "the progress endpoint")
            for name in names:
                body = job(name, pods[name])
                custom.create_namespaced_custom_object("mljob.io", "v1alpha1", NAMESPACE, "mljobs", body)
            wait_for(lambda: all(watch.phases.get(n) == "Running" for n in names), 300, "every job to run")

            reporters = []
            for name in names:
                pod = api.sanitize_for_serialization(core.read_namespaced_pod(f"{name}-master-0", NAMESPACE))
                context = ssl.create_default_context(cadata=pod["metadata"]["annotations"][progress.CA_ANNOTATION])
                wired = pod["spec"]["containers"][0]["env"]  # the URL the pod is given, as Trainer's SDK reads it
                url = next(e["value"] for e in wired if e["name"] == progress.ENV_URL)
                count = max(1, round(args.rate * args.seconds))
                reporters.append(Reporter(name, url, token_for(core, pod, name), context, args.rate, count))
            time.sleep(2.0)  # the jobs' last status writes and their echoes settle

            # The baseline: the same jobs running, nobody reporting.
            mark, cpu, started = audit.mark(), cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.seconds)
            baseline = Window.since(started, cpu, cpu_seconds(proc.pid))
            baseline.requests = audit.requests(mark, user=USER)
            rss_before = memory_mb(proc.pid)["VmRSS"]

            # Every job reporting: the threads start together, each job's first report a little after the last's.
            scraped = scrape(metrics_port)
            versions = Counter(watch.versions)
            mark, cpu = audit.mark(), cpu_seconds(proc.pid)
            start = time.monotonic() + 0.1
            threads = [
                threading.Thread(target=r.run, args=(start + i / (args.jobs * args.rate),), daemon=True)
                for i, r in enumerate(reporters)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            window = Window.since(start, cpu, cpu_seconds(proc.pid))
            ended = time.monotonic()
            # The last reports are written within an interval: wait for every status to show its job's last.
            try:
                wait_for(
                    lambda: all(watch.step(r.job) >= r.last_accepted for r in reporters),
                    progress.INTERVAL + 10,
                    "the last reports in the statuses",
                )
            except TimeoutError as error:
                print(f"warning: {error}", file=sys.stderr)
            settled = time.monotonic() - ended
            time.sleep(0.5)  # anything the last patches set off
            window.requests = audit.requests(mark, user=USER)
            after = scrape(metrics_port)
            versions = watch.versions - versions
            memory = memory_mb(proc.pid)
        except BaseException:
            print(f"the operator's log: {tmp / 'operator.log'}", file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait()
            watch.stopping.set()

    accepted = sum(r.codes[200] for r in reporters)
    shown = sum(1 for r in reporters if watch.step(r.job))
    print_tables(args, names, pods, reporters, watch, versions, baseline, window, settled, scraped, after,
                 rss_before, memory, load_before)  # fmt: skip
    if not accepted:
        sys.exit(f"no report was accepted: the setup is broken (the operator's log: {tmp / 'operator.log'})")
    if not shown:
        sys.exit(f"no report ever reached a job's status (the operator's log: {tmp / 'operator.log'})")
    shutil.rmtree(tmp, ignore_errors=True)


def print_tables(
    args: argparse.Namespace,
    names: list[str],
    pods: dict[str, int],
    reporters: list[Reporter],
    watch: StatusWatch,
    versions: Counter[str],
    baseline: Window,
    window: Window,
    settled: float,
    scraped: dict[str, float],
    after: dict[str, float],
    rss_before: float,
    memory: dict[str, float],
    load_before: tuple[float, float, float],
) -> None:
    jobs = len(names)
    requests = window.requests
    patches = Counter(r.name for r in requests if r.key == ("patch", "mljobs/status"))
    pod_gets = Counter(r.name.rsplit("-", 2)[0] for r in requests if r.key == ("get", "pods"))
    reviews = sum(1 for r in requests if r.key == ("create", "tokenreviews"))
    latencies = {r.job: watch.latencies(r) for r in reporters}
    every_latency = [x for xs in latencies.values() for x in xs]
    round_trips = [x for r in reporters for x in r.round_trips]
    codes: Counter[int] = sum((r.codes for r in reporters), Counter())
    sent = sum(len(r.sent) for r in reporters)
    accepted = codes[200]
    errors: Counter[str] = sum((r.errors for r in reporters), Counter())

    load = " ".join(f"{x:.2f}" for x in load_before)
    print(
        f"progress benchmark on the local control plane: {jobs} jobs of 1-2 pods, each reporting {args.rate:g}/s "
        f"for {args.seconds:g} s over one HTTPS keep-alive connection (the endpoint takes {RATE:g}/s a job, a "
        f"status patch per job per {progress.INTERVAL:g} s, a token reviewed once per {TOKEN_TTL:g} s); "
        f"{os.cpu_count()} CPUs, load average {load} before"
    )
    print()
    rows = [["job", "pods", "sent", "200", "refused", "patches", "reports/patch", "pod GETs", "connections",
             "-> status p50 (ms)", "-> status p95 (ms)"]]  # fmt: skip
    for r in reporters:
        refused = len(r.sent) - r.codes[200]
        rows.append(
            [
                r.job,
                str(pods[r.job]),
                str(len(r.sent)),
                str(r.codes[200]),
                str(refused),
                str(patches[r.job]),
                f"{r.codes[200] / patches[r.job]:.1f}" if patches[r.job] else "-",
                str(pod_gets[r.job]),
                str(r.connections),
                f"{pct(latencies[r.job], 0.5) * 1000:.0f}",
                f"{pct(latencies[r.job], 0.95) * 1000:.0f}",
            ]
        )
    print(grid(rows))
    print()

    def delta(key: str) -> float:
        return after.get(key, 0.0) - scraped.get(key, 0.0)

    cost = window.cpu - baseline.cpu
    refusals = ", ".join(f"{code or 'no answer'} x {n}" for code, n in sorted(codes.items()) if code != 200) or "none"
    total_patches = sum(patches.values())
    other = by_key(requests)
    for key in ("patch mljobs/status", "create tokenreviews", "get pods"):
        other.pop(key, None)
    rows = [
        ["figure", "value"],
        ["reports sent / answered 200", f"{sent:,} / {accepted:,}"],
        ["  refused or failed (by code)", refusals + (f"; errors {dict(errors)}" if errors else "")],
        ["  reports/s per job, achieved", f"{sent / jobs / window.seconds:.2f}"],
        ["  round trip p50 / p95 / max (ms)",
         f"{pct(round_trips, 0.5) * 1000:.1f} / {pct(round_trips, 0.95) * 1000:.1f} / {max(round_trips) * 1000:.1f}"],
        ["  TLS connections per job", f"{sum(r.connections for r in reporters) / jobs:.1f}"],
        ["the operator's answers (its metrics)",
         ", ".join(f"{k} x {delta(k):.0f}" for k in sorted(after) if k.isdigit() and delta(k))],
        ["status patches (audit log) / per job", f"{total_patches} / {total_patches / jobs:.1f}"],
        ["  per job per minute", f"{total_patches / jobs / window.seconds * 60:.1f}"],
        ["  mljob_progress_patches_total", f"{delta('patches'):.0f}"],
        ["  reports per patch", f"{accepted / total_patches:.1f}" if total_patches else "-"],
        ["new versions of each job (as watched)", f"{sum(versions[n] for n in names) / jobs:.1f}"],
        ["reconcile passes per job (each version's echo)",
         f"{delta('passes') / jobs:.1f} ({delta('pass_seconds') / max(delta('passes'), 1) * 1000:.1f} ms each)"],
        ["TokenReviews / per job", f"{reviews} / {reviews / jobs:.1f}"],
        ["pod GETs / per job", f"{sum(pod_gets.values())} / {sum(pod_gets.values()) / jobs:.1f}"],
        ["other operator requests", ", ".join(f"{k} {n}" for k, n in other.most_common()) or "0"],
        ["API requests per job, all (watches aside)", f"{sum(by_key(requests).values()) / jobs:.1f}"],
        ["report -> status p50 / p95 / max (ms)",
         f"{pct(every_latency, 0.5) * 1000:.0f} / {pct(every_latency, 0.95) * 1000:.0f} / "
         f"{max(every_latency, default=float('nan')) * 1000:.0f}"],
        ["  last report -> every status shows it (s)", f"{settled:.2f}"],
        [f"operator CPU, baseline {baseline.seconds:.0f} s, nobody reporting (s)",
         f"{baseline.cpu:.2f} ({baseline.share:.1%} of a core)"],
        [f"operator CPU, {window.seconds:.0f} s of reports (s)", f"{window.cpu:.2f} ({window.share:.1%} of a core)"],
        ["  user / system (s)", f"{window.user:.2f} / {window.system:.2f}"],
        ["  the reports' cost (s)", f"{cost:.2f} ({cost / window.seconds:.1%} of a core)"],
        ["  per report (ms)", f"{cost / max(sent, 1) * 1000:.2f}"],
        ["  per job reporting (% of a core)", f"{cost / window.seconds / jobs:.2%}"],
        ["operator RSS before / after the reports (MB)", f"{rss_before:.0f} / {memory['VmRSS']:.0f}"],
        ["operator peak RSS (MB)", f"{memory['VmHWM']:.0f}"],
        [f"baseline requests in {baseline.seconds:.0f} s (watches aside)",
         ", ".join(f"{k} {n}" for k, n in by_key(baseline.requests).most_common()) or "0"],
    ]  # fmt: skip
    print(grid(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10.0, help="reports a second each job sends")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long they report (and the baseline's length)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run for CI: 3 jobs, 10/s for 5 s")
    args = parser.parse_args(argv)
    if args.smoke:
        args.jobs, args.rate, args.seconds = 3, 10.0, 5.0
    bench(args)


if __name__ == "__main__":
    main()
