"""Pods on the agent's Node, end to end: their processes, statuses, restarts, volumes, env, deletion and logs."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from agentkit import TIMEOUT, processes, status_of

from controlplane import StartError
from controlplane.waiting import until


def sh(script: str, name: str = "main", **extra):
    return {"name": name, "command": ["sh", "-c", script], **extra}


def test_pod_runs_to_succeeded_with_a_kubelets_status(env):
    env.pod("ok", sh("echo hi"))
    pod = env.phase("ok", "Succeeded")
    status = pod["status"]
    main = status_of(pod, "main")
    term = main["state"]["terminated"]
    assert term["exitCode"] == 0
    assert term["reason"] == "Completed"
    assert term["startedAt"] <= term["finishedAt"]
    assert main["restartCount"] == 0
    assert main["lastState"] == {}
    assert main["ready"] is False
    assert status["podIP"] == "127.0.0.1"
    assert status["podIPs"] == [{"ip": "127.0.0.1"}]
    assert status["hostIP"] == "127.0.0.1"
    assert status["startTime"]
    conditions = {c["type"]: (c["status"], c.get("reason")) for c in status["conditions"]}
    assert conditions["Ready"] == ("False", "PodCompleted")
    assert conditions["ContainersReady"] == ("False", "PodCompleted")
    assert conditions["Initialized"][0] == "True"
    assert conditions["PodScheduled"][0] == "True"
    assert env.kubectl("logs", "ok") == "hi\n"


def test_running_pod_is_ready(env):
    mark = uuid.uuid4().hex
    env.pod("run", sh("sleep 1000 & wait"), mark=mark)
    pod = env.phase("run", "Running")
    assert status_of(pod, "main")["ready"] is True
    assert status_of(pod, "main")["state"]["running"]["startedAt"]
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Ready"] == conditions["ContainersReady"] == "True"
    assert processes(mark)


def test_a_command_killed_by_a_signal_exits_128_plus_the_signal(env):
    env.pod("killed", {"name": "main", "command": ["python", "-c", "import os; os.kill(os.getpid(), 9)"]})
    pod = env.phase("killed", "Failed")
    term = status_of(pod, "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "Error")


def test_exit_code_fails_the_pod_with_the_log_as_its_message(env):
    env.pod("bad", sh("echo oops >&2; exit 3", terminationMessagePolicy="FallbackToLogsOnError"))
    pod = env.phase("bad", "Failed")
    term = status_of(pod, "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["message"]) == (3, "Error", "oops\n")
    assert env.kubectl("logs", "bad") == "oops\n"
    events = env.api.list_namespaced_event(env.namespace, field_selector="involvedObject.name=bad").items
    assert [(e.reason, e.message) for e in events] == [("Started", "Started container main")]


def test_on_failure_restarts_in_place_with_back_off(env, tmp_path):
    count = "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo run $n"
    script = f"{count}; [ $n -ge 3 ] && exit 0; exit 2"
    mounts = [{"name": "data", "mountPath": "/data"}]
    env.pod("flaky", sh(script, volumeMounts=mounts), policy="OnFailure", volumes=[{"name": "data", "emptyDir": {}}])
    seen: set[str] = set()

    def finished(pod):
        state = status_of(pod, "main").get("state") or {}
        seen.update(v.get("reason", k) for k, v in state.items())
        return pod["status"].get("phase") == "Succeeded"

    pod = env.wait("flaky", finished, "Succeeded after two restarts")
    main = status_of(pod, "main")
    assert main["restartCount"] == 2
    assert main["state"]["terminated"]["exitCode"] == 0
    last = main["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (2, "Error")
    assert "CrashLoopBackOff" in seen
    assert env.kubectl("logs", "flaky") == "run 3\n"
    assert env.kubectl("logs", "flaky", "--previous") == "run 2\n"


def test_env_literal_expanded_and_downward_api(env):
    container = sh(
        'echo "$POD_NAME $POD_NAMESPACE $POD_IP $NODE $HOST_IP $GREETING"; echo "$UID_" | wc -c; echo $(A_B)',
        env=[
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "UID_", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "NAME", "value": "world"},
            {"name": "GREETING", "value": "hello-$(NAME)"},
            {"name": "A_B", "value": "expanded"},
        ],
    )
    env.pod("vars", container)
    env.phase("vars", "Succeeded")
    assert env.kubectl("logs", "vars").splitlines() == [
        f"vars {env.namespace} 127.0.0.1 {env.node} 127.0.0.1 hello-world",
        "37",  # a uid and its newline
        "expanded",
    ]


def test_empty_dir_shared_between_init_and_two_containers(env):
    mounts = [{"name": "shared", "mountPath": "/shared"}]
    env.pod(
        "share",
        sh("echo from-writer > /shared/msg.tmp; mv /shared/msg.tmp /shared/msg", "writer", volumeMounts=mounts),
        sh(
            "until [ -e /shared/msg ]; do sleep 0.05; done; cat /shared/init /shared/msg", "reader", volumeMounts=mounts
        ),
        initContainers=[sh("echo from-init > /shared/init", "setup", volumeMounts=mounts)],
        volumes=[{"name": "shared", "emptyDir": {}}],
    )
    pod = env.phase("share", "Succeeded")
    assert status_of(pod, "setup")["state"]["terminated"]["reason"] == "Completed"
    assert env.kubectl("logs", "share", "-c", "reader") == "from-init\nfrom-writer\n"


def test_native_sidecar_runs_beside_the_containers_and_is_stopped_when_they_end(env, tmp_path):
    mark = uuid.uuid4().hex
    mounts = [{"name": "out", "mountPath": "/out"}]
    sidecar = sh(
        "trap 'echo stopped > /out/sidecar; exit 0' TERM; echo up > /out/up; sleep 1000 & wait",
        "sidecar",
        restartPolicy="Always",
        volumeMounts=mounts,
    )
    env.pod(
        "sidecar",
        sh("until [ -e /out/up ]; do sleep 0.05; done; cat /out/up /out/init", volumeMounts=mounts),
        mark=mark,
        initContainers=[sidecar, sh("echo after-sidecar > /out/init", "setup", volumeMounts=mounts)],
        volumes=[{"name": "out", "hostPath": {"path": str(tmp_path)}}],
    )
    pod = env.phase("sidecar", "Succeeded")
    assert env.kubectl("logs", "sidecar", "-c", "main") == "up\nafter-sidecar\n"
    assert (tmp_path / "sidecar").read_text() == "stopped\n"
    assert [s["name"] for s in pod["status"]["initContainerStatuses"]] == ["sidecar", "setup"]
    until(lambda: "terminated" in status_of(env.read("sidecar"), "sidecar")["state"], TIMEOUT, "the sidecar's end")
    assert processes(mark) == []


def test_host_path_and_working_dir(env, tmp_path):
    (tmp_path / "input.txt").write_text("on the host\n")
    mounts = [{"name": "host", "mountPath": "/work-in"}]
    env.pod(
        "hostpath",
        sh("cat input.txt; pwd; echo written > out.txt", volumeMounts=mounts, workingDir="/work-in"),
        volumes=[{"name": "host", "hostPath": {"path": str(tmp_path), "type": "Directory"}}],
    )
    env.phase("hostpath", "Succeeded")
    assert env.kubectl("logs", "hostpath") == "on the host\n/work-in\n"
    assert (tmp_path / "out.txt").read_text() == "written\n"


def test_a_container_with_no_command_fails_to_start(env):
    env.pod("noimage", {"name": "main", "image": "busybox"})
    pod = env.phase("noimage", "Failed")
    term = status_of(pod, "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (128, "StartError")
    assert "runs no images" in term["message"]


def waiting_reason(pod):
    return status_of(pod, "main").get("state", {}).get("waiting", {}).get("reason")


def test_deletion_sends_sigterm_then_deletes_leaving_no_process(env, tmp_path):
    mark = uuid.uuid4().hex
    mounts = [{"name": "out", "mountPath": "/out"}]
    script = "trap 'echo got TERM > /out/term; exit 0' TERM; sleep 1000 & wait"
    env.pod(
        "graceful",
        sh(script, volumeMounts=mounts),
        mark=mark,
        volumes=[{"name": "out", "hostPath": {"path": str(tmp_path)}}],
        terminationGracePeriodSeconds=60,
    )
    env.phase("graceful", "Running")
    assert processes(mark)
    env.api.delete_namespaced_pod("graceful", env.namespace)
    env.gone("graceful")
    assert (tmp_path / "term").read_text() == "got TERM\n"
    assert processes(mark) == []


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(env):
    mark = uuid.uuid4().hex
    # SIGTERM ignored by the shell and, inherited, by both sleeps: only the SIGKILL after the grace period ends them.
    env.pod("stubborn", sh("trap '' TERM; sleep 1000 & sleep 1000"), mark=mark, terminationGracePeriodSeconds=1)
    env.phase("stubborn", "Running")
    until(lambda: len(processes(mark)) >= 3, TIMEOUT, "the shell and both sleeps")
    env.api.delete_namespaced_pod("stubborn", env.namespace)
    env.gone("stubborn")
    assert processes(mark) == []


def test_kubectl_logs_follow_tail_and_timestamps(env, tmp_path):
    mounts = [{"name": "flag", "mountPath": "/flag"}]
    script = "echo one; echo two; until [ -e /flag/go ]; do sleep 0.05; done; echo three"
    env.pod(
        "follow",
        sh(script, volumeMounts=mounts),
        volumes=[{"name": "flag", "hostPath": {"path": str(tmp_path)}}],
    )
    env.wait("follow", lambda p: env.kubectl("logs", "follow") == "one\ntwo\n", "two lines logged")
    errors = tmp_path / "stderr"
    with errors.open("w") as err:
        follower = subprocess.Popen(
            [
                str(env.cp.bin / "kubectl"),
                f"--kubeconfig={env.cp.kubeconfig}",
                "-n",
                env.namespace,
                "logs",
                "-f",
                "follow",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        first = follower.stdout.readline()  # connected: the lines so far are streamed
        (tmp_path / "go").touch()
        rest = follower.stdout.read()  # to the end: the follow ends with the container
        follower.wait(TIMEOUT)
    finally:
        follower.kill()
    assert first + rest == "one\ntwo\nthree\n", errors.read_text()
    env.phase("follow", "Succeeded")
    assert env.kubectl("logs", "follow", "--tail=1") == "three\n"
    stamped = env.kubectl("logs", "follow", "--timestamps").splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two", "three"]
    assert all(line.split(" ", 1)[0].endswith("Z") for line in stamped)
    assert env.kubectl("logs", "follow", "--limit-bytes=5") == "one\nt"
    assert env.kubectl("logs", "follow", "--since=1h") == "one\ntwo\nthree\n"


def test_previous_of_a_container_that_never_restarted_is_an_error(env):
    env.pod("once", sh("echo once"))
    env.phase("once", "Succeeded")
    with pytest.raises(StartError, match="previous terminated container"):
        env.kubectl("logs", "once", "--previous")


def test_node_lease_is_renewed_and_node_is_described(env, agent):
    import kubernetes

    coord = kubernetes.client.CoordinationV1Api(env.api.api_client)
    first = coord.read_namespaced_lease(agent.node, "kube-node-lease")
    assert first.spec.holder_identity == agent.node
    until(
        lambda: coord.read_namespaced_lease(agent.node, "kube-node-lease").spec.renew_time > first.spec.renew_time,
        TIMEOUT,
        "the lease to be renewed",
    )

    def heartbeat():
        ready = [c for c in env.api.read_node(agent.node).status.conditions if c.type == "Ready"]
        return ready[0].last_heartbeat_time

    beat = heartbeat()
    until(lambda: heartbeat() > beat, TIMEOUT, "the Ready condition's heartbeat")
    node = env.api.read_node(agent.node)
    assert node.metadata.labels["kubernetes.io/hostname"] == agent.node
    assert node.status.capacity["cpu"] == "8"
    assert node.status.daemon_endpoints.kubelet_endpoint.port > 0
    assert (node.status.addresses[0].type, node.status.addresses[0].address) == ("InternalIP", "127.0.0.1")
    assert not (node.metadata.annotations or {}).get("kwok.x-k8s.io/node")
