"""Katib's defaults hold for what mljob writes, judged by Katib v0.19.0's own code (tests/kubeflow/katib_conditions.py).

Katib reads a Kubeflow trial job in three places: the job's status, through its trial template's success and
failure conditions (gjson expressions; defaults in ``experiment_defaults.go``, judged by ``GetDeployedJobStatus``);
the pods its primary pod labels select (default ``training.kubeflow.org/job-role: master``), which get the metrics
collector; and the primary container, by name, in every pod of the trial (``mutatePodEnv``). Here the statuses
mljob's door writes in every state, training-operator's own, and Katib's example trial templates rendered by mljob;
tests/operator/test_e2e_katib.py runs every kind on the control plane.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mljob.core.desired import desire
from mljob.core.kubeflow.door import KUBEFLOW_KINDS, LABELS
from mljob.core.kubeflow.kinds import KINDS
from mljob.core.validation import parse_job
from mljob.plugins import load_plugins
from tests.kubeflow import katib_conditions as katib

KUBEFLOW_DEFAULTED = ("TFJob", "PyTorchJob", "XGBoostJob", "MPIJob")
"""The kinds mljob serves that Katib defaults: ``KubeflowJobKinds`` (constants.go:53-59) also has TrainJob,
not MXJob, JAXJob or PaddleJob."""
SUCCESS = 'status.conditions.#(type=="Succeeded")#|#(status=="True")#'  # constants.go:33
FAILURE = 'status.conditions.#(type=="Failed")#|#(status=="True")#'  # constants.go:36
PRIMARY = {"training.kubeflow.org/job-role": "master"}  # constants.go:47


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    try:
        katib.binary()
    except katib.BuildError as error:
        pytest.fail(str(error))


def job(kind: str, conditions: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "kubeflow.org/v1", "kind": kind, "metadata": {"name": "trial-1"}}
    if conditions is not None:
        body["status"] = {"conditions": conditions, **status}
    return body


def test_katib_defaults_its_three_kubeflow_kinds_and_leaves_the_others_to_the_experiment() -> None:
    verdicts = katib.judge([job(kind) for kind in KUBEFLOW_KINDS])
    for kind, v in zip(KUBEFLOW_KINDS, verdicts, strict=True):
        assert v["defaulted"] == (kind in KUBEFLOW_DEFAULTED), kind
        assert (v["successCondition"], v["failureCondition"], v["primaryPodLabels"]) == (SUCCESS, FAILURE, PRIMARY)
        assert (v["succeeded"], v["failed"], v["trial"]["condition"]) == (False, False, "Running")  # no status yet
    key, value = LABELS["leader"]
    assert {key: value} == PRIMARY  # the label mljob puts on the kind's primary replica


def test_the_gjson_that_judges_is_the_one_katibs_go_mod_pins() -> None:
    assert katib.resolved(katib.GJSON) == katib.katib_pin(katib.GJSON) == "v1.14.1"


def _mljob_condition(kind: str, status: str, message: str = "", at: int = 0) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": kind,
        "message": message,
        "lastTransitionTime": f"2026-01-01T00:00:{at:02d}Z",
    }


# MLJob-shaped statuses of each state a job passes through, as the planner writes them; the door turns each into
# the kind's shape. (state, conditions, whether Katib's success / failure condition must hold)
STATES: list[tuple[str, list[dict[str, Any]], bool, bool]] = [
    ("created", [_mljob_condition("Created", "True")], False, False),
    ("running", [_mljob_condition("Created", "True"), _mljob_condition("Running", "True", at=1)], False, False),
    (
        "restarting",
        [
            _mljob_condition("Created", "True"),
            _mljob_condition("Running", "False", at=1),
            _mljob_condition("Restarting", "True", "worker-0 exited with code 137 (OOMKilled)", at=2),
        ],
        False,
        False,
    ),
    (
        "suspended",
        [
            _mljob_condition("Created", "True"),
            _mljob_condition("Running", "False", at=1),
            _mljob_condition("Suspended", "True", at=2),
        ],
        False,
        False,
    ),
    (
        "succeeded",
        [
            _mljob_condition("Created", "True"),
            _mljob_condition("Running", "False", at=1),
            _mljob_condition("Succeeded", "True", "2 of 2 replicas succeeded", at=2),
        ],
        True,
        False,
    ),
    (
        "failed after restarting",
        [
            _mljob_condition("Created", "True"),
            _mljob_condition("Restarting", "False", at=2),
            _mljob_condition("Failed", "True", "worker-1 exited with code 1 (Error)", at=3),
        ],
        False,
        True,
    ),
]


def test_every_state_mljob_writes_is_judged_by_katib_as_the_state_it_is() -> None:
    bodies, expected = [], []
    for kind, door in KUBEFLOW_KINDS.items():
        for state, conditions, succeeded, failed in STATES:
            body = job(kind)
            body["status"] = door.status({"conditions": conditions, "replicaStatuses": {}}, body)
            bodies.append(body)
            outcome = "Succeeded" if succeeded else "Failed" if failed else "Running"
            message = next((c["message"] for c in conditions if c["type"] == outcome), "")
            reason = f"{kind}{outcome}" if outcome != "Running" else ""
            expected.append((kind, state, succeeded, failed, outcome, reason, message))
    verdicts = katib.judge(bodies)
    got = [
        (v["kind"], e[1], v["succeeded"], v["failed"], v["trial"]["condition"], v["trial"]["reason"],
         v["trial"]["message"])
        for v, e in zip(verdicts, expected, strict=True)
    ]  # fmt: skip
    assert got == expected


def _written(kind: str, status: str, message: str) -> dict[str, Any]:
    """A PyTorchJob condition as training-operator writes it."""
    at = "2026-01-01T00:00:00Z"
    reason = f"PyTorchJob{kind}"
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastUpdateTime": at,
            "lastTransitionTime": at}  # fmt: skip


def test_training_operators_status_and_mljobs_read_the_same_but_for_the_message() -> None:
    """The same two ends, as training-operator v1.9.3 writes them and as mljob's door does: Katib's trial gets the
    same condition and reason; only the message, which it copies into the trial's (``Trial has failed. Job message:
    ...``), is mljob's."""
    door = KUBEFLOW_KINDS["PyTorchJob"]
    # pytorchjob_controller.go:521, :386 (Running turned False at the end), :410 and :435, v1.9.3.
    created = _written("Created", "True", "PyTorchJob trial-1 is created.")
    running = _written("Running", "False", "PyTorchJob trial-1 is running.")
    succeeded = _written("Succeeded", "True", "PyTorchJob ns/trial-1 successfully completed.")
    failed = _written("Failed", "True", "PyTorchJob trial-1 is failed because 1 Worker replica(s) failed.")
    training_operator = [
        job("PyTorchJob", [created, running, succeeded]),
        job("PyTorchJob", [created, running, failed]),
    ]
    ends = [STATES[4][1], STATES[5][1]]
    mljob = []
    for conditions in ends:
        body = job("PyTorchJob")
        body["status"] = door.status({"conditions": conditions, "replicaStatuses": {}}, body)
        mljob.append(body)
    theirs, ours = katib.judge(training_operator), katib.judge(mljob)
    for t, o in zip(theirs, ours, strict=True):
        assert (t["succeeded"], t["failed"], t["trial"]["condition"], t["trial"]["reason"]) == (
            o["succeeded"], o["failed"], o["trial"]["condition"], o["trial"]["reason"],
        )  # fmt: skip
    assert [o["trial"]["message"] for o in ours] == ["2 of 2 replicas succeeded", "worker-1 exited with code 1 (Error)"]


# --- Katib's own trial templates, rendered by mljob ----------------------------------------------------------------

EXAMPLES = "examples/v1beta1/kubeflow-training-operator"


def katib_examples() -> list[tuple[str, dict[str, Any]]]:
    """Katib's example Experiments whose trial is a kind mljob serves: (file, its trialTemplate)."""
    found = []
    for path in sorted((Path(katib.katib_module()["Dir"]) / EXAMPLES).glob("*.yaml")):
        experiment = yaml.safe_load(path.read_text())
        template = experiment["spec"]["trialTemplate"]
        if template["trialSpec"]["kind"] in KINDS:
            found.append((path.name, template))
    return found


def test_katibs_example_trials_find_their_primary_pods_and_containers_in_what_mljob_renders() -> None:
    """Each example's primaryContainerName is the kind's default container (Katib has no default: its validator
    demands one, validator.go:314-317), and its primaryPodLabels (or Katib's default) select pods mljob renders,
    the default exactly one; every pod has the primary container (``mutatePodEnv`` refuses a pod without it)."""
    plugins = load_plugins()
    examples = katib_examples()
    assert sorted(t["trialSpec"]["kind"] for _, t in examples) == ["PyTorchJob", "TFJob", "XGBoostJob"]
    for name, template in examples:
        spec = copy.deepcopy(template["trialSpec"])
        kind = spec["kind"]
        text = re.sub(r"\$\{trialParameters\.\w+\}", "1", yaml.safe_dump(spec))
        body = {**yaml.safe_load(text), "metadata": {"name": "trial-1", "namespace": "team", "uid": "u-1"}}
        door = KUBEFLOW_KINDS[kind]
        view, problems = door.view(body)
        assert problems == [], name
        parsed, unparsed = parse_job(dict(view))
        assert parsed is not None, (name, unparsed)
        pods = desire(parsed, plugins, kind=door).pods
        assert template["primaryContainerName"] == KINDS[kind].container_name, name
        for pod in pods:
            assert template["primaryContainerName"] in [c["name"] for c in pod["spec"]["containers"]], name
        labels = template.get("primaryPodLabels") or PRIMARY
        primary = [p for p in pods if labels.items() <= p["metadata"]["labels"].items()]
        assert primary, (name, labels)
        if "primaryPodLabels" not in template:
            assert len(primary) == 1, name
