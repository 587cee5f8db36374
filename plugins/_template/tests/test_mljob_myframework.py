"""TODO: your framework's tests: the contract kit, then the exact wiring of representative jobs."""

from __future__ import annotations

import mljob_myframework
from mljob_myframework import MyFramework

from mljob import MLJob, Replica
from mljob.core.render import ServiceCluster
from mljob.core.validation import check_job
from mljob.plugin_testing import FrameworkContract, make_job
from mljob.plugins import load_plugins

FW = MyFramework()


class TestMyFrameworkContract(FrameworkContract):
    """Everything a framework must obey; see mljob/plugin_testing.py for the list."""

    framework = FW

    def sample_job(self) -> MLJob:
        return make_job(FW, {"Worker": 3}, options={"initTimeoutSeconds": 60})

    def invalid_jobs(self) -> list[MLJob]:
        """TODO: jobs your framework must refuse, each with a problem at a field path."""
        return [make_job(FW, {"Worker": 2}, options={"initTimeoutSeconds": 0})]


def test_exact_wiring() -> None:
    """Pin every variable of a representative job to its literal value."""
    job = make_job(FW, {"Worker": 2}, name="train", namespace="team", ports={"Worker": 4000})
    assert FW.env(job, Replica("Worker", 1), ServiceCluster.of(job, FW)) == {
        "MYFW_COORDINATOR": "train-worker-0.train.team.svc:4000",
        "MYFW_NUM_PROCESSES": "2",
        "MYFW_PROCESS_ID": "1",
        "MYFW_INIT_TIMEOUT": "300",
    }


def test_a_reserved_variable_set_by_the_user_is_a_problem() -> None:
    job = make_job(FW, {"Worker": 2}, env={"Worker": {"MYFW_PROCESS_ID": "0"}})
    checked = check_job(job, load_plugins(entry_points=False, extra=[mljob_myframework]))
    assert [p.path for p in checked.problems] == ["spec.replicaSpecs.Worker.template.spec.containers[0].env[0].name"]
