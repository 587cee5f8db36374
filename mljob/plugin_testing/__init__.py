"""The contract kit for plugin authors: classes to subclass, helpers to build jobs and clusters.

A framework package subclasses :class:`FrameworkContract`; a package that only implements the
cross-cutting hooks (a sidecar, a policy) subclasses :class:`HookContract`::

    from mljob.plugin_testing import FrameworkContract, make_job

    class TestJaxContract(FrameworkContract):
        framework = Jax()

        def sample_job(self) -> MLJob:
            return make_job(self.framework, {"Worker": 3})

pytest then runs every check on the plugin: roles and ports; wiring for every replica of many
shapes of job, deterministic, taking every address from the ``cluster`` argument (checked against
:class:`FakeCluster`, whose odd host names and IP addresses give away any other); the reserved
variables; field paths in validation problems; the success rule; the operator's real render path;
and a real local run. ``docs/writing-a-plugin.md`` walks through it.

The modules: :mod:`~mljob.plugin_testing.jobs` (jobs, shapes, clusters, field paths),
:mod:`~mljob.plugin_testing.contract` (frameworks), :mod:`~mljob.plugin_testing.hooks`
(cross-cutting plugins), :mod:`~mljob.plugin_testing.local` (a local run as processes).
"""

from mljob.plugin_testing.contract import FrameworkContract, shape_of
from mljob.plugin_testing.hooks import (
    Coordinated,
    HookContract,
    Peers,
    pod_rule_problems,
    with_annotations,
    with_labels,
)
from mljob.plugin_testing.jobs import (
    FAKE_DOMAIN,
    FAKE_NETWORK,
    FakeCluster,
    field_path_problem,
    job_shapes,
    loopback_cluster,
    make_job,
    plugins_for,
    problems_outside_fields,
    wire,
)
from mljob.plugin_testing.local import LocalRun, run_locally

__all__ = [
    "FAKE_DOMAIN",
    "FAKE_NETWORK",
    "Coordinated",
    "FakeCluster",
    "FrameworkContract",
    "HookContract",
    "LocalRun",
    "Peers",
    "field_path_problem",
    "job_shapes",
    "loopback_cluster",
    "make_job",
    "plugins_for",
    "pod_rule_problems",
    "problems_outside_fields",
    "run_locally",
    "shape_of",
    "wire",
    "with_annotations",
    "with_labels",
]
