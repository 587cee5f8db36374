"""The local control plane: what it starts, that RBAC and the audit log are on, that kwok plays the project's
Stages as a kubelet would, that kubectl works against it, and that stopping it leaves no process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from controlplane import ControlPlane
from controlplane.audit import AuditLog
from controlplane.cluster import BIN, append_log
from controlplane.waiting import until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("cp")) as plane:
        yield plane.start()


@pytest.fixture(scope="module")
def core(cp: ControlPlane) -> Any:
    api = kubernetes.config.new_client_from_config(str(cp.kubeconfig))
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "stages"}})
    return core


def wait(predicate, timeout: float = 30.0, what: str = "") -> Any:
    return until(predicate, timeout, what)


def kubectl(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubectl"), f"--kubeconfig={cp.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def pod(name: str, runs: str | None, policy: str = "OnFailure") -> dict[str, Any]:
    annotations = {"kwok.mljob.io/runs": runs} if runs else {}
    return {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "busybox:1.36"}]},
    }


def status(core: Any, name: str) -> dict[str, Any]:
    return core.api_client.sanitize_for_serialization(core.read_namespaced_pod(name, "stages")).get("status") or {}


def test_every_component_is_up_and_the_server_reports_the_pinned_version(cp, core):
    assert set(cp.alive()) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    assert all(cp.alive().values())
    version = kubernetes.client.VersionApi(core.api_client).get_code()
    pinned = next(line.split("=")[1] for line in (ROOT / "controlplane/versions.env").read_text().splitlines()
                  if line.startswith("KUBERNETES_VERSION="))  # fmt: skip
    assert version.git_version == pinned
    nodes = core.list_node().items
    assert len(nodes) == len(cp.nodes)
    assert all(any(c.type == "Ready" and c.status == "True" for c in n.status.conditions) for n in nodes)
    assert {n.metadata.labels["topology.kubernetes.io/zone"] for n in nodes} == {"zone-a", "zone-b"}
    assert 0 < cp.startup_seconds < 120


def test_rbac_is_on_and_the_audit_log_names_who_asked(cp, core):
    nobody = cp.user_kubeconfig("nobody")
    api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(nobody)))
    mark = AuditLog(cp.audit_log).mark()
    with pytest.raises(kubernetes.client.ApiException) as refused:
        api.list_namespaced_pod("default")
    assert refused.value.status == 403
    (request,) = AuditLog(cp.audit_log).requests(mark, user="nobody")
    assert (request.verb, request.resource, request.code) == ("list", "pods", 403)


def test_a_scripted_pod_is_scheduled_runs_restarts_in_place_and_succeeds(core):
    core.create_namespaced_pod("stages", pod("scripted", "3@0.2 0@0.2"))
    done = wait(lambda: status(core, "scripted").get("phase") == "Succeeded", what="the pod to succeed")
    assert done
    got = status(core, "scripted")
    (container,) = got["containerStatuses"]
    assert container["restartCount"] == 1
    assert container["state"]["terminated"]["exitCode"] == 0
    assert container["state"]["terminated"]["reason"] == "Completed"
    body = core.read_namespaced_pod("scripted", "stages")
    assert body.spec.node_name.startswith("kwok-node-")  # bound by the real scheduler
    assert got["podIP"]


def test_a_pod_with_resources_runs_too(core):
    """The API server sets a pod's qosClass at creation and refuses any change: the Stages leave it alone."""
    body = pod("guaranteed", "0@0.1")
    body["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}}
    core.create_namespaced_pod("stages", body)
    wait(lambda: status(core, "guaranteed").get("phase") == "Succeeded", what="the pod to succeed")
    assert status(core, "guaranteed")["qosClass"] == "Guaranteed"


def test_under_never_a_failing_run_fails_the_pod_with_its_code_and_reason(core):
    core.create_namespaced_pod("stages", pod("oom", "137@0.1@OOMKilled", policy="Never"))
    wait(lambda: status(core, "oom").get("phase") == "Failed", what="the pod to fail")
    terminated = status(core, "oom")["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")


def test_a_test_can_end_a_run_evict_a_pod_and_lose_its_node(core):
    for name in ("ended", "evicted", "lost"):
        core.create_namespaced_pod("stages", pod(name, None))
    for name in ("ended", "evicted", "lost"):
        wait(lambda name=name: status(core, name).get("phase") == "Running", what=f"{name} running")

    core.patch_namespaced_pod("ended", "stages", {"metadata": {"annotations": {"kwok.mljob.io/exit": "2 - 0"}}})
    wait(lambda: status(core, "ended")["containerStatuses"][0]["restartCount"] == 1, what="restart in place")
    last = status(core, "ended")["containerStatuses"][0]["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (2, "Error")
    assert status(core, "ended")["phase"] == "Running"  # OnFailure: back up, and the cue is spent

    core.patch_namespaced_pod("evicted", "stages", {"metadata": {"annotations": {"kwok.mljob.io/evict": "no room"}}})
    wait(lambda: status(core, "evicted").get("phase") == "Failed", what="eviction")
    assert (status(core, "evicted")["reason"], status(core, "evicted")["message"]) == ("Evicted", "no room")

    core.patch_namespaced_pod("lost", "stages", {"metadata": {"annotations": {"kwok.mljob.io/lose-node": "true"}}})
    wait(lambda: status(core, "lost").get("phase") == "Unknown", what="node lost")
    assert status(core, "lost")["reason"] == "NodeLost"
    core.delete_namespaced_pod("lost", "stages")
    core.delete_namespaced_pod("ended", "stages")
    wait(lambda: "ended" not in {p.metadata.name for p in core.list_namespaced_pod("stages").items}, what="deleted")
    lost = core.read_namespaced_pod("lost", "stages")  # a pod on a lost node never finishes terminating
    assert lost.metadata.deletion_timestamp is not None
    core.delete_namespaced_pod("lost", "stages", grace_period_seconds=0)


def test_a_pod_created_in_the_name_of_a_deleted_finished_one_is_left_alone(core):
    """The API server deletes a finished pod at once; kwok must not then delete its namesake (seen in CI)."""
    core.create_namespaced_pod("stages", pod("namesake", "3@0.05", policy="Never"))
    wait(lambda: status(core, "namesake").get("phase") == "Failed", what="the first pod to fail")
    core.delete_namespaced_pod("namesake", "stages")
    wait(lambda: "namesake" not in {p.metadata.name for p in core.list_namespaced_pod("stages").items}, what="gone")
    core.create_namespaced_pod("stages", pod("namesake", "0@1.0", policy="Never"))
    # It lives its whole script: were it deleted in the first 100 ms, it would never succeed.
    wait(lambda: _phase_or_gone(core, "namesake") in ("Succeeded", "gone"), what="the namesake to finish")
    assert _phase_or_gone(core, "namesake") == "Succeeded"


def _phase_or_gone(core: Any, name: str) -> str:
    try:
        return str(status(core, name).get("phase") or "")
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return "gone"
        raise


def test_kwok_serves_the_log_a_test_gives_a_pod_and_follows_it_through_the_api_server(cp, core):
    """`kubectl logs` goes to the API server, which dials the node's kubelet endpoint (127.0.0.1, kwok's port) over
    TLS it verifies with the cluster's CA; kwok reads the file a Logs object names. A pod with none has no log."""
    for name in ("talks", "silent"):
        core.create_namespaced_pod("stages", pod(name, None))
    nodes = core.list_node().items
    assert all(("InternalIP", "127.0.0.1") in {(a.type, a.address) for a in n.status.addresses} for n in nodes)
    assert {n.status.daemon_endpoints.kubelet_endpoint.port for n in nodes} == {cp.kubelet_port}

    path = cp.give_log("stages", "talks", "hello", "world")
    done = kubectl(cp, "logs", "-n", "stages", "talks")
    assert (done.returncode, done.stdout) == (0, "hello\nworld\n"), done.stderr
    wait(lambda: status(core, "silent").get("phase") == "Running", what="the silent pod running")
    refused = kubectl(cp, "logs", "-n", "stages", "silent")
    assert refused.returncode == 1
    assert 'no logs found for container "c" in pod "stages/silent"' in refused.stderr  # kwok's own answer

    follow = subprocess.Popen(
        [str(BIN / "kubectl"), f"--kubeconfig={cp.kubeconfig}", "logs", "-f", "-n", "stages", "talks"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen = _collect(follow)
        wait(lambda: seen == ["hello", "world"], 60, "kubectl logs -f to print the log so far")
        append_log(path, "appended while following")
        wait(lambda: seen == ["hello", "world", "appended while following"], 60, "the appended line streamed")
    finally:
        follow.kill()
        follow.wait()


def _collect(proc: subprocess.Popen[str]) -> list[str]:
    """The lines ``proc`` prints, as they come (a reader thread fills the list)."""
    assert proc.stdout is not None
    out, seen = proc.stdout, []

    def read() -> None:
        for line in out:
            seen.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return seen


def test_kubectl_at_the_server_version_works_against_it(cp):
    done = kubectl(cp, "version", "-o", "json")
    assert done.returncode == 0, done.stderr
    versions = json.loads(done.stdout)
    assert versions["clientVersion"]["gitVersion"] == versions["serverVersion"]["gitVersion"]
    assert "WARNING" not in done.stderr  # no version skew


def test_make_cluster_prints_a_kubeconfig_and_ctrl_c_leaves_no_process(tmp_path):
    workdir = tmp_path / "people"
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "--workdir", str(workdir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "export KUBECONFIG=" in line:
            break
    kubeconfig = Path(lines[-1].split("=", 1)[1].strip())
    assert kubeconfig.exists(), "".join(lines)
    assert any(line.startswith("control plane up in") for line in lines), lines
    children = _children(proc.pid)
    assert len(children) == 5, children
    api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(kubeconfig)))
    assert api.list_namespace().items
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    assert "control plane stopped" in proc.stdout.read()
    assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == []


def test_a_killed_test_run_takes_its_control_plane_with_it(tmp_path):
    """SIGKILL of the Python process that started it: the parent-death signal ends every component."""
    script = (
        "import sys, time; from controlplane import ControlPlane; "
        f"cp = ControlPlane(__import__('pathlib').Path({str(tmp_path / 'k')!r})).start(); "
        "print(' '.join(str(p.pid) for p in cp.procs.values()), flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 5
    proc.kill()
    proc.wait()
    wait(lambda: not [pid for pid in pids if _alive(pid)], 30, "every component to die with its parent")


def _children(parent: int) -> list[int]:
    """The live processes whose parent is ``parent``, from /proc (what `pgrep -P` reads)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
