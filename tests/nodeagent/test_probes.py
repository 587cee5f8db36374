"""Probes and lifecycle hooks: the pure timing rules, one container run's loops with a fake prober, and pods on a
real agent (exec/httpGet/tcpSocket probes, the Ready condition and the EndpointSlice that follows it, liveness and
startup kills, postStart and preStop), in both network modes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from agentkit import MARK, TIMEOUT, AgentProcess, Env, processes, start_agent, status_of

from controlplane import ControlPlane
from controlplane.waiting import until
from mljob.nodeagent.handlers import HandlerContext, Outcome, host_sockets
from mljob.nodeagent.podstatus import ContainerRecord, PodFacts, Running, container_status, pod_status
from mljob.nodeagent.prober import ContainerRun
from mljob.nodeagent.probes import (
    Probe,
    ProbeError,
    ProbeState,
    grace_after_pre_stop,
    http_request,
    kill_grace,
    kill_message,
    next_probe,
    probe_command,
    probes_of,
)

# --- the pure rules ------------------------------------------------------------------------------------------


def test_a_probe_gets_the_api_defaults():
    probe = Probe.parse("liveness", {"exec": {"command": ["true"]}})
    assert (probe.action, probe.initial_delay, probe.period, probe.timeout) == ("exec", 0.0, 10.0, 1.0)
    assert (probe.success_threshold, probe.failure_threshold, probe.termination_grace) == (1, 3, None)
    assert probe.label == "Liveness"
    container = {"readinessProbe": {"grpc": {"port": 9}}, "startupProbe": {"tcpSocket": {"port": 1}}}
    assert [p.kind for p in probes_of(container)] == ["startup"]  # gRPC is not run


def test_readiness_needs_its_thresholds_in_a_row():
    state = ProbeState(Probe("readiness", "exec", {}, success_threshold=2, failure_threshold=2))
    assert state.verdict is False  # not ready until it passed
    assert [state.observe(r) for r in (True, False, True)] == [None, None, None]  # never twice in a row
    assert state.observe(True) is True
    assert [state.observe(r) for r in (False, True, False)] == [None, None, None]
    assert state.observe(False) is False
    assert state.observe(False) is None  # no change: nothing to report
    assert not state.done  # readiness never stops within a run


def test_liveness_fails_after_failure_threshold_and_then_holds():
    state = ProbeState(Probe("liveness", "exec", {}, failure_threshold=3))
    assert state.verdict is True
    assert [state.observe(r) for r in (False, False, True, False, False)] == [None] * 5
    assert state.observe(False) is False
    assert state.done
    assert state.observe(True) is None  # on hold until the next run


def test_startup_decides_once():
    passed = ProbeState(Probe("startup", "exec", {}, failure_threshold=5))
    assert passed.verdict is None
    assert passed.observe(False) is None
    assert passed.observe(True) is True
    assert passed.done
    failed = ProbeState(Probe("startup", "exec", {}, failure_threshold=2))
    assert [failed.observe(False), failed.observe(False)] == [None, False]
    assert failed.done


def test_next_probe_waits_for_the_initial_delay_then_ticks_every_period():
    probe = Probe("readiness", "exec", {}, initial_delay=5, period=2)
    assert [next_probe(probe, t) for t in (0, 4.9, 5, 5.1, 7, 8.5)] == [5, 5, 5, 7, 7, 9]
    assert next_probe(Probe("liveness", "exec", {}, period=1), 0) == 0


def test_kill_grace_and_what_a_pre_stop_leaves():
    probe = Probe("liveness", "exec", {}, termination_grace=3)
    pod: dict[str, Any] = {"metadata": {}, "spec": {"terminationGracePeriodSeconds": 20}}
    assert (kill_grace(pod), kill_grace(pod, probe), kill_grace({"metadata": {}})) == (20, 3, 30)
    deleting = {"metadata": {"deletionGracePeriodSeconds": 7}, "spec": pod["spec"]}
    assert kill_grace(deleting, probe) == 7  # a deletion's grace wins, as the kubelet's
    assert [grace_after_pre_stop(30, 3.9), grace_after_pre_stop(6, 4.2), grace_after_pre_stop(5, 10)] == [27, 2, 2]
    assert kill_message("main", probe, "Always") == "Container main failed liveness probe, will be restarted"
    assert kill_message("main", probe, "Never") == "Container main failed liveness probe"


def test_http_request_as_the_kubelet_builds_it():
    container = {"ports": [{"name": "web", "containerPort": 8080}]}
    action = {"port": "web", "path": "healthz", "httpHeaders": [{"name": "X-Probe", "value": "1"}]}
    request = http_request(action, container, "10.244.128.2", "probe")
    assert request.url == "http://10.244.128.2:8080/healthz"
    assert request.headers == (("X-Probe", "1"), ("User-Agent", "kube-probe/1.37"), ("Accept", "*/*"))
    custom = {"port": 443, "scheme": "HTTPS", "host": "example", "httpHeaders": [{"name": "Accept", "value": ""}]}
    https = http_request(custom, {}, "10.0.0.1", "lifecycle")
    assert (https.url, https.headers) == ("https://example:443/", (("User-Agent", "kube-lifecycle/1.37"),))
    with pytest.raises(ProbeError, match="'db' not found"):
        http_request({"port": "db"}, container, "10.0.0.1", "probe")
    with pytest.raises(ProbeError, match="invalid port"):
        http_request({"port": 70000}, container, "10.0.0.1", "probe")


def test_an_exec_probe_expands_only_literal_env():
    container = {"env": [{"name": "F", "value": "/ready"}, {"name": "IP", "valueFrom": {"fieldRef": {}}}]}
    assert probe_command(["test", "-e", "$(F)", "$(IP)"], container) == ["test", "-e", "/ready", "$(IP)"]


def test_ready_and_started_follow_the_probe_verdicts():
    now = datetime.now(UTC)
    record = ContainerRecord("main", "regular", state=Running(now), started=True)
    record.startup_passed, record.readiness_passed = False, False
    assert (container_status(record)["started"], container_status(record)["ready"]) == (False, False)
    record.startup_passed = True
    assert (container_status(record)["started"], container_status(record)["ready"]) == (True, False)
    pod = {"metadata": {}, "spec": {}, "status": {}}
    facts = PodFacts(host_ip="127.0.0.1", sandbox_ready=True, initialized=True)
    ready = {c["type"]: c for c in pod_status(pod, [record], facts, now)["conditions"]}["Ready"]
    assert (ready["status"], ready["message"]) == ("False", "containers with unready status: [main]")
    record.readiness_passed = True
    ready = {c["type"]: c for c in pod_status(pod, [record], facts, now)["conditions"]}["Ready"]
    assert ready["status"] == "True"


# --- one run's loops, with a fake prober (no process) --------------------------------------------------------


def test_a_container_run_gates_on_startup_reports_readiness_and_kills_on_liveness():
    async def scenario() -> None:
        calls: list[str] = []
        startup_ok = asyncio.Event()

        async def fake_probe(probe: Probe, ctx: HandlerContext) -> Outcome:
            calls.append(probe.kind)
            if probe.kind == "startup":
                return Outcome("success" if startup_ok.is_set() else "failure", "not yet")
            return Outcome("failure" if probe.kind == "liveness" else "success", "dead")

        container = {
            "name": "main",
            "startupProbe": {"exec": {"command": ["x"]}, "failureThreshold": 100},
            "readinessProbe": {"exec": {"command": ["x"]}},
            "livenessProbe": {"exec": {"command": ["x"]}, "failureThreshold": 2},
        }
        record = ContainerRecord("main", "regular", state=Running(datetime.now(UTC)), started=True)
        events: list[tuple[str, str]] = []
        kills: list[str] = []

        async def event(kind: str, reason: str, message: str) -> None:
            events.append((reason, message))

        run = ContainerRun(
            record,
            container,
            HandlerContext(container, "127.0.0.1", host_sockets, None),  # type: ignore[arg-type]
            probed=True,
            changed=lambda: None,
            event=event,
            kill=lambda probe: kills.append(probe.kind),
            stopping=asyncio.Event(),
            run_probe=fake_probe,
            probes=[replace(p, period=0.01) for p in probes_of(container)],
        )
        run.start_probes()
        assert (record.startup_passed, record.readiness_passed) == (False, False)
        await asyncio.sleep(0.1)
        assert set(calls) == {"startup"}  # nothing else before the startup probe passed
        assert ("Unhealthy", "Startup probe failed: not yet") in events
        startup_ok.set()
        await asyncio.wait_for(_until(lambda: bool(kills)), 5)
        assert record.startup_passed is True
        assert record.readiness_passed is True
        assert kills == ["liveness"]
        assert ("Unhealthy", "Liveness probe failed: dead") in events
        await run.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert tasks == []  # nothing of the run is left

    asyncio.run(scenario())


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


# --- pods on a real agent -------------------------------------------------------------------------------------


def sh(script: str, name: str = "main", **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": ["sh", "-c", script], **extra}


SERVE = "sleep 1000 & wait"
FLAG = [{"name": "flag", "mountPath": "/flag"}]


def flag_volume(path: Any) -> list[dict[str, Any]]:
    return [{"name": "flag", "hostPath": {"path": str(path)}}]


def make_pod(
    env: Env,
    name: str,
    *containers: dict[str, Any],
    labels: dict[str, str] | None = None,
    policy: str = "Always",
    mark: str | None = None,
    **spec: Any,
) -> str:
    """As ``env.pod``, with labels (a Service selects the pod); the marker variable's value is returned."""
    mark = mark or uuid.uuid4().hex
    for c in containers:
        c.setdefault("image", "none")
        c.setdefault("env", []).append({"name": MARK, "value": mark})
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": env.namespace, "labels": labels or {}},
        "spec": {"nodeName": env.node, "restartPolicy": policy, "containers": list(containers), **spec},
    }
    env.api.create_namespaced_pod(env.namespace, body)
    return mark


def ready(pod: dict[str, Any]) -> str | None:
    return next((c["status"] for c in pod["status"].get("conditions") or () if c["type"] == "Ready"), None)


def events(env: Env, pod: str) -> list[tuple[str, str]]:
    found = env.api.list_namespaced_event(env.namespace, field_selector=f"involvedObject.name={pod}").items
    return [(e.reason, e.message) for e in found]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_exec_readiness_follows_a_file_and_the_endpointslice_follows_it(netenv, tmp_path):
    import kubernetes

    netenv.api.create_namespaced_service(
        netenv.namespace,
        {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}},
    )
    probe = {"exec": {"command": ["test", "-e", "/flag/ready"]}, "periodSeconds": 1, "failureThreshold": 1}
    mark = make_pod(
        netenv,
        "web",
        sh(SERVE, readinessProbe=probe, volumeMounts=FLAG),
        labels={"app": "web"},
        volumes=flag_volume(tmp_path),
    )
    pod = netenv.wait("web", lambda p: p["status"].get("phase") == "Running", "Running")
    assert ready(pod) == "False"
    assert status_of(pod, "main")["ready"] is False
    slices = kubernetes.client.DiscoveryV1Api(netenv.api.api_client)

    def endpoint_ready() -> bool | None:
        found = slices.list_namespaced_endpoint_slice(netenv.namespace, label_selector="kubernetes.io/service-name=web")
        endpoints = [e for s in found.items for e in s.endpoints or ()]
        return endpoints[0].conditions.ready if len(endpoints) == 1 else None

    until(lambda: endpoint_ready() is False, TIMEOUT, "the endpoint, not ready")
    until(lambda: ("Unhealthy", "Readiness probe failed: ") in events(netenv, "web"), TIMEOUT, "a failed probe")
    (tmp_path / "ready").touch()
    netenv.wait("web", lambda p: ready(p) == "True" and status_of(p, "main")["ready"], "Ready")
    until(lambda: endpoint_ready() is True, TIMEOUT, "the endpoint, ready")
    (tmp_path / "ready").unlink()
    netenv.wait("web", lambda p: ready(p) == "False", "not Ready again")
    until(lambda: endpoint_ready() is False, TIMEOUT, "the endpoint, not ready again")
    assert status_of(netenv.read("web"), "main")["restartCount"] == 0  # readiness never restarts
    netenv.api.delete_namespaced_pod("web", netenv.namespace)
    netenv.gone("web")
    assert processes(mark) == []  # neither the container nor a probe's command is left


def test_http_get_readiness_against_http_server_in_the_pod(env, tmp_path):
    port = free_port()
    probe = {"httpGet": {"port": "http", "path": "/ok.txt"}, "periodSeconds": 1}
    container = sh(
        f"exec python -m http.server {port} --bind 127.0.0.1",
        readinessProbe=probe,
        ports=[{"name": "http", "containerPort": port}],
        workingDir=str(tmp_path),
    )
    make_pod(env, "http", container)
    env.wait(
        "http",
        lambda p: (
            ("Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 404") in events(env, "http")
        ),
        "a 404",
    )
    assert ready(env.read("http")) == "False"
    (tmp_path / "ok.txt").write_text("ok\n")
    pod = env.wait("http", lambda p: ready(p) == "True", "Ready once /ok.txt is served")
    assert status_of(pod, "main")["ready"] is True
    assert 'GET /ok.txt HTTP/1.1" 200' in env.kubectl("logs", "http")


def test_tcp_socket_readiness(env, tmp_path):
    port = free_port()
    script = f"until [ -e /flag/go ]; do sleep 0.1; done; exec python -m http.server {port} --bind 127.0.0.1"
    probe = {"tcpSocket": {"port": port}, "periodSeconds": 1}
    make_pod(env, "tcp", sh(script, readinessProbe=probe, volumeMounts=FLAG), volumes=flag_volume(tmp_path))
    env.wait(
        "tcp",
        lambda p: any(r == "Unhealthy" and "connection refused" in m for r, m in events(env, "tcp")),
        "a refused connection",
    )
    assert ready(env.read("tcp")) == "False"
    (tmp_path / "go").touch()
    env.wait("tcp", lambda p: ready(p) == "True", "Ready once it listens")


def test_failing_liveness_kills_with_the_probes_grace_and_restarts(env):
    # SIGTERM ignored: only the SIGKILL after the probe's own grace (1 s, not the pod's 60) ends a run.
    probe = {
        "exec": {"command": ["false"]},
        "periodSeconds": 1,
        "failureThreshold": 2,
        "terminationGracePeriodSeconds": 1,
    }
    make_pod(env, "live", sh("trap '' TERM; sleep 1000 & wait", livenessProbe=probe), terminationGracePeriodSeconds=60)
    pod = env.wait("live", lambda p: status_of(p, "main").get("restartCount", 0) >= 1, "a restart", timeout=30)
    last = status_of(pod, "main")["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (137, "Error")
    seen = events(env, "live")
    assert ("Unhealthy", "Liveness probe failed: ") in seen
    assert ("Killing", "Container main failed liveness probe, will be restarted") in seen


def test_a_startup_probe_holds_liveness_off_a_slow_starter(env, tmp_path):
    started = "test -e /flag/started"
    live = f"echo >> /flag/liveness; {started}"  # each liveness probe leaves a line
    container = sh(
        f"sleep 2; touch /flag/started; {SERVE}",
        volumeMounts=FLAG,
        startupProbe={"exec": {"command": ["sh", "-c", started]}, "periodSeconds": 1, "failureThreshold": 30},
        livenessProbe={"exec": {"command": ["sh", "-c", live]}, "periodSeconds": 1, "failureThreshold": 1},
    )
    make_pod(env, "slow", container, volumes=flag_volume(tmp_path))
    pod = env.wait("slow", lambda p: "running" in status_of(p, "main").get("state", {}), "running")
    assert status_of(pod, "main")["started"] is False  # running, not started: the startup probe has not passed
    env.wait("slow", lambda p: status_of(p, "main").get("started") and ready(p) == "True", "started, Ready")
    probed = tmp_path / "liveness"
    until(lambda: probed.exists() and probed.read_text().count("\n") >= 3, TIMEOUT, "three liveness probes")
    assert (tmp_path / "started").stat().st_mtime <= probed.stat().st_ctime  # none before the start
    assert status_of(env.read("slow"), "main")["restartCount"] == 0
    assert not [m for r, m in events(env, "slow") if r == "Killing"]


def test_post_start_runs_before_running_and_the_container_sees_its_file(env, tmp_path):
    hook = {
        "exec": {"command": ["sh", "-c", "cat /proc/self/cgroup > /flag/cg-hook; echo hooked > /flag/hook; sleep 1"]}
    }
    waits = "cat /proc/self/cgroup > /flag/cg; until [ -e /flag/hook ]; do sleep 0.05; done; cat /flag/hook; " + SERVE
    slow = sh(SERVE, "slow", lifecycle={"postStart": {"sleep": {"seconds": 2}}})
    make_pod(
        env, "hooks", sh(waits, volumeMounts=FLAG, lifecycle={"postStart": hook}), slow, volumes=flag_volume(tmp_path)
    )
    pod = env.wait("hooks", lambda p: "running" in status_of(p, "main").get("state", {}), "main running")
    assert (tmp_path / "hook").read_text() == "hooked\n"  # running only once postStart returned
    env.wait("hooks", lambda p: env.kubectl("logs", "hooks", "-c", "main") == "hooked\n", "the container saw it")
    assert (tmp_path / "cg-hook").read_text() == (tmp_path / "cg").read_text()  # in the container's cgroups
    pod = env.wait("hooks", lambda p: "running" in status_of(p, "slow").get("state", {}), "slow running")
    seen = datetime.now(UTC)
    started = datetime.fromisoformat(status_of(pod, "slow")["state"]["running"]["startedAt"].replace("Z", "+00:00"))
    assert (seen - started).total_seconds() >= 1.5  # the sleep hook held it


def test_a_failing_post_start_kills_the_container(env):
    container = sh(SERVE, lifecycle={"postStart": {"exec": {"command": ["sh", "-c", "exit 3"]}}})
    mark = make_pod(env, "badhook", container, policy="Never")
    pod = env.phase("badhook", "Failed")
    term = status_of(pod, "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (143, "Error")  # SIGTERM's
    seen = events(env, "badhook")
    assert ("FailedPostStartHook", "PostStartHook failed") in seen
    assert ("Killing", "FailedPostStartHook") in seen
    assert processes(mark) == []


def test_pre_stop_runs_on_deletion_within_the_grace_period(env, tmp_path):
    script = f"trap 'echo term >> /flag/log' TERM; {SERVE}; while :; do sleep 0.1; done"
    pre_stop = {"exec": {"command": ["sh", "-c", "echo prestop >> /flag/log; sleep 4"]}}
    mark = make_pod(
        env,
        "prestop",
        sh(script, volumeMounts=FLAG, lifecycle={"preStop": pre_stop}),
        volumes=flag_volume(tmp_path),
        terminationGracePeriodSeconds=6,
    )
    env.phase("prestop", "Running")
    began = time.monotonic()
    env.api.delete_namespaced_pod("prestop", env.namespace)
    env.gone("prestop")
    took = time.monotonic() - began
    assert (tmp_path / "log").read_text() == "prestop\nterm\n"  # the hook, then SIGTERM
    assert 5 <= took < 9, took  # 4 s of hook + 2 s left of the 6 (not 4 + 6): the hook counts in the grace
    assert processes(mark) == []


# --- namespaced network: a pod's own IP ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def netagent(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """An agent whose pods each have a network namespace (the pods' IPs are not the host's)."""
    from mljob.nodeagent.network import ClusterNetwork, missing_privileges, node_pod_cidr

    if missing_privileges() is not None:
        pytest.skip(str(missing_privileges()))
    net = ClusterNetwork(f"mljob-test-probes-{os.getpid()}")
    net.destroy()
    net.create()
    extra = ("--network=namespaced", f"--cluster-netns={net.name}", f"--pod-cidr={node_pod_cidr(6)}")
    process = start_agent(cluster, tmp_path_factory.mktemp("netagent"), "agent-probes-netns", *extra)
    try:
        yield process
    finally:
        process.stop()
        print(f"----- namespaced agent log (tail) -----\n{process.log()[-6000:]}")
        net.destroy()


@pytest.fixture
def netenv(cluster: ControlPlane, netagent: AgentProcess) -> Iterator[Env]:
    e = Env(cluster, f"na-probes-net-{uuid.uuid4().hex[:8]}", netagent.node)
    e.api.create_namespace({"metadata": {"name": e.namespace}})
    yield e
    e.api.delete_namespace(e.namespace)


SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print(self.headers["Host"], self.headers["User-Agent"], self.headers["X-Check"], flush=True)
        self.send_response(200); self.end_headers()
    def log_message(self, *args): pass
http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


def test_http_get_probe_reaches_the_pods_own_ip(netenv):
    probe = {
        "httpGet": {"port": 8080, "path": "/", "httpHeaders": [{"name": "X-Check", "value": "yes"}]},
        "periodSeconds": 1,
    }
    make_pod(netenv, "own", {"name": "main", "command": ["python", "-c", SERVER], "readinessProbe": probe})
    pod = netenv.wait("own", lambda p: ready(p) == "True", "Ready")
    ip = pod["status"]["podIP"]
    assert ip.startswith("10.244.")
    assert ip != "127.0.0.1"
    logged = until(lambda: netenv.kubectl("logs", "own"), TIMEOUT, "a probe logged").splitlines()
    assert logged[0] == f"{ip}:8080 kube-probe/1.37 yes"
