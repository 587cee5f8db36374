"""The agent killed and started again: no pod process outlives it, and its pods are taken up as after a reboot."""

from __future__ import annotations

import uuid

import pytest
from agentkit import TIMEOUT, Env, core, processes, start_agent, status_of

from controlplane.waiting import until

SLOW_BACKOFF = ("--backoff=600", "--backoff-max=600")


@pytest.fixture
def own(cluster, tmp_path, request):
    """An agent of this test's own (it gets killed), its Node, and a namespace."""
    node = f"restart-{uuid.uuid4().hex[:8]}"
    # A back-off longer than any wait here: a container restarted after an agent restart must not wait for it.
    agent = start_agent(cluster, tmp_path / "agent", node, *SLOW_BACKOFF)
    namespace = f"na-restart-{uuid.uuid4().hex[:8]}"
    env = Env(cluster, namespace, node)
    env.api.create_namespace({"metadata": {"name": namespace}})
    holder = {"agent": agent}
    yield env, holder, tmp_path / "agent"
    holder["agent"].stop()
    print(f"----- agent log (tail) -----\n{holder['agent'].log()[-6000:]}")
    env.api.delete_namespace(namespace)
    core(cluster).delete_node(node)


def test_sigkilled_agent_leaves_no_process_and_its_pods_are_taken_up_again(own, cluster):
    env, holder, folder = own
    never, again = uuid.uuid4().hex, uuid.uuid4().hex
    # A process that leaves the session and the process group: the PID namespace still takes it down.
    escape = "setsid sleep 1000 & sleep 1000 & wait"
    env.pod("never", {"name": "main", "command": ["sh", "-c", escape]}, policy="Never", mark=never)
    env.pod("again", {"name": "main", "command": ["sh", "-c", escape]}, policy="OnFailure", mark=again)
    env.phase("never", "Running")
    env.phase("again", "Running")
    until(lambda: len(processes(never)) >= 3 and len(processes(again)) >= 3, TIMEOUT, "every process started")

    holder["agent"].kill()
    until(lambda: not processes(never) and not processes(again), TIMEOUT, "the pods' processes to die with the agent")

    holder["agent"] = start_agent(cluster, folder, env.node, *SLOW_BACKOFF)
    failed = env.phase("never", "Failed")
    term = status_of(failed, "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "ContainerStatusUnknown")

    restarted = env.wait(
        "again",
        lambda p: status_of(p, "main").get("restartCount") == 1 and "running" in status_of(p, "main")["state"],
        "running again after one restart",
    )
    last = status_of(restarted, "main")["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (137, "ContainerStatusUnknown")
    until(lambda: len(processes(again)) >= 3, TIMEOUT, "the restarted pod's processes")
    assert processes(never) == []

    env.api.delete_namespaced_pod("again", env.namespace, grace_period_seconds=1)
    env.gone("again")
    assert processes(again) == []


def test_a_pod_deleted_while_the_agent_was_down_is_deleted_when_it_returns(own, cluster):
    env, holder, folder = own
    mark = uuid.uuid4().hex
    env.pod("orphan", {"name": "main", "command": ["sleep", "1000"]}, mark=mark)
    env.phase("orphan", "Running")
    holder["agent"].kill()
    env.api.delete_namespaced_pod("orphan", env.namespace)  # graceful: waits for the node's kubelet
    assert env.read("orphan") is not None
    holder["agent"] = start_agent(cluster, folder, env.node, *SLOW_BACKOFF)
    env.gone("orphan")
    assert processes(mark) == []
    assert not list((folder / "state" / "pods").glob(f"{env.namespace}_orphan_*"))


def test_a_stopped_agent_stops_its_pods_processes_and_exits_cleanly(own):
    env, holder, _ = own
    mark = uuid.uuid4().hex
    env.pod("stopped", {"name": "main", "command": ["sh", "-c", "sleep 1000 & wait"]}, mark=mark)
    env.phase("stopped", "Running")
    until(lambda: len(processes(mark)) >= 2, TIMEOUT, "the pod's processes")
    process = holder["agent"].proc
    holder["agent"].stop()
    assert process.returncode == 0, holder["agent"].log()[-3000:]
    assert processes(mark) == []


def test_one_agent_plays_several_nodes(cluster, tmp_path):
    first, second = f"multi-{uuid.uuid4().hex[:8]}", f"multi-{uuid.uuid4().hex[:8]}"
    agent = start_agent(cluster, tmp_path / "agent", first, f"--node={second}")
    namespace = f"na-multi-{uuid.uuid4().hex[:8]}"
    env = Env(cluster, namespace, second)
    env.api.create_namespace({"metadata": {"name": namespace}})
    try:
        node = env.api.read_node(second)
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
        env.pod("on-second", {"name": "main", "command": ["sh", "-c", "echo on $NODE"], "env": [NODE_NAME]})
        env.phase("on-second", "Succeeded")
        assert env.kubectl("logs", "on-second") == f"on {second}\n"
    finally:
        agent.stop()
        print(f"----- agent log (tail) -----\n{agent.log()[-6000:]}")
        env.api.delete_namespace(namespace)
        for name in (first, second):
            core(cluster).delete_node(name)


NODE_NAME = {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
