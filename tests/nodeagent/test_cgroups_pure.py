"""What cgroups a pod gets, by the kubelet's rules: shares and quota from quantities, the pod-level limits, the QoS
class, OOM detection, finding the hierarchy, the container's argv that joins them, and the files each version
writes (on a stand-in folder); no real cgroup touched."""

import pytest

from mljob.nodeagent import cgroups as cgroups_module
from mljob.nodeagent.cgroups import (
    V1,
    V2,
    Limits,
    Mount,
    cgroup_mounts,
    container_limits,
    cpu_weight,
    memory_bytes,
    milli_cpu,
    oom_killed,
    pod_limits,
    qos_class,
    quota_us,
    shares,
    unsupported_note,
)
from mljob.nodeagent.podspec import ContainerLaunch
from mljob.nodeagent.podstatus import exit_reason
from mljob.nodeagent.runtime import wrap

MI = 2**20


def c(name="c", requests=None, limits=None, **extra):
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v is not None}
    return {"name": name, "resources": resources, **extra}


def pod(*containers, init=()):
    return {"metadata": {"uid": "u"}, "spec": {"containers": list(containers), "initContainers": list(init)}}


@pytest.mark.parametrize(
    ("quantity", "milli"), [("1", 1000), ("200m", 200), ("0.5", 500), ("2.5", 2500), ("0.0001", 1), (2, 2000)]
)
def test_cpu_quantities_in_millicores_rounded_up(quantity, milli):
    assert milli_cpu(quantity) == milli


def test_memory_quantities_in_bytes():
    assert memory_bytes("64Mi") == 64 * MI
    assert memory_bytes("1G") == 10**9
    assert memory_bytes("1.5Gi") == 1536 * MI
    assert memory_bytes("100m") == 1  # 0.1 byte, rounded up as Quantity.Value does


@pytest.mark.parametrize(
    ("milli", "expected"), [(0, 2), (1, 2), (2, 2), (100, 102), (250, 256), (1000, 1024), (2500, 2560), (10**6, 262144)]
)
def test_shares_are_the_kubelets_milli_cpu_to_shares(milli, expected):
    assert shares(milli) == expected


@pytest.mark.parametrize(("milli", "expected"), [(0, None), (1, 1000), (10, 1000), (200, 20000), (4000, 400000)])
def test_quota_is_the_limit_share_of_a_100ms_period_at_least_1ms(milli, expected):
    assert quota_us(milli) == expected


def test_cpu_weight_for_cgroup_v2():
    assert [cpu_weight(s) for s in (2, 1024, 262144)] == [1, 39, 10000]


def test_container_limits():
    assert container_limits(c()) == Limits(2, None, None)
    assert container_limits(c(requests={"cpu": "500m", "memory": "1Gi"})) == Limits(512, None, None)
    got = container_limits(c(requests={"cpu": "100m"}, limits={"cpu": "200m", "memory": "64Mi"}))
    assert got == Limits(102, 20000, 64 * MI)
    # A request left out is its limit (the API server's defaulting): shares from the cpu limit.
    assert container_limits(c(limits={"cpu": "2"})) == Limits(2048, 200000, None)


def test_pod_memory_limit_is_the_sum_only_when_every_container_has_one():
    both = pod(c("a", limits={"memory": "64Mi"}), c("b", limits={"memory": "32Mi"}))
    assert pod_limits(both).memory == 96 * MI
    one = pod(c("a", limits={"memory": "64Mi"}), c("b"))
    assert pod_limits(one).memory is None
    # An init container counts: without a limit it leaves the pod unlimited.
    assert pod_limits(pod(c("a", limits={"memory": "64Mi"}), init=[c("i")])).memory is None


def test_pod_cpu_quota_and_shares_sum_the_containers():
    half = {"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}}
    p = pod(c("a", **half), c("b", **half))
    assert pod_limits(p) == Limits(512, 200000, None)
    no_quota = pod(c("a", limits={"cpu": "1"}), c("b", requests={"cpu": "1"}))
    assert pod_limits(no_quota) == Limits(2048, None, None)
    assert pod_limits(pod(c("a"), c("b"))) == Limits(2, None, None)  # BestEffort: the minimum


def test_pod_totals_take_the_largest_init_container_and_add_sidecars():
    regular = c("a", limits={"memory": "100Mi", "cpu": "1"})
    big_init = c("i", limits={"memory": "300Mi", "cpu": "1"})
    assert pod_limits(pod(regular, init=[big_init])).memory == 300 * MI
    sidecar = c("s", limits={"memory": "50Mi", "cpu": "1"}, restartPolicy="Always")
    # The sidecar runs beside the regular container (150) and beside the init container that follows it (350).
    assert pod_limits(pod(regular, init=[sidecar, big_init])).memory == 350 * MI
    assert pod_limits(pod(regular, init=[big_init, sidecar])).memory == 300 * MI


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        ([c()], "BestEffort"),
        ([c(limits={"cpu": "1", "memory": "1Gi"})], "Guaranteed"),  # requests default to the limits
        ([c(requests={"cpu": "1", "memory": "1Gi"}, limits={"cpu": "1", "memory": "1Gi"})], "Guaranteed"),
        ([c(requests={"cpu": "500m", "memory": "1Gi"}, limits={"cpu": "1", "memory": "1Gi"})], "Burstable"),
        ([c(limits={"memory": "1Gi"})], "Burstable"),
        ([c(requests={"cpu": "1"})], "Burstable"),
        ([c("a", limits={"cpu": "1", "memory": "1Gi"}), c("b")], "Burstable"),
        ([c(requests={"cpu": "0"})], "BestEffort"),  # zero is none
    ],
)
def test_qos_class_as_the_api_server_computes_it(containers, expected):
    assert qos_class(pod(*containers)) == expected


def test_oom_is_a_sigkill_with_the_cgroups_oom_kill_count_up():
    assert oom_killed(137, 0, 1)
    assert oom_killed(137, 3, 4)  # a restart reuses the cgroup: the count before the run is the baseline
    assert not oom_killed(137, 1, 1)  # SIGKILLed by someone else
    assert not oom_killed(1, 0, 1)
    assert exit_reason(137, True) == "OOMKilled"
    assert exit_reason(137) == "Error"


def test_cgroup_mounts_from_mountinfo():
    text = (
        "34 25 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n"
        "35 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "36 25 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "37 25 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n"
        "38 25 0:33 / /with\\040space rw - tmpfs tmpfs rw\n"
    )
    mounts = cgroup_mounts(text)
    assert [(str(m.path), m.version) for m in mounts] == [
        ("/sys/fs/cgroup/cpu", 1),
        ("/sys/fs/cgroup/cpu,cpuacct", 1),
        ("/sys/fs/cgroup/memory", 1),
        ("/sys/fs/cgroup/unified", 2),
    ]
    assert mounts[1].controllers >= {"cpu", "cpuacct"}
    assert isinstance(mounts[0], Mount)


def test_unlimited_pods_are_warned_about_only_when_they_ask_for_resources():
    asks = pod(c(limits={"memory": "64Mi"}))
    note = unsupported_note(None, "no cgroup v1 memory controller mounted", asks)
    assert note is not None
    assert "not enforced" in note
    assert "no cgroup v1 memory" in note
    assert unsupported_note(None, "why", pod(c())) is None  # BestEffort loses nothing
    assert unsupported_note(object(), "", asks) is None  # type: ignore[arg-type]


def test_the_container_joins_its_cgroups_before_its_binds_and_command():
    launch = ContainerLaunch(("python", "-c", "pass"), {}, "/w")
    argv = wrap(launch, (), ("unshare",), [("/cg/memory/p/c", "/sys/fs/cgroup/memory"), ("/cg/cpu/p/c", "/cg/cpu")])
    shim = argv.index("mljob-container")
    assert argv[shim + 1 :] == [
        "/cg/memory/p/c",
        "/sys/fs/cgroup/memory",
        "/cg/cpu/p/c",
        "/cg/cpu",
        "--",
        "",  # no scratch folder: missing mount points are made as before
        "--",
        "/w",
        "python",
        "-c",
        "pass",
    ]
    assert wrap(launch, (), ("unshare",))[shim + 1 :] == ["--", "", "--", "/w", "python", "-c", "pass"]


def test_v2_files_written_on_a_stand_in_tree(tmp_path):
    """cgroup v2's formats, on plain files (this machine's kernel runs v1): controllers enabled down to the pod."""
    hierarchy = V2(tmp_path)
    path = "mljob-node-agent/n/podu/c"
    (tmp_path / path).mkdir(parents=True)
    (tmp_path / path / "memory.swap.max").write_text("max\n")
    hierarchy.create(path, Limits(1024, 20000, 64 * MI))
    files = {f: (tmp_path / path / f).read_text().strip() for f in ("cpu.weight", "cpu.max", "memory.max")}
    assert files == {"cpu.weight": "39", "cpu.max": "20000 100000", "memory.max": str(64 * MI)}
    assert (tmp_path / path / "memory.swap.max").read_text().strip() == "0"
    enabled = [p.relative_to(tmp_path) for p in sorted(tmp_path.rglob("cgroup.subtree_control"))]
    assert [str(p) for p in enabled] == [
        "cgroup.subtree_control",
        "mljob-node-agent/cgroup.subtree_control",
        "mljob-node-agent/n/cgroup.subtree_control",
        "mljob-node-agent/n/podu/cgroup.subtree_control",
    ]
    hierarchy.create(path, Limits())
    assert (tmp_path / path / "cpu.max").read_text().strip() == "max 100000"
    assert (tmp_path / path / "memory.max").read_text().strip() == "max"
    assert hierarchy.joins(path) == [(str(tmp_path / path), str(tmp_path))]


def test_v1_memory_and_swap_limits_written_in_an_order_the_kernel_accepts(tmp_path, monkeypatch):
    """memsw may never be below the limit: lowering writes the limit first, raising writes memsw first."""
    folder = tmp_path / "memory" / "p"
    folder.mkdir(parents=True)
    for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
        (folder / name).write_text("9223372036854771712\n")
    order: list[str] = []
    real = cgroups_module._write
    monkeypatch.setattr(cgroups_module, "_write", lambda path, value: (order.append(path.name), real(path, value)))
    V1._memory(folder, 64 * MI)
    assert order == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    order.clear()
    V1._memory(folder, -1)
    assert order == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
