"""Every kind of bad input a person is likely to hand ``mljob validate`` (and ``render``).

Each case asserts the contract of the command for bad input: exit code 1, no traceback, nothing
on stdout, and a message on stderr that names the field (``path.to.field: what is wrong``) and
says what is wrong in words a person can act on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import job_doc, template, write_yaml

from mljob.cli.app import app
from mljob.plugins import load_plugins

Doc = dict[str, Any]


def worker(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["replicaSpecs"]["Worker"]
    return spec


def container(doc: Doc, role: str = "Worker") -> Doc:
    found: Doc = doc["spec"]["replicaSpecs"][role]["template"]["spec"]["containers"][0]
    return found


def edit(change: Callable[[Doc], object], base: Callable[[], Doc] = job_doc) -> Doc:
    doc = copy.deepcopy(base())
    change(doc)
    return doc


# (id, document, expected stderr fragments: the field path first, then what the message must say)
DOC_CASES: list[tuple[str, Doc, list[str]]] = [
    (
        "unknown framework lists the installed ones",
        edit(lambda d: d["spec"].update(framework="caffe")),
        ["spec.framework: unknown framework 'caffe'", "installed: ", "testfw"],
    ),
    (
        "unknown role for the framework",
        edit(lambda d: d["spec"]["replicaSpecs"].update(Workers=d["spec"]["replicaSpecs"].pop("Worker"))),
        ["spec.replicaSpecs.Workers: unknown role 'Workers' for framework 'testfw'", "did you mean 'Worker'?"],
    ),
    (
        "negative replicas",
        edit(lambda d: worker(d).update(replicas=-1)),
        ["spec.replicaSpecs.Worker.replicas: must be at least 0, got -1"],
    ),
    (
        "replicas as a quoted string",
        edit(lambda d: worker(d).update(replicas="3")),
        ["spec.replicaSpecs.Worker.replicas: must be an integer, got '3'", "remove the quotes"],
    ),
    (
        "replicas not a whole number",
        edit(lambda d: worker(d).update(replicas=2.5)),
        ["spec.replicaSpecs.Worker.replicas: must be an integer, got 2.5"],
    ),
    (
        "replicas a boolean",
        edit(lambda d: worker(d).update(replicas=True)),
        ["spec.replicaSpecs.Worker.replicas: must be an integer, got true"],
    ),
    (
        "two chiefs where the framework allows one",
        edit(lambda d: d["spec"]["replicaSpecs"]["Chief"].update(replicas=2)),
        ["spec.replicaSpecs.Chief.replicas: testfw allows at most 1 Chief, got 2"],
    ),
    (
        "job name with capitals and an underscore",
        edit(lambda d: d["metadata"].update(name="My_Job")),
        ["metadata.name: 'My_Job' is not a DNS-1035 label", "lower-case"],
    ),
    (
        "job name so long the pod names exceed 63 characters",
        edit(lambda d: d["metadata"].update(name="a" * 55)),
        ["metadata.name: too long for its pod names", "-worker-2' (Worker) would be 64 characters", "63", "at most 54"],
    ),
    (
        "job name itself over 63 characters",
        edit(lambda d: d["metadata"].update(name="a" * 70)),
        ["metadata.name: ", "is 70 characters; a DNS label has at most 63"],
    ),
    (
        "namespace that is not a DNS label",
        edit(lambda d: d["metadata"].update(namespace="Team_A")),
        ["metadata.namespace: 'Team_A' is not a DNS-1123 label"],
    ),
    (
        "a variable the framework reserves",
        edit(lambda d: container(d).update(env=[{"name": "TESTFW_CONFIG", "value": "x"}])),
        [
            "spec.replicaSpecs.Worker.template.spec.containers[0].env[0].name: TESTFW_CONFIG is set by the testfw "
            "framework; remove it"
        ],
    ),
    (
        "bad restartPolicy",
        edit(lambda d: worker(d).update(restartPolicy="Sometimes")),
        ["spec.replicaSpecs.Worker.restartPolicy: must be one of 'Always', 'OnFailure', 'Never' or 'ExitCode'"],
    ),
    (
        "bad cleanPodPolicy",
        edit(lambda d: d["spec"].update(runPolicy={"cleanPodPolicy": "Some"})),
        ["spec.runPolicy.cleanPodPolicy: must be one of 'All', 'Running' or 'None'; got 'Some'"],
    ),
    (
        "empty container list",
        edit(lambda d: worker(d)["template"]["spec"].update(containers=[])),
        ["spec.replicaSpecs.Worker.template.spec.containers: at least one container is required"],
    ),
    (
        "no containers key",
        edit(lambda d: worker(d)["template"]["spec"].pop("containers")),
        ["spec.replicaSpecs.Worker.template.spec.containers: required field is missing"],
    ),
    (
        "no template",
        edit(lambda d: worker(d).pop("template")),
        ["spec.replicaSpecs.Worker.template: required field is missing"],
    ),
    (
        "container without an image",
        edit(lambda d: container(d).pop("image")),
        ["spec.replicaSpecs.Worker.template.spec.containers[0].image: required field is missing"],
    ),
    (
        "unknown top-level field",
        edit(lambda d: d.update(spc={})),
        ["spc: unknown field; did you mean 'spec'?"],
    ),
    (
        "unknown field in spec",
        edit(lambda d: d["spec"].update(replicas=2)),
        ["spec.replicas: unknown field; did you mean 'replicaSpecs'?"],
    ),
    (
        "unknown field in runPolicy",
        edit(lambda d: d["spec"].update(runPolicy={"backofLimit": 3})),
        ["spec.runPolicy.backofLimit: unknown field; did you mean 'backoffLimit'?"],
    ),
    (
        "unknown field in a replica spec",
        edit(lambda d: worker(d).update(replica=2)),
        ["spec.replicaSpecs.Worker.replica: unknown field; did you mean 'replicas'?"],
    ),
    (
        "unknown container field",
        edit(lambda d: container(d).update(imagePullPolcy="Always")),
        [
            "spec.replicaSpecs.Worker.template.spec.containers[0].imagePullPolcy: unknown field; "
            "did you mean 'imagePullPolicy'?"
        ],
    ),
    (
        "container field of the wrong type",
        edit(lambda d: container(d).update(args="python train.py")),
        ["spec.replicaSpecs.Worker.template.spec.containers[0].args: must be a list, got 'python train.py'"],
    ),
    (
        "container port as a string",
        edit(lambda d: container(d).update(ports=[{"containerPort": "80"}])),
        ["containers[0].ports[0].containerPort: must be an integer, got '80'"],
    ),
    (
        "wrong apiVersion",
        edit(lambda d: d.update(apiVersion="kubeflow.org/v1")),
        ["apiVersion: must be mljob.io/v1alpha1, got 'kubeflow.org/v1'"],
    ),
    (
        "wrong kind",
        edit(lambda d: d.update(kind="Job")),
        ["kind: must be MLJob, got 'Job'"],
    ),
    (
        "a Kubeflow kind says how to migrate",
        edit(lambda d: d.update(kind="PyTorchJob")),
        [
            "kind: must be MLJob, got 'PyTorchJob'",
            "`mljob convert FILE`",
            "spec.framework: pytorch",
            "spec.pytorchReplicaSpecs",
        ],
    ),
    (
        "unknown frameworkOptions key",
        edit(lambda d: d["spec"].update(frameworkOptions={"mdoe": "async"})),
        ["spec.frameworkOptions.mdoe: unknown field; did you mean 'mode'?"],
    ),
    (
        "no roles at all",
        edit(lambda d: d["spec"].update(replicaSpecs={})),
        ["spec.replicaSpecs: needs at least one role"],
    ),
    (
        "replicaSpecs as a list",
        edit(lambda d: d["spec"].update(replicaSpecs=[{"replicas": 1}])),
        ["spec.replicaSpecs: must be a mapping, got a list"],
    ),
    (
        "missing metadata",
        edit(lambda d: d.pop("metadata")),
        ["metadata: required field is missing"],
    ),
    (
        "labels under mljob.io/ are the operator's",
        edit(lambda d: worker(d)["template"].update(metadata={"labels": {"mljob.io/job-name": "x"}})),
        ["spec.replicaSpecs.Worker.template.metadata.labels.mljob.io/job-name: labels under mljob.io/"],
    ),
    (
        "two containers and none named for the framework",
        edit(
            lambda d: worker(d).update(template={"spec": {"containers": [*template("main")["spec"]["containers"]] * 2}})
        ),
        ["spec.replicaSpecs.Worker.template.spec.containers: 2 containers and none is named 'testfw'"],
    ),
]

TEXT_CASES: list[tuple[str, str, list[str]]] = [
    ("empty file", "", ["{path}: the file is empty", "mljob.io/v1alpha1"]),
    ("only comments", "# nothing here\n---\n", ["{path}: the file is empty"]),
    (
        "YAML syntax error names the line",
        "apiVersion: mljob.io/v1alpha1\nkind: MLJob\nmetadata:\n  name: x\n spec: [\n",
        ["{path}: line 5, column 2: YAML syntax error", "check the indentation", "' spec: ['"],
    ),
    ("tabs", "apiVersion: mljob.io/v1alpha1\nmetadata:\n\tname: x\n", ["{path}: line 3, column 1", "not tabs"]),
    (
        "duplicate key",
        "apiVersion: mljob.io/v1alpha1\nkind: MLJob\nmetadata:\n  name: x\n  name: y\n",
        ["{path}: line 5, column 3: YAML error: duplicate key 'name' (first set on line 4)"],
    ),
    ("a list, not a mapping", "- a\n- b\n", ["the document is a list, not a mapping"]),
    ("a string, not a mapping", "hello\n", ["the document is a string, not a mapping"]),
]


@pytest.fixture
def run_validate(runner, fake_plugin, tmp_path):
    def run(path: Path | str, *, command: str = "validate") -> Any:
        return runner.invoke(app, [command, str(path)])

    return run


def assert_rejected(result: Any, fragments: list[str]) -> None:
    """The bad-input contract: exit 1, no traceback, nothing on stdout, every fragment on stderr."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"


@pytest.mark.parametrize(("doc", "fragments"), [c[1:] for c in DOC_CASES], ids=[c[0] for c in DOC_CASES])
@pytest.mark.parametrize("command", ["validate", "render"])
def test_bad_document(run_validate, tmp_path, doc, fragments, command):
    assert_rejected(run_validate(write_yaml(tmp_path / "job.yaml", doc), command=command), fragments)


@pytest.mark.parametrize(("text", "fragments"), [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES])
def test_bad_text(run_validate, tmp_path, text, fragments):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    assert_rejected(run_validate(path), [fragment.format(path=path) for fragment in fragments])


def test_not_utf8(run_validate, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(b"apiVersion: mljob.io/v1alpha1\nkind: \xff\xfe\n")
    assert_rejected(run_validate(path), [f"{path}: not UTF-8 text (byte 36, line 2)"])


def test_missing_file(run_validate, tmp_path):
    assert_rejected(run_validate(tmp_path / "nope.yaml"), [f"{tmp_path / 'nope.yaml'}: no such file"])


def test_directory(run_validate, tmp_path):
    assert_rejected(run_validate(tmp_path), [f"{tmp_path}: is a directory"])


def test_unreadable_file(run_validate, tmp_path, monkeypatch):
    """CI runs as root, which reads a chmod-0 file, so the OS refusal is simulated at the read."""
    from pathlib import Path

    path = write_yaml(tmp_path / "job.yaml", job_doc())
    real_read = Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert_rejected(run_validate(path), [f"{path}: permission denied"])


def test_bad_stdin(runner, fake_plugin):
    result = runner.invoke(app, ["validate", "-"], input="kind: [\n")
    assert_rejected(result, ["<stdin>: line 2", "YAML syntax error"])


def test_every_problem_is_reported_at_once(run_validate, tmp_path):
    """Model errors do not hide template errors: one run lists everything to fix."""

    def break_four_things(d: Doc) -> None:
        worker(d).update(replicas=-1)
        d["spec"].update(runPolicy={"backofLimit": 3})
        d.update(x=1)
        container(d, "Chief").update(imag="python")

    result = run_validate(write_yaml(tmp_path / "job.yaml", edit(break_four_things)))
    assert_rejected(
        result,
        [
            "spec.replicaSpecs.Worker.replicas: ",
            "spec.runPolicy.backofLimit: ",
            "x: unknown field",
            "spec.replicaSpecs.Chief.template.spec.containers[0].imag: unknown field; did you mean 'image'?",
        ],
    )
    assert len(result.stderr.splitlines()) == 4


def test_several_documents_name_the_bad_one(run_validate, tmp_path):
    bad = edit(lambda d: worker(d).update(replicas=-1))
    result = run_validate(write_yaml(tmp_path / "jobs.yaml", job_doc(), bad))
    assert result.exit_code == 1
    assert result.stdout == "ok: MLJob default/mnist (testfw): Chief x1, Worker x3\n"
    assert result.stderr == "document 2: spec.replicaSpecs.Worker.replicas: must be at least 0, got -1\n"


# The real framework plugins: their own rules, through the same command.

REAL_CASES: list[tuple[str, str, dict[str, int], Callable[[Doc], object], list[str]]] = [
    (
        "pytorch: two masters",
        "pytorch",
        {"Master": 2, "Worker": 1},
        lambda d: None,
        ["spec.replicaSpecs.Master.replicas: pytorch allows at most 1 Master, got 2"],
    ),
    (
        "mxnet: two schedulers",
        "mxnet",
        {"Scheduler": 2, "Server": 1, "Worker": 1},
        lambda d: None,
        ["spec.replicaSpecs.Scheduler.replicas: mxnet allows at most 1 Scheduler, got 2"],
    ),
    (
        "mxnet: no scheduler",
        "mxnet",
        {"Server": 1, "Worker": 1},
        lambda d: None,
        ["spec.replicaSpecs: mxnet needs at least 1 Scheduler"],
    ),
    (
        "tensorflow: TF_CONFIG set by the user",
        "tensorflow",
        {"Chief": 1, "Worker": 2},
        lambda d: container(d).update(env=[{"name": "TF_CONFIG", "value": "{}"}]),
        [
            "spec.replicaSpecs.Worker.template.spec.containers[0].env[0].name: TF_CONFIG is set by the tensorflow "
            "framework; remove it"
        ],
    ),
    (
        "tensorflow: role spelled in lower case",
        "tensorflow",
        {"chief": 1, "Worker": 2},
        lambda d: None,
        ["spec.replicaSpecs.chief: unknown role 'chief' for framework 'tensorflow'", "did you mean 'Chief'?"],
    ),
    (
        "pytorch: unknown option",
        "pytorch",
        {"Worker": 2},
        lambda d: d["spec"].update(frameworkOptions={"nprocPerNod": 2}),
        ["spec.frameworkOptions.nprocPerNod: unknown field; did you mean 'nprocPerNode'?"],
    ),
]


@pytest.mark.parametrize(
    ("framework", "roles", "change", "fragments"), [c[1:] for c in REAL_CASES], ids=[c[0] for c in REAL_CASES]
)
def test_real_framework_rules(run_validate, tmp_path, framework, roles, change, fragments):
    assert load_plugins().framework(framework) is not None, f"mljob-{framework} is not installed: make setup"
    doc = edit(change, lambda: job_doc(framework, roles))
    assert_rejected(run_validate(write_yaml(tmp_path / "job.yaml", doc)), fragments)
