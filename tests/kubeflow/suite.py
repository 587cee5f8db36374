"""Kubeflow training-operator's own end-to-end suite, unmodified, against an operator on the local control plane.

The ``kubeflow-training`` wheel ships the suite as a package ``test`` (``test/conftest.py``, ``test/e2e/*.py``);
``make setup-kubeflow-e2e`` installs each wheel version into an environment of its own (``.venv-kubeflow-X``: the
wheels pin ``kubernetes<36``, the project's environment has 37). :func:`run` runs one version's suite there as a
subprocess, as Kubeflow's CI runs it (pytest, ``--namespace``, ``GANG_SCHEDULER_NAME`` for the gang run), against a
control plane on which an operator already serves the kinds (tests/kubeflow/operators.py starts one), and returns
each test's outcome from pytest's JUnit XML report.

No container runs here: the jobs' pods end on their own in the suite's namespaces (kwok's stage
controlplane/stages/kubeflow-e2e.yaml, Succeeded with exit code 0 5 s after they start), and every pod there has an
(empty) log the API server serves, which the suite reads. So the suite runs only in :data:`NAMESPACES`.

    with ControlPlane(log=print).start() as cp, operators.training_operator(cp, namespace=NAMESPACES[False], ...):
        result = run(cp, "1.9.4", gang=False, workdir=tmp)
        print(result.results["test_e2e_pytorchjob.py::test_sdk_e2e"].outcome)

What each run asks of the operator under test: it serves the ``kubeflow.org/v1`` kinds in the namespace (CRDs
installed, Established) and writes Kubeflow's conditions; for the gang run it creates a scheduler-plugins
``PodGroup`` (``scheduling.x-k8s.io/v1alpha1``) named after the job with ``minMember`` from
``runPolicy.schedulingPolicy.minAvailable`` and follows a change of it, while scheduler-plugins' scheduler runs
under the name the suite's pods ask for (``scheduler-plugins-scheduler``: :meth:`ControlPlane.start_coscheduler`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ("1.9.4", "1.8.1")
"""The wheels whose suites run: the last release of training-operator v1 and the operator's own release."""
NAMESPACES = {False: "kubeflow-e2e", True: "kubeflow-e2e-gang"}
"""The suite's namespace, plain and gang: the only ones kwok's stage and logs act in (kubeflow-e2e.yaml)."""
GANG_SCHEDULER = "scheduler-plugins"
"""The suite's GANG_SCHEDULER_NAME for the gang run; its pods then ask for scheduler ``scheduler-plugins-scheduler``."""
MPI = "e2e/test_e2e_mpijob.py"
"""The MPIJob tests: run unless ``mpi=False`` (mljob serves v1 MPIJobs through its conversion webhook)."""
TIMEOUT = 180.0
"""Seconds one test may take (pytest-timeout): a gang test takes about 45 (the suite polls every 15 s), while a
test whose job never finishes would wait 600 or 900."""
MODE_SKIPS = ("For plain scheduling", "For gang-scheduling")
"""The suite's own skip reasons for the tests of the other run (gang or plain)."""


class SuiteError(RuntimeError):
    """The suite could not run (no environment, pytest itself failed); the message ends with its output."""


@dataclass(frozen=True)
class Outcome:
    """One test: ``passed``, ``failed`` (an error in set-up or tear-down counts as failed) or ``skipped``."""

    test: str
    """``FILE::FUNCTION``, e.g. ``test_e2e_pytorchjob.py::test_sdk_e2e``."""
    outcome: str
    reason: str = ""
    """The first line of the failure: the first exception raised (the suite often raises another while cleaning
    up; that one is :attr:`message`), or the skip reason."""
    message: str = ""
    """The first line of the exception the test ended with, as pytest reports it."""
    seconds: float = 0.0

    @property
    def mode_skip(self) -> bool:
        """Skipped because it belongs to the other run (a gang test in the plain run, or the reverse)."""
        return self.outcome == "skipped" and self.reason in MODE_SKIPS


@dataclass
class SuiteRun:
    """One version's suite, plain or gang, against one operator."""

    version: str
    gang: bool
    namespace: str
    results: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0
    returncode: int = 0
    log: Path | None = None
    junit: Path | None = None

    @property
    def mode(self) -> str:
        return "gang" if self.gang else "plain"

    def counts(self) -> Counter[str]:
        """passed/failed/skipped over the tests of this run (the other run's tests left out)."""
        return Counter(o.outcome for o in self.results.values() if not o.mode_skip)

    def ran(self) -> list[Outcome]:
        """The tests of this run, by name (pytest-xdist reports them in the order they ended)."""
        return sorted((o for o in self.results.values() if not o.mode_skip), key=lambda o: o.test)


def venv(version: str) -> Path:
    """The suite's environment (``make setup-kubeflow-e2e``)."""
    return ROOT / f".venv-kubeflow-{version}"


def suite_dir(version: str) -> Path:
    """The wheel's ``test`` package in its environment's site-packages (never imported by name: the standard
    library has a ``test`` package too, and comes first on sys.path)."""
    found = sorted(venv(version).glob("lib/python3*/site-packages/test/e2e"))
    if not found:
        raise SuiteError(f"no Kubeflow e2e suite {version} in {venv(version)}: run `make setup-kubeflow-e2e`")
    return found[-1].parent


def clean_namespace(cp: ControlPlane, namespace: str) -> None:
    """The namespace, with what a previous run left deleted: every kubeflow.org object and, through the garbage
    collector (foreground: the delete returns once they are gone), its pods, services and PodGroups.

    The namespace itself stays, because an operator watching one namespace may have started before it (and one
    that was deleted under it may not see its next incarnation).
    """
    create_namespace(cp, namespace)
    kinds = cp.kubectl("api-resources", "--api-group=kubeflow.org", "--namespaced=true", "-o", "name").split()
    if kinds:
        cp.kubectl(
            "delete", ",".join(kinds), "--all", f"--namespace={namespace}", "--cascade=foreground", "--wait=true",
            "--timeout=180s", timeout=200,
        )  # fmt: skip


def create_namespace(cp: ControlPlane, namespace: str) -> None:
    """Create it if it is not there."""
    if not cp.kubectl("get", "namespace", namespace, "--ignore-not-found", "-o", "name").strip():
        cp.kubectl("create", "namespace", namespace)


def command(
    version: str,
    *,
    namespace: str,
    workdir: Path,
    timeout: float = TIMEOUT,
    workers: int | None = None,
    mpi: bool = True,
    pytest_args: tuple[str, ...] = (),
) -> list[str]:
    """The pytest command line: the wheel's ``test/e2e`` with its own conftest (``--namespace``), nothing of ours.

    An empty ini file (``-c``) and ``--rootdir`` keep the repository's pytest settings out (the environment lies
    inside the repository, which a search upwards for an ini file would find). ``workers`` runs the files side by
    side (pytest-xdist, one file per worker: a file's tests share job names); default one per file.
    """
    tests = suite_dir(version)
    ini = workdir / "pytest.ini"
    ini.write_text("[pytest]\n")
    files = sorted(p.name for p in (tests / "e2e").glob("test_e2e_*.py") if mpi or f"e2e/{p.name}" != MPI)
    workers = len(files) if workers is None else workers
    args = [
        str(venv(version) / "bin" / "python"), "-m", "pytest", str(tests / "e2e"),
        "-c", str(ini), f"--rootdir={tests}", f"--confcutdir={tests}",
        "-p", "no:cacheprovider", f"--timeout={timeout:g}", f"--namespace={namespace}",
        f"--junit-xml={workdir / 'junit.xml'}", "-o", f"junit_suite_name=kubeflow-training-{version}",
        "-rA",
    ]  # fmt: skip
    if not mpi:
        args += ["--deselect", MPI]
    if workers > 1:
        args += ["-n", str(workers), "--dist", "loadfile"]
    return [*args, *pytest_args]


def environment(kubeconfig: Path, gang: bool) -> dict[str, str]:
    """Ours, less what would steer the suite's pytest (a parent pytest's variables, a Python path, a gang setting)."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "PYTHON")) and k not in ("GANG_SCHEDULER_NAME", "VIRTUAL_ENV", "KUBECONFIG")
    }
    env = {**keep, "KUBECONFIG": str(kubeconfig), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    if gang:
        env["GANG_SCHEDULER_NAME"] = GANG_SCHEDULER
    return env


def run(
    cp: ControlPlane,
    version: str,
    *,
    gang: bool,
    workdir: Path,
    namespace: str | None = None,
    timeout: float = TIMEOUT,
    workers: int | None = None,
    mpi: bool = True,
    pytest_args: tuple[str, ...] = (),
) -> SuiteRun:
    """Run ``version``'s suite, plain or gang, in ``namespace`` (emptied first) against the operator serving it.

    The suite authenticates as user ``kubeflow-e2e-suite`` (the audit log tells its requests apart). Its output is
    in ``workdir``/pytest.log, its report in ``workdir``/junit.xml. ``timeout`` bounds each test; the whole run is
    bounded by it too (every test timing out one after another, plus a minute).
    """
    namespace = namespace or NAMESPACES[gang]
    if namespace not in NAMESPACES.values():
        raise ValueError(
            f"{namespace!r}: the suite runs only in {sorted(NAMESPACES.values())}, where kwok ends its pods and "
            "serves their logs (controlplane/stages/kubeflow-e2e.yaml)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    args = command(
        version, namespace=namespace, workdir=workdir, timeout=timeout, workers=workers, mpi=mpi,
        pytest_args=pytest_args,
    )  # fmt: skip
    kubeconfig = cp.user_kubeconfig("kubeflow-e2e-suite", ("system:masters",), workdir / "suite.kubeconfig")
    clean_namespace(cp, namespace)
    log = workdir / "pytest.log"
    junit = workdir / "junit.xml"
    junit.unlink(missing_ok=True)
    started = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run(
            args, env=environment(kubeconfig, gang), cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, timeout=timeout * 16 + 60, check=False,
        )  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode not in (0, 1) or not junit.exists():  # 1: tests failed; anything else: pytest did not run them
        tail = log.read_text(errors="replace")[-3000:]
        raise SuiteError(f"Kubeflow e2e {version} ({'gang' if gang else 'plain'}) exited {done.returncode}:\n{tail}")
    results = parse_junit(junit.read_text())
    return SuiteRun(version, gang, namespace, results, seconds, done.returncode, log, junit)


# --- pytest's JUnit XML report --------------------------------------------------------------------------------------


def parse_junit(text: str) -> dict[str, Outcome]:
    """Each test case of a report, by ``FILE::FUNCTION``, in the report's order."""
    results: dict[str, Outcome] = {}
    for case in ET.fromstring(text).iter("testcase"):
        module = (case.get("classname") or "").rsplit(".", 1)[-1]
        test = f"{module}.py::{case.get('name')}"
        seconds = float(case.get("time") or 0)
        outcome, reason, message = "passed", "", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = _first_line(child.get("message") or "")
                reason = first_error(child.text or "") or message
                if child.tag == "error":
                    reason = f"(set-up or tear-down) {reason}"
                break
            if child.tag == "skipped":
                outcome, reason = "skipped", _first_line(child.get("message") or "")
        results[test] = Outcome(test, outcome, reason, message, seconds)
    return results


def first_error(longrepr: str) -> str:
    """The first exception in a pytest failure text: its first ``E`` line; for a Kubernetes ``ApiException``, whose
    first line is only ``(422)``, with the HTTP reason and the API server's message (``... denied the request: ...``).
    """
    lines = [line[1:].strip() for line in longrepr.splitlines() if line.startswith("E ")]
    if not lines:
        return ""
    first = lines[0]
    if re.search(r"ApiException: \(\d+\)$", first):
        details = lines[1:4]
        reason = next((d.removeprefix("Reason:").strip() for d in details if d.startswith("Reason:")), "")
        body = next(
            (d.removeprefix("HTTP response body:").strip() for d in details if d.startswith("HTTP response body:")), ""
        )
        with contextlib.suppress(ValueError, AttributeError):
            body = str(json.loads(body).get("message") or body)
        first = " ".join(part for part in (first, reason, body and f"({body})") if part)
    first = re.sub(
        r"^(?:[A-Za-z_]\w*\.)+(?=\w+:)", "", first
    )  # kubernetes.client.exceptions.ApiException -> ApiException
    return _clip(" ".join(first.split()))


def _first_line(text: str) -> str:
    return _clip(text.strip().splitlines()[0]) if text.strip() else ""


def _clip(line: str, limit: int = 240) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."
