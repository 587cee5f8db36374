"""The TensorBoard plugin: the hook contract, the exact sidecar with the plugin on and off, validation, its script."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import mljob_tensorboard
import pytest
from mljob_tensorboard import CONTAINER, DEFAULT_IMAGE, IMAGE, LOGDIR, PORT, REPLICA, SCRIPT, Settings, sidecar

from mljob import MLJob, hookimpl
from mljob.core.render import render
from mljob.core.validation import check_job
from mljob.plugin_testing import Coordinated, HookContract, Peers, make_job, plugins_for, wire, with_annotations
from mljob.plugins import DISABLE_ENV, Plugins, load_plugins

COORDINATED, PEERS = Coordinated(), Peers()
LOGS = {LOGDIR: "/logs"}
EMPTY_DIR = {"name": "tensorboard-logs", "emptyDir": {}}


class TestTensorBoardContract(HookContract):
    """Jobs of the kit's frameworks with and without the annotations; a job of one peer is refused (no coordinator)."""

    plugin = mljob_tensorboard

    def act_on(self, job: MLJob) -> MLJob:
        peers = job.spec.replica_specs["Peer"].replicas if job.spec.framework == PEERS.name else 0
        return with_annotations(job, {**LOGS, REPLICA: "peer-1"} if peers > 1 else LOGS)

    def jobs(self) -> list[MLJob]:
        mounted = make_job(COORDINATED, {"Coordinator": 1, "Worker": 1}, name="mounted", namespace="hooks")
        data = wire(mounted)
        for spec in data["spec"]["replicaSpecs"].values():
            spec["template"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
            spec["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/logs"}]
        return [*super().jobs(), MLJob.model_validate(data)]

    def invalid_jobs(self) -> list[MLJob]:
        return [annotated(annotations) for annotations, _, _ in INVALID]


def annotated(annotations: dict[str, str], framework: Any = COORDINATED, **roles: int) -> MLJob:
    counts = roles or {"Coordinator": 1, "Worker": 2, "Store": 1}
    return make_job(framework, counts, name="run", namespace="ml", job_annotations=annotations)


def on() -> Plugins:
    return plugins_for(COORDINATED, PEERS, extra=[mljob_tensorboard])


def off() -> Plugins:
    return plugins_for(COORDINATED, PEERS)


def pods(job: MLJob, plugins: Plugins) -> dict[str, dict[str, Any]]:
    framework = plugins.frameworks[job.spec.framework]
    assert check_job(job, plugins).ok, check_job(job, plugins).problems
    return {o["metadata"]["name"]: o for o in render(job, framework, plugins) if o["kind"] == "Pod"}


def changed(job: MLJob) -> dict[str, dict[str, Any]]:
    """The pods the plugin changes: name -> (spec with it)."""
    with_it, without = pods(job, on()), pods(job, off())
    assert list(with_it) == list(without)
    return {name: pod["spec"] for name, pod in with_it.items() if pod != without[name]}


def expected_sidecar(logdir: str = "/logs", mount: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    mounts = [] if mount is None else [mount]
    return sidecar(Settings(logdir, **kwargs), mounts)


# -- on and off ---------------------------------------------------------------------------------------


def test_a_job_without_the_annotation_is_not_touched() -> None:
    job = annotated({})
    assert changed(job) == {}
    assert check_job(job, on()).problems == []


def test_the_coordinator_gets_the_sidecar_and_no_other_pod_changes() -> None:
    job = annotated(LOGS)
    (name, spec), *others = changed(job).items()
    assert (name, others) == ("run-coordinator-0", [])
    plain = pods(job, off())[name]["spec"]
    assert spec["initContainers"] == [expected_sidecar(mount={"name": "tensorboard-logs", "mountPath": "/logs"})]
    assert spec["volumes"] == [EMPTY_DIR]
    assert spec["containers"] == [
        {**plain["containers"][0], "volumeMounts": [{"name": "tensorboard-logs", "mountPath": "/logs"}]}
    ]
    rest = ("initContainers", "volumes", "containers")
    assert {k: v for k, v in spec.items() if k not in rest} == {k: v for k, v in plain.items() if k not in rest}


def test_the_exact_sidecar() -> None:
    assert expected_sidecar(mount={"name": "tensorboard-logs", "mountPath": "/logs"}) == {
        "name": "tensorboard",
        "image": DEFAULT_IMAGE,
        "restartPolicy": "Always",
        "command": ["sh", "-c", SCRIPT, "tensorboard"],
        "env": [{"name": "TENSORBOARD_LOGDIR", "value": "/logs"}, {"name": "TENSORBOARD_PORT", "value": "6006"}],
        "ports": [{"name": "tensorboard", "containerPort": 6006, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        "volumeMounts": [{"name": "tensorboard-logs", "mountPath": "/logs", "readOnly": True}],
    }


def test_worker_0_coordinates_a_job_without_a_coordinator() -> None:
    assert list(changed(annotated(LOGS, Worker=3))) == ["run-worker-0"]


def test_the_replica_named_gets_it() -> None:
    assert list(changed(annotated({**LOGS, REPLICA: "worker-1"}))) == ["run-worker-1"]
    assert list(changed(annotated({**LOGS, REPLICA: "peer-2"}, PEERS, Peer=3))) == ["run-peer-2"]


def test_a_volume_that_holds_the_log_directory_is_shared_read_only() -> None:
    data = wire(annotated({LOGDIR: "/data/runs/tb"}))
    for spec in data["spec"]["replicaSpecs"].values():
        spec["template"]["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "runs"}}]
        spec["template"]["spec"]["containers"][0]["volumeMounts"] = [
            {"name": "data", "mountPath": "/data", "subPath": "team-a"}
        ]
    spec = changed(MLJob.model_validate(data))["run-coordinator-0"]
    mount = {"name": "data", "mountPath": "/data", "subPath": "team-a"}
    assert spec["initContainers"] == [expected_sidecar("/data/runs/tb", mount)]
    assert spec["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "runs"}}]
    assert spec["containers"][0]["volumeMounts"] == [mount]


def test_every_container_of_the_pod_writes_to_the_empty_dir() -> None:
    data = wire(annotated(LOGS))
    for spec in data["spec"]["replicaSpecs"].values():
        spec["template"]["spec"]["containers"].append({"name": "shipper", "image": "fluent/fluent-bit:3"})
    spec = changed(MLJob.model_validate(data))["run-coordinator-0"]
    assert [c["volumeMounts"] for c in spec["containers"]] == [[{"name": "tensorboard-logs", "mountPath": "/logs"}]] * 2


def test_a_bucket_needs_no_volume() -> None:
    spec = changed(annotated({LOGDIR: "gs://bucket/bert/run-7", PORT: "7007", IMAGE: "example.com/tb:1"}))[
        "run-coordinator-0"
    ]
    assert spec["initContainers"] == [expected_sidecar("gs://bucket/bert/run-7", port=7007, image="example.com/tb:1")]
    assert "volumes" not in spec
    assert "volumeMounts" not in spec["containers"][0]


def test_the_user_s_init_containers_run_first() -> None:
    data = wire(annotated(LOGS))
    data["spec"]["replicaSpecs"]["Coordinator"]["template"]["spec"]["initContainers"] = [
        {"name": "fetch", "image": "busybox", "command": ["true"]}
    ]
    spec = changed(MLJob.model_validate(data))["run-coordinator-0"]
    assert [c["name"] for c in spec["initContainers"]] == ["fetch", CONTAINER]


def test_with_the_real_pytorch_plugin_the_master_gets_it() -> None:
    pytorch = pytest.importorskip("mljob_pytorch")
    framework = pytorch.PyTorch()
    job = make_job(framework, {"Master": 1, "Worker": 2}, name="bert", job_annotations=LOGS)
    plugins = plugins_for(framework, extra=[mljob_tensorboard])
    assert check_job(job, plugins).ok
    got = {o["metadata"]["name"]: o for o in render(job, framework, plugins) if o["kind"] == "Pod"}
    assert [n for n, p in got.items() if "initContainers" in p["spec"]] == ["bert-master-0"]


# -- the entry point: installed, it is on; MLJOB_DISABLE_PLUGINS turns it off -------------------------------------


def test_the_entry_point_loads_it_and_the_block_list_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    installed = load_plugins(extra=[_Coordinated()])
    if not installed.pm.has_plugin("tensorboard"):
        pytest.skip("mljob-tensorboard is not installed (pip install -e plugins/tensorboard)")
    job = annotated(LOGS)
    assert "initContainers" in render(job, COORDINATED, installed)[0]["spec"]
    monkeypatch.setenv(DISABLE_ENV, "tensorboard")
    blocked = load_plugins(extra=[_Coordinated()])
    assert not blocked.pm.has_plugin("tensorboard")
    assert "initContainers" not in render(job, COORDINATED, blocked)[0]["spec"]


class _Coordinated:
    @hookimpl
    def mljob_register_frameworks(self, register: Any) -> None:
        register(COORDINATED)


# -- validation ----------------------------------------------------------------------------------------------------

INVALID: list[tuple[dict[str, str], str, str]] = [
    ({PORT: "6006"}, "metadata.annotations.tensorboard.mljob.io/logdir", "required when any tensorboard.mljob.io/"),
    ({LOGDIR: "logs"}, "metadata.annotations.tensorboard.mljob.io/logdir", "'logs' must be an absolute path"),
    ({LOGDIR: "/"}, "metadata.annotations.tensorboard.mljob.io/logdir", "'/' must be an absolute path in the pod"),
    ({**LOGS, PORT: "http"}, "metadata.annotations.tensorboard.mljob.io/port", "'http' is not a port number"),
    ({**LOGS, PORT: "70000"}, "metadata.annotations.tensorboard.mljob.io/port", "'70000' is not a port number"),
    ({**LOGS, PORT: "7100"}, "metadata.annotations.tensorboard.mljob.io/port", "7100 is the coordinated Coordinator"),
    ({**LOGS, IMAGE: "tensorflow/tensorflow 2"}, "metadata.annotations.tensorboard.mljob.io/image", "not an image"),
    ({**LOGS, REPLICA: "worker-7"}, "metadata.annotations.tensorboard.mljob.io/replica", "'worker-7' is no replica"),
    ({**LOGS, REPLICA: "Worker0"}, "metadata.annotations.tensorboard.mljob.io/replica", "write <role>-<index>"),
    ({**LOGS, "tensorboard.mljob.io/logs": "/x"}, "metadata.annotations.tensorboard.mljob.io/logs", "unknown"),
]


@pytest.mark.parametrize(("annotations", "path", "message"), INVALID, ids=[str(a) for a, _, _ in INVALID])
def test_a_bad_annotation_is_a_problem_at_its_field(annotations: dict[str, str], path: str, message: str) -> None:
    checked = check_job(annotated(annotations), on())
    assert [p.path for p in checked.problems] == [path], checked.problems
    assert message in checked.problems[0].message


def test_peers_have_no_coordinator_so_the_replica_must_be_named() -> None:
    checked = check_job(annotated(LOGS, PEERS, Peer=2), on())
    assert [(p.path, p.message) for p in checked.problems] == [
        (
            "metadata.annotations.tensorboard.mljob.io/replica",
            "no replica of this peers job coordinates, so TensorBoard has no pod to join; "
            "name one with tensorboard.mljob.io/replica, e.g. 'peer-0'",
        )
    ]


@pytest.mark.parametrize(
    ("kind", "change", "path"),
    [
        ("container", {"containers": [{"name": "tensorboard", "image": "busybox"}]}, "containers[0].name"),
        ("init container", {"initContainers": [{"name": "tensorboard", "image": "b"}]}, "initContainers[0].name"),
        ("volume", {"volumes": [{"name": "tensorboard-logs", "emptyDir": {}}]}, "volumes[0].name"),
        (
            "port",
            {"containers": [{"name": "coordinated", "image": "b", "ports": [{"containerPort": 6006}]}]},
            None,
        ),
    ],
)
def test_what_the_sidecar_would_collide_with_in_its_pod(kind: str, change: dict[str, Any], path: str | None) -> None:
    data = wire(annotated(LOGS))
    data["spec"]["replicaSpecs"]["Coordinator"]["template"]["spec"].update(change)
    checked = check_job(MLJob.model_validate(data), on())
    where = "metadata.annotations.tensorboard.mljob.io/port"
    if path is not None:
        where = f"spec.replicaSpecs.Coordinator.template.spec.{path}"
    assert where in [p.path for p in checked.problems], (kind, checked.problems)
    other = wire(annotated(LOGS))
    other["spec"]["replicaSpecs"]["Worker"]["template"]["spec"].update(change)
    assert check_job(MLJob.model_validate(other), on()).ok, "only the pod that gets the sidecar matters"


# -- the sidecar's own script: it restarts TensorBoard itself and ends at once on SIGTERM ------------------------------


def fake_tensorboard(folder: Path, body: str) -> dict[str, str]:
    """A ``tensorboard`` on PATH that records its arguments and pid, then runs ``body``."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    program = bin_dir / "tensorboard"
    program.write_text(f'#!/bin/sh\necho "$$ $*" >> "{folder}/starts"\n{body}\n')
    program.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "TENSORBOARD_LOGDIR": "/logs",
        "TENSORBOARD_PORT": "6006",
        "TENSORBOARD_RESTART_SECONDS": "0.1",
    }


def starts(folder: Path, at_least: int) -> list[str]:
    """The recorded starts, once there are ``at_least`` (a bound on a hang, not a measure of speed)."""
    give_up = time.monotonic() + 120
    while time.monotonic() < give_up:
        lines = (folder / "starts").read_text().splitlines() if (folder / "starts").exists() else []
        if len(lines) >= at_least:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"tensorboard was started {len(lines)} times, not {at_least}")


def test_a_crashing_tensorboard_is_started_again_by_the_sidecar_not_the_kubelet(tmp_path: Path) -> None:
    env = fake_tensorboard(tmp_path, "exit 1")
    proc = subprocess.Popen(["sh", "-c", SCRIPT, "tensorboard"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = starts(tmp_path, 3)
    finally:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert {line.split(" ", 1)[1] for line in lines} == {"--logdir /logs --port 6006 --bind_all"}
    assert "tensorboard exited with status 1; starting it again" in err


def test_sigterm_stops_tensorboard_and_the_sidecar_with_status_0(tmp_path: Path) -> None:
    env = fake_tensorboard(tmp_path, "exec sleep 1000")
    proc = subprocess.Popen(["sh", "-c", SCRIPT, "tensorboard"], env=env)
    pid = int(starts(tmp_path, 1)[0].split()[0])
    born = _started(pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    give_up = time.monotonic() + 60
    while _alive(pid, born) and time.monotonic() < give_up:
        time.sleep(0.05)
    assert not _alive(pid, born), "tensorboard outlived its sidecar"


def _started(pid: int) -> str | None:
    """The process's start time (``/proc/PID/stat`` field 22): a recycled pid is another process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None


def _alive(pid: int, born: str | None = None) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] != "Z" and (born is None or fields[19] == born)
