"""The simulated kubelet: phases, exit codes, restart policies, eviction, lost nodes, termination."""

import asyncio

import pytest

from mljob.testing import Evict, Kubelet, LoseNode, RunForever, Unschedulable, fail, oom_killed, succeed

pytestmark = pytest.mark.asyncio


def pod(name, restart_policy="Never", containers=("main",), **spec):
    return {
        "metadata": {"name": name, "labels": {"app": "train"}},
        "spec": {
            "restartPolicy": restart_policy,
            "containers": [{"name": c, "image": "busybox"} for c in containers],
            **spec,
        },
    }


def phase(emu, name):
    body = emu.get("pods", name)
    return body and body.get("status", {}).get("phase")


def container(emu, name, index=0):
    statuses = emu.get("pods", name).get("status", {}).get("containerStatuses") or [{"state": {}}]
    return statuses[index]


async def test_default_outcome_every_pod_succeeds(emu):
    async with Kubelet(emu, default=succeed(after=0.05)):
        emu.create("pods", pod("a", containers=("main", "sidecar")))
        await emu.wait_for(lambda: phase(emu, "a") == "Running")
        body = emu.get("pods", "a")
        assert body["spec"]["nodeName"] == "emulated-node"
        assert body["metadata"]["generation"] == 1  # binding is not a spec change
        assert body["status"]["podIP"].startswith("10.244.")
        assert body["status"]["startTime"]
        assert container(emu, "a")["state"]["running"]["startedAt"]
        assert container(emu, "a")["ready"] is True
        assert [c["name"] for c in body["status"]["containerStatuses"]] == ["main", "sidecar"]
        await emu.wait_for(lambda: phase(emu, "a") == "Succeeded")
        terminated = container(emu, "a")["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")


async def test_pending_until_start_delay(emu):
    async with Kubelet(emu, start_delay=0.1):
        emu.create("pods", pod("a"))
        await emu.wait_for(lambda: phase(emu, "a") == "Pending")
        assert container(emu, "a")["state"]["waiting"]["reason"] == "ContainerCreating"
        await emu.wait_for(lambda: phase(emu, "a") == "Running")


async def test_restart_policy_never_fails_the_pod(emu):
    async with Kubelet(emu) as kubelet:
        kubelet.script("a", fail(code=3, after=0.01))
        emu.create("pods", pod("a", "Never"))
        await emu.wait_for(lambda: phase(emu, "a") == "Failed")
        state = container(emu, "a")
        assert (state["state"]["terminated"]["exitCode"], state["state"]["terminated"]["reason"]) == (3, "Error")
        assert state["restartCount"] == 0


async def test_restart_policy_on_failure_restarts_in_place_then_succeeds(emu):
    async with Kubelet(emu) as kubelet:
        kubelet.script("worker-*", oom_killed(after=0.01), fail(code=1, after=0.01), succeed(after=0.01))
        emu.create("pods", pod("worker-0", "OnFailure"))
        await emu.wait_for(lambda: phase(emu, "worker-0") == "Succeeded")
        state = container(emu, "worker-0")
        assert state["restartCount"] == 2
        assert state["lastState"]["terminated"]["exitCode"] == 1
        assert state["state"]["terminated"]["exitCode"] == 0
        assert kubelet.starts["worker-0"] == 3


async def test_restart_policy_always_restarts_even_on_success(emu):
    async with Kubelet(emu, restart_delay=0.05) as kubelet:
        kubelet.script(lambda p: p["metadata"]["name"] == "a", succeed(after=0.01), RunForever())
        emu.create("pods", pod("a", "Always"))
        await emu.wait_for(lambda: container(emu, "a")["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff")
        await emu.wait_for(
            lambda: container(emu, "a")["restartCount"] == 1 and "running" in container(emu, "a")["state"]
        )
        assert container(emu, "a")["lastState"]["terminated"]["reason"] == "Completed"
        assert phase(emu, "a") == "Running"


async def test_forced_exit_follows_the_restart_policy(emu):
    async with Kubelet(emu) as kubelet:
        emu.create("pods", pod("a", "OnFailure"))
        await emu.wait_for(lambda: phase(emu, "a") == "Running")
        kubelet.exit("a", code=2)
        await emu.wait_for(lambda: container(emu, "a")["restartCount"] == 1)
        assert phase(emu, "a") == "Running"
        kubelet.exit("a", code=0)
        await emu.wait_for(lambda: phase(emu, "a") == "Succeeded")
        with pytest.raises(LookupError):
            kubelet.exit("nope")


async def test_eviction(emu):
    async with Kubelet(emu) as kubelet:
        kubelet.script("b", Evict(after=0.01))
        emu.create("pods", pod("a", "Always"))
        emu.create("pods", pod("b", "Always"))
        await emu.wait_for(lambda: phase(emu, "a") == "Running")
        kubelet.evict("a")
        await emu.wait_for(lambda: phase(emu, "a") == "Failed" and phase(emu, "b") == "Failed")
        for name in ("a", "b"):
            status = emu.get("pods", name)["status"]
            assert status["reason"] == "Evicted"
            assert "low on resource" in status["message"]


async def test_api_eviction_deletes_the_pod(emu, api):
    async with Kubelet(emu):
        emu.create("pods", pod("a"))
        status, _body = await api.post(
            "/api/v1/namespaces/default/pods/a/eviction",
            {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "a"}},
        )
        assert status == 201
        assert emu.get("pods", "a") is None


async def test_lost_node_and_unschedulable(emu):
    async with Kubelet(emu, termination_delay=0.01) as kubelet:
        kubelet.script("lost", LoseNode(after=0.01))
        kubelet.script("stuck", Unschedulable())
        emu.create("pods", pod("lost"))
        emu.create("pods", pod("stuck"))
        await emu.wait_for(lambda: phase(emu, "lost") == "Unknown")
        assert emu.get("pods", "lost")["status"]["reason"] == "NodeLost"
        emu.delete("pods", "lost")
        await asyncio.sleep(0.1)
        assert emu.get("pods", "lost")["metadata"]["deletionTimestamp"]  # nobody finishes it
        emu.delete("pods", "lost", grace_period_seconds=0)  # force deletion
        assert emu.get("pods", "lost") is None
        conditions = emu.get("pods", "stuck")["status"]["conditions"]
        assert conditions[0]["reason"] == "Unschedulable"
        assert phase(emu, "stuck") == "Pending"
        assert "nodeName" not in emu.get("pods", "stuck")["spec"]


async def test_graceful_termination(emu):
    async with Kubelet(emu, termination_delay=0.1):
        emu.create("pods", pod("a", "Always"))
        await emu.wait_for(lambda: phase(emu, "a") == "Running")
        deleted = emu.delete("pods", "a")
        assert deleted["metadata"]["deletionGracePeriodSeconds"] == 30
        assert emu.get("pods", "a")["metadata"]["deletionTimestamp"]
        await emu.wait_for(lambda: emu.get("pods", "a") is None, timeout=2)
        # A pod recreated with the same name is a new pod.
        emu.create("pods", pod("a", "Always"))
        await emu.wait_for(lambda: phase(emu, "a") == "Running")


async def test_without_termination_delay_deletion_is_immediate(emu):
    async with Kubelet(emu):
        emu.create("pods", pod("a"))
        await emu.wait_for(lambda: phase(emu, "a") == "Running")
        emu.delete("pods", "a")
        assert emu.get("pods", "a") is None


async def test_kubelet_costs_no_api_requests(emu):
    async with Kubelet(emu, default=succeed(after=0.01)):
        for i in range(20):
            emu.create("pods", pod(f"p{i}", "OnFailure"))
        await emu.wait_for(lambda: all(phase(emu, f"p{i}") == "Succeeded" for i in range(20)))
    assert emu.stats.total(exclude=()) == 0


async def test_finalizer_held_pod_is_stopped_but_kept(emu):
    async with Kubelet(emu):
        emu.create("pods", {**pod("a", "Always"), "metadata": {"name": "a", "finalizers": ["x/keep"]}})
        await emu.wait_for(lambda: phase(emu, "a") == "Running")
        emu.delete("pods", "a")
        await emu.wait_for(lambda: phase(emu, "a") == "Failed")
        assert container(emu, "a")["state"]["terminated"]["exitCode"] == 143
        emu.patch("pods", "a", {"metadata": {"finalizers": None}})
        assert emu.get("pods", "a") is None
