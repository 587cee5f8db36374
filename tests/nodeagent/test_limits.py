"""Resource limits enforced with cgroups, end to end: OOM kills reported as the kubelet does, cpu throttling, the
limits a container reads where frameworks read them, the pod-level cgroup by QoS, and no cgroup left behind."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from agentkit import TIMEOUT, Env, core, start_agent, status_of

from controlplane.waiting import until
from mljob.nodeagent import cgroups

MI = 2**20
ALLOCATE = ["python", "-c", "b = bytearray(200 * 2**20); print('allocated')"]
"""200 MiB, every page touched (a bytearray is zeroed)."""
OWN_LIMITS = (
    "if [ -e /sys/fs/cgroup/memory.max ]; then cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; "
    "else cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us; fi"
)
"""What a framework reads in a container (loky's cpu count, a JVM's heap): the cgroup files at their usual place."""


def limited(container: dict[str, Any], limits: dict[str, str], requests: dict[str, str] | None = None):
    container["resources"] = {"limits": limits, **({"requests": requests} if requests else {})}
    return container


def sh(script: str, name: str = "main", **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": ["sh", "-c", script], **extra}


@pytest.fixture(scope="module")
def hierarchy() -> cgroups.Hierarchy:
    found, why = cgroups.detect()
    assert found is not None, f"this machine has no usable cgroups: {why}"
    return found


def folders(hierarchy: cgroups.Hierarchy, path: str) -> list[Path]:
    """The cgroup's folder in each hierarchy the agent uses."""
    return [Path(folder) for folder, _ in hierarchy.joins(path)]


def settings(hierarchy: cgroups.Hierarchy, path: str) -> tuple[int | None, int | None, int]:
    """(memory limit, cpu quota per 100 ms, cpu shares or v2 weight) as the kernel has them; None: unlimited."""
    if isinstance(hierarchy, cgroups.V1):
        memory = int((hierarchy.memory / path / "memory.limit_in_bytes").read_text())
        quota = int((hierarchy.cpu / path / "cpu.cfs_quota_us").read_text())
        weight = int((hierarchy.cpu / path / "cpu.shares").read_text())
        return (memory if memory < 2**62 else None), (quota if quota > 0 else None), weight
    assert isinstance(hierarchy, cgroups.V2)
    folder = hierarchy.root / path
    raw_memory = (folder / "memory.max").read_text().strip()
    raw_quota = (folder / "cpu.max").read_text().split()[0]
    weight = int((folder / "cpu.weight").read_text())
    return (None if raw_memory == "max" else int(raw_memory)), (None if raw_quota == "max" else int(raw_quota)), weight


def weight(hierarchy: cgroups.Hierarchy, shares: int) -> int:
    return shares if isinstance(hierarchy, cgroups.V1) else cgroups.cpu_weight(shares)


def gone(hierarchy: cgroups.Hierarchy, path: str, what: str) -> None:
    until(lambda: not any(f.exists() for f in folders(hierarchy, path)), TIMEOUT, f"the cgroups of {what} to go")


def test_memory_past_the_limit_is_oom_killed_and_its_cgroup_goes_with_the_pod(env, hierarchy):
    created = env.pod("oom", limited({"name": "main", "command": ALLOCATE}, {"memory": "64Mi"}))
    pod = env.phase("oom", "Failed")
    term = status_of(pod, "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "OOMKilled")
    assert "allocated" not in env.kubectl("logs", "oom")
    gone(hierarchy, cgroups.pod_path(env.node, created["metadata"]["uid"]), "the finished pod")


def test_an_oom_killed_container_restarts_under_on_failure_with_oom_as_its_last_state(env):
    once = "if [ -e /data/ran ]; then echo second run; exit 0; fi; touch /data/ran; exec " + " ".join(
        f"'{part}'" for part in ALLOCATE
    )
    container = limited(sh(once, volumeMounts=[{"name": "data", "mountPath": "/data"}]), {"memory": "64Mi"})
    env.pod("again", container, policy="OnFailure", volumes=[{"name": "data", "emptyDir": {}}])
    pod = env.phase("again", "Succeeded")
    main = status_of(pod, "main")
    assert main["restartCount"] == 1
    last = main["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (137, "OOMKilled")
    assert main["state"]["terminated"]["reason"] == "Completed"
    assert env.kubectl("logs", "again") == "second run\n"


def test_the_same_program_under_a_larger_limit_succeeds(env):
    env.pod("roomy", limited({"name": "main", "command": ALLOCATE}, {"memory": "512Mi"}))
    pod = env.phase("roomy", "Succeeded")
    term = status_of(pod, "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (0, "Completed")
    assert env.kubectl("logs", "roomy") == "allocated\n"


def test_a_sigkill_under_a_memory_limit_is_an_error_not_an_oom(env):
    kill = ["python", "-c", "import os; os.kill(os.getpid(), 9)"]
    env.pod("killed", limited({"name": "main", "command": kill}, {"memory": "64Mi"}))
    term = status_of(env.phase("killed", "Failed"), "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "Error")


def test_a_cpu_limit_throttles(env):
    # One second of wall time spinning, then the CPU time it got and the cgroup's own counters, read inside.
    spin = (
        "import os, time\n"
        "start = time.monotonic(); cpu0 = sum(os.times()[:2])\n"
        "while time.monotonic() - start < 1.0: pass\n"
        "print(f'ratio {(sum(os.times()[:2]) - cpu0) / (time.monotonic() - start):.3f}')\n"
        "for path in ('/sys/fs/cgroup/cpu/cpu.stat', '/sys/fs/cgroup/cpu.stat'):\n"
        "    if os.path.exists(path): print(open(path).read())\n"
    )
    env.pod("spin", limited({"name": "main", "command": ["python", "-c", spin]}, {"cpu": "200m"}))
    env.phase("spin", "Succeeded")
    lines = env.kubectl("logs", "spin").splitlines()
    stat = dict(line.split() for line in lines[1:] if line.strip())
    assert int(stat["nr_throttled"]) > 0, lines
    ratio = float(lines[0].split()[1])
    assert ratio < 0.6, lines  # 0.2 of a CPU at most, with a wide margin; an unlimited spin gets about 1.0


def test_a_container_reads_its_own_limits_where_a_container_would(env):
    container = limited(sh(OWN_LIMITS + "; cat /proc/self/cgroup"), {"memory": "64Mi", "cpu": "200m"})
    created = env.pod("reads", container)
    env.phase("reads", "Succeeded")
    lines = env.kubectl("logs", "reads").splitlines()
    assert lines[0] == str(64 * MI)
    assert lines[1].split()[0] == "20000"
    own = cgroups.container_path(env.node, created["metadata"]["uid"], "main")
    assert any(line.endswith(":/" + own) for line in lines[2:]), lines  # /proc/self/cgroup: the pod's own cgroup


@pytest.mark.parametrize(
    ("qos", "resources", "expected"),
    [
        # Two containers: the pod's memory limit and cpu quota are their sums, shares from the summed requests.
        ("Guaranteed", [{"memory": "64Mi", "cpu": "500m"}, {"memory": "32Mi", "cpu": "250m"}], (96 * MI, 75000, 768)),
        # One container without a memory limit: the pod has none; cpu limits on both: the quota stays.
        ("Burstable", [{"memory": "64Mi", "cpu": "500m"}, {"cpu": "250m"}], (None, 75000, 768)),
        ("BestEffort", [{}, {}], (None, None, 2)),
    ],
)
def test_qos_class_kept_and_the_pod_cgroup_by_the_kubelets_rule(env, hierarchy, qos, resources, expected):
    containers = [
        limited(sh("sleep 1000 & wait", name), limits) if limits else sh("sleep 1000 & wait", name)
        for name, limits in zip(("a", "b"), resources, strict=True)
    ]
    created = env.pod("q", *containers)
    assert created["status"]["qos_class"] == qos  # the API server's, at creation
    uid = created["metadata"]["uid"]

    def running_and_ready(pod: dict[str, Any]) -> bool:
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or ()}
        return pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True"

    pod = env.wait("q", running_and_ready, "Running and Ready (the agent wrote its status several times)")
    assert pod["status"]["qosClass"] == qos
    memory, quota, shares = expected
    assert settings(hierarchy, cgroups.pod_path(env.node, uid)) == (memory, quota, weight(hierarchy, shares))
    first = resources[0]
    container = (
        int(cgroups.memory_bytes(first["memory"])) if "memory" in first else None,
        cgroups.quota_us(cgroups.milli_cpu(first["cpu"])) if "cpu" in first else None,
        weight(hierarchy, cgroups.shares(cgroups.milli_cpu(first.get("cpu", 0)))),
    )
    assert settings(hierarchy, cgroups.container_path(env.node, uid, "a")) == container

    env.api.delete_namespaced_pod("q", env.namespace, grace_period_seconds=1)
    env.gone("q")
    gone(hierarchy, cgroups.pod_path(env.node, uid), "the deleted pod")


def test_cgroups_left_by_gone_pods_go_at_the_agents_start_and_all_of_them_at_its_stop(cluster, tmp_path, hierarchy):
    node = f"limits-{uuid.uuid4().hex[:8]}"
    leftover = cgroups.container_path(node, str(uuid.uuid4()), "main")
    for folder in folders(hierarchy, leftover):
        folder.mkdir(parents=True)
    agent = start_agent(cluster, tmp_path / "agent", node)
    env = Env(cluster, f"na-limits-{uuid.uuid4().hex[:8]}", node)
    env.api.create_namespace({"metadata": {"name": env.namespace}})
    try:
        gone(hierarchy, leftover.rsplit("/", 1)[0], "a pod the API server does not know")
        created = env.pod("live", limited(sh("sleep 1000 & wait"), {"memory": "64Mi"}))
        env.phase("live", "Running")
        assert all(f.is_dir() for f in folders(hierarchy, cgroups.pod_path(node, created["metadata"]["uid"])))
        agent.stop()  # its pods' processes stop with it: their cgroups and the node's go too
        assert not any(f.exists() for f in folders(hierarchy, f"{cgroups.PARENT}/{node}"))
    finally:
        agent.stop()
        print(f"----- agent log (tail) -----\n{agent.log()[-4000:]}")
        env.api.delete_namespace(env.namespace)
        core(cluster).delete_node(node)
