"""What each replica would run: $(VAR) expansion, env, working dir, ports and GPUs. Nothing is spawned."""

import os
import socket
import sys
from pathlib import Path

import pytest
from localfw import Tiny, container

from mljob import LocalWiring, MLJob, Replica
from mljob.local.cluster import LocalCluster, free_ports
from mljob.local.gpus import GpuError, assign_gpus, detect_gpus, gpu_requests, parse_nvidia_smi, parse_visible
from mljob.local.launch import container_env, expand, plan, process_path
from mljob.local.runner import CannotRun, prepare

W0, W1, LEAD = Replica("Worker", 0), Replica("Worker", 1), Replica("Lead", 0)


def make_job(ctr: dict, replicas: int = 2, pod: dict | None = None) -> MLJob:
    template = {"spec": {"containers": [ctr], **(pod or {})}}
    return MLJob.model_validate(
        {
            "apiVersion": "mljob.io/v1alpha1",
            "kind": "MLJob",
            "metadata": {"name": "t"},
            "spec": {"framework": "tiny", "replicaSpecs": {"Worker": {"replicas": replicas, "template": template}}},
        }
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1y2z"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$$$(A)", "$1"),
        ("$A", "$A"),
        ("$", "$"),
        ("a$", "a$"),
        ("$(A", "$(A"),
        ("$()", "$()"),
        ("$(A)$(A)", "11"),
        ("${A}", "${A}"),
    ],
)
def test_expand_follows_the_kubelet(text, expected):
    assert expand(text, {"A": "1", "B": "2"}) == expected


def test_env_is_wiring_then_container_env_in_order_with_expansion():
    ctr = {"env": [{"name": "X", "value": "$(TINY_ME)-x"}, {"name": "Y", "value": "$(X)/$(Z)"}, {"name": "Z"}]}
    env, problems = container_env(ctr, {"TINY_ME": "worker-0"}, "p")
    assert problems == []
    assert env == {"TINY_ME": "worker-0", "X": "worker-0-x", "Y": "worker-0-x/$(Z)", "Z": ""}
    assert list(env) == ["TINY_ME", "X", "Y", "Z"]


def test_value_from_and_env_from_are_named_as_unsupported():
    ctr = {
        "env": [
            {"name": "OK", "value": "1"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
        "envFrom": [{"configMapRef": {"name": "c"}}],
    }
    _, problems = container_env(ctr, {}, "spec.replicaSpecs.Worker.template.spec.containers[0]")
    paths = [p.path for p in problems]
    assert paths == [
        "spec.replicaSpecs.Worker.template.spec.containers[0].envFrom",
        "spec.replicaSpecs.Worker.template.spec.containers[0].env[1].valueFrom",
    ]
    assert "TOKEN valueFrom is not supported by mljob run" in problems[1].message


def test_plan_builds_argv_env_and_cwd(tmp_path):
    ctr = container(
        ["python", "-c"], args=["print('$(TINY_ME)')", "$(GREETING)"], env=[{"name": "GREETING", "value": "hi"}]
    )
    job = make_job(ctr, pod={"terminationGracePeriodSeconds": 3})
    cluster = LocalCluster({W0: 20001, W1: 20002})
    result = plan(job, Tiny(), cluster, tmp_path, {"PATH": "/usr/bin", "KEEP": "me"})
    assert result.problems == []
    launch = result.launches[W1]
    assert launch.argv[1:] == ("-c", "print('worker-1')", "hi")
    assert Path(launch.argv[0]).name.startswith("python")
    assert launch.cwd == tmp_path
    assert launch.grace_seconds == 3.0
    assert launch.container_env == {
        "TINY_ME": "worker-1",
        "TINY_PEERS": "worker-0=127.0.0.1:20001,worker-1=127.0.0.1:20002",
        "GREETING": "hi",
    }
    assert launch.env["KEEP"] == "me"
    assert launch.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert any("python:3.11-slim not used locally" in n for n in result.notices)


def test_working_dir_relative_to_the_job_file_and_missing_one_is_a_problem(tmp_path):
    (tmp_path / "sub").mkdir()
    cluster = LocalCluster({W0: 20001})
    ok = plan(make_job(container(["true"], workingDir="sub"), 1), Tiny(), cluster, tmp_path, os.environ)
    assert ok.launches[W0].cwd == tmp_path / "sub"
    bad = plan(make_job(container(["true"], workingDir="/workspace/nope"), 1), Tiny(), cluster, tmp_path, os.environ)
    assert [p.path for p in bad.problems] == ["spec.replicaSpecs.Worker.template.spec.containers[0].workingDir"]


def test_command_is_required_and_must_exist(tmp_path):
    cluster = LocalCluster({W0: 20001})
    ctr = {"name": "tiny", "image": "x", "args": ["train.py"]}
    missing = plan(make_job(ctr, 1), Tiny(), cluster, tmp_path, os.environ)
    assert "the image's entrypoint is not available locally" in missing.problems[0].message
    typo = plan(make_job(container(["pythn-nope", "x.py"]), 1), Tiny(), cluster, tmp_path, os.environ)
    assert typo.problems[0].path.endswith("command[0]")
    assert "'pythn-nope' is not an executable" in typo.problems[0].message


def test_process_path_puts_this_python_first_once():
    folder = str(Path(sys.executable).parent)
    assert process_path({"PATH": "/a:/b"}).split(os.pathsep) == [folder, "/a", "/b"]
    assert process_path({"PATH": f"{folder}:/a"}).split(os.pathsep) == [folder, "/a"]


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(40)
    assert len(set(ports)) == 40
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_local_cluster_answers_only_its_replicas():
    cluster = LocalCluster.allocate([W0, W1])
    assert cluster.address(W0).host == "127.0.0.1"
    assert cluster.address(W0).port != cluster.address(W1).port
    with pytest.raises(KeyError):
        cluster.address(Replica("Worker", 2))


@pytest.mark.parametrize(
    ("requests", "available", "expected"),
    [
        ({W0: 1, W1: 1}, ["0", "1"], {W0: ("0",), W1: ("1",)}),
        ({LEAD: 0, W0: 2, W1: 1}, ["0", "1", "2", "3"], {LEAD: (), W0: ("0", "1"), W1: ("2",)}),
        ({W0: 1}, ["GPU-aa", "GPU-bb"], {W0: ("GPU-aa",)}),
        ({W0: 0, W1: 0}, [], {W0: (), W1: ()}),
    ],
)
def test_assign_gpus_gives_disjoint_devices(requests, available, expected):
    assert assign_gpus(requests, available) == expected


@pytest.mark.parametrize(
    ("available", "words"),
    [(["0"], "this machine has 1 (0)"), ([], "this machine has none")],
)
def test_assign_gpus_errors_when_more_are_asked_than_exist(available, words):
    with pytest.raises(GpuError, match=r"asks for 2 nvidia.com/gpu in all \(worker-0 \(1\), worker-1 \(1\)\)") as error:
        assign_gpus({W0: 1, W1: 1}, available)
    assert words in str(error.value)


def test_gpu_requests_read_limits_per_replica():
    job = make_job(container(["true"], resources={"limits": {"nvidia.com/gpu": 2}}))
    assert gpu_requests(job, Tiny()) == ({W0: 2, W1: 2}, [])
    assert gpu_requests(make_job(container(["true"])), Tiny()) == ({W0: 0, W1: 0}, [])


@pytest.mark.parametrize(("value", "devices"), [("0,1", ["0", "1"]), ("", []), ("-1", []), (" 2 , 3 ", ["2", "3"])])
def test_parse_cuda_visible_devices(value, devices):
    assert parse_visible(value) == devices


def test_parse_nvidia_smi():
    output = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)\n"
    assert parse_nvidia_smi(output) == ["0", "1"]


def fake_nvidia_smi(folder: Path, output: str, code: int = 0) -> str:
    """A folder holding an ``nvidia-smi`` that prints ``output``: a PATH for detect_gpus."""
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 2\ncat <<'END'\n{output}END\nexit {code}\n")
    script.chmod(0o755)
    return str(folder)


def test_detect_gpus_asks_nvidia_smi_when_cuda_visible_devices_is_unset(tmp_path):
    smi = "GPU 0: NVIDIA H100 (UUID: GPU-a)\n  MIG 1g.10gb Device 0: (UUID: MIG-b)\nGPU 1: NVIDIA H100 (UUID: GPU-c)\n"
    path = fake_nvidia_smi(tmp_path, smi)
    assert detect_gpus({"PATH": path}) == ["0", "1"]
    assert detect_gpus({"PATH": path, "CUDA_VISIBLE_DEVICES": "1"}) == ["1"]  # what this process may use wins
    assert detect_gpus({"PATH": path, "CUDA_VISIBLE_DEVICES": ""}) == []


def test_detect_gpus_finds_none_without_a_working_nvidia_smi(tmp_path):
    assert detect_gpus({"PATH": str(tmp_path)}) == []
    assert detect_gpus({"PATH": fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed\n", code=9)}) == []


def test_only_the_wiring_container_runs_and_the_others_are_named(tmp_path):
    sidecar = {"name": "logger", "image": "busybox", "command": ["sleep", "inf"]}
    init = {"name": "fetch", "image": "busybox", "command": ["true"]}
    job = make_job(container(["python", "-V"]), replicas=1, pod={"initContainers": [init]})
    job.spec.replica_specs["Worker"].template["spec"]["containers"].insert(0, sidecar)
    result = plan(job, Tiny(), LocalCluster({W0: 20001}), tmp_path, {"PATH": "/usr/bin"})
    assert result.problems == []
    assert result.launches[W0].argv[1:] == ("-V",)
    assert "Worker: only container 'tiny' runs locally, not logger, init container fetch" in result.notices
    assert any("busybox, python:3.11-slim not used locally" in n for n in result.notices)


class HomeBody(Tiny):
    """Leaves worker 0 out of a local run and gives worker 1 a file of the run (Framework.local_wiring)."""

    def local_wiring(self, job, replica, folder):
        if replica == W0:
            return LocalWiring(run=False)
        return LocalWiring(env={"TINY_PEERS": str(folder / "peers")}, files={"peers": "worker-1\n"})


def test_a_framework_may_leave_a_replica_out_and_ask_for_files(tmp_path):
    job = make_job(container(["python", "-c", "pass"]))
    cluster = LocalCluster({W0: 20001, W1: 20002})
    result = plan(job, HomeBody(), cluster, tmp_path, {"PATH": "/usr/bin"}, folder=tmp_path / "run")
    assert result.problems == []
    assert list(result.launches) == [W1]
    assert result.left_out == [W0]
    assert result.launches[W1].container_env == {"TINY_ME": "worker-1", "TINY_PEERS": str(tmp_path / "run" / "peers")}
    assert result.files == {"peers": "worker-1\n"}  # planned, not written: prepare() writes them
    assert not (tmp_path / "run").exists()
    assert "not started locally, as the tiny plugin asks: worker-0" in result.notices


def test_prepare_writes_the_files_into_the_runs_folder(tmp_path):
    job = make_job(container(["python", "-c", "pass"]))
    prepared, _ = prepare(job, HomeBody(), tmp_path, {"PATH": "/usr/bin"}, folder=tmp_path)
    assert (tmp_path / "peers").read_text() == "worker-1\n"
    assert list(prepared.launches) == [W1]


def test_a_job_none_of_whose_replicas_run_locally_cannot_run(tmp_path):
    class Absent(Tiny):
        def local_wiring(self, job, replica, folder):
            return LocalWiring(run=False)

    with pytest.raises(CannotRun, match="the tiny plugin starts none of the job's replicas locally"):
        prepare(make_job(container(["python", "-c", "pass"])), Absent(), tmp_path, {"PATH": "/usr/bin"}, tmp_path)
