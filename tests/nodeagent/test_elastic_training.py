"""examples/pytorch-elastic on the local cluster (issue 25): a Worker lost and replaced, then the job scaled up.

``kubectl apply -k`` of the example's overlay (controlplane/examples.py) with a checkpoint folder of this test's and
a longer run, the real operator (``mljob operator``), two node agents running every pod in a network namespace of
its own. Three Workers train; worker-1's pod is deleted with the nodes cordoned, as when its node goes (not worker 0:
its agent hosts the c10d rendezvous, docs/elastic.md): the two left train on as a group of 2 from the last
checkpoint while the replacement waits for room; uncordoned, it joins and the group is 3 again; then ``kubectl scale
mljob/pytorch-elastic --replicas=4`` adds worker-3, which joins the running group. The job must succeed with the
loss fallen, every re-formed group must have resumed from a checkpoint, and the operator must have said the
membership (``status.elastic``, ``MembershipChanged`` events). The times from the deletion to training resumed and
from the scale to the new Worker training are printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentkit import core, local_cluster

from controlplane.cluster import BIN, ControlPlane
from controlplane.examples import EXAMPLES, write_overlay
from controlplane.localcluster import LocalCluster
from controlplane.waiting import until
from mljob.nodeagent.network import missing_privileges

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = str(BIN / "kubectl")
NAMESPACE = "elastic"
JOB = "pytorch-elastic"
MLJOB = [sys.executable, "-c", "from mljob.cli import main; main()"]
DEADLINE = 300.0
"""Seconds for any one wait: generous for 2 shared cores."""
MEMBERSHIP = re.compile(
    r"^\[(?P<replica>worker-\d+)\] MEMBERSHIP world=(?P<world>\d+) rank=(?P<rank>\d+) "
    r"restart=(?P<restart>\d+) step=(?P<step>\d+)"
)
STEP = re.compile(r"^\[worker-\d+\] step (?P<step>\d+) world (?P<world>\d+) ")

pytestmark = [
    pytest.mark.frameworks,
    pytest.mark.slow,
    pytest.mark.skipif(missing_privileges() is not None, reason=str(missing_privileges())),
    pytest.mark.skipif(not (BIN / "coredns").exists(), reason="no CoreDNS binary: run `make controlplane`"),
]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Control plane, CoreDNS and two node agents, the MLJob CRD, the namespace."""
    with local_cluster(tmp_path_factory.mktemp("local"), "elastic", agents=2) as cluster:
        cp = cluster.control_plane
        cp.kubectl("apply", "-k", str(ROOT / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "crd/mljobs.mljob.io", "--timeout=60s")
        cp.kubectl("create", "namespace", NAMESPACE)
        yield cluster


@pytest.fixture(scope="module")
def operator(local: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``mljob operator`` on the host for the namespace; its log's path."""
    cp = local.control_plane
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    environ = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*MLJOB, "operator", "--namespace", NAMESPACE, "--standalone"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield log
    proc.terminate()
    proc.wait(30)
    print(f"----- operator log (tail) -----\n{log.read_text(errors='replace')[-6000:]}")


class Watcher:
    """``kubectl logs -f`` of every container the job's pods start (a recreated pod and a container restarted in
    place each get a log of their own), and each change of ``status.elastic.running`` with the time it was seen."""

    def __init__(self, cp: ControlPlane, folder: Path) -> None:
        self.cp, self.folder = cp, folder
        self.api = core(cp)
        import kubernetes

        self.custom = kubernetes.client.CustomObjectsApi(self.api.api_client)
        self.procs: dict[tuple[str, str, int], subprocess.Popen[bytes]] = {}
        self.paths: list[Path] = []
        """The logs in the order their containers were seen starting."""
        self.running: list[tuple[float, int]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(30)
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def status(self) -> dict[str, Any]:
        job = self.custom.get_namespaced_custom_object("mljob.io", "v1alpha1", NAMESPACE, "mljobs", JOB)
        return dict(job.get("status") or {})

    def _watch(self) -> None:
        import kubernetes

        while not self.stopped.wait(0.2):
            try:
                self._look()
            except kubernetes.client.ApiException as error:  # the job not created yet
                if error.status != 404:
                    raise

    def _look(self) -> None:
        """Start following each new container; note a new running count."""
        running = (self.status().get("elastic") or {}).get("running")
        if running is not None and (not self.running or self.running[-1][1] != running):
            self.running.append((time.monotonic(), running))
        for pod in self.api.list_namespaced_pod(NAMESPACE, label_selector=f"mljob.io/job-name={JOB}").items:
            replica = pod.metadata.name.removeprefix(f"{JOB}-")
            for s in pod.status.container_statuses or ():
                key = (replica, pod.metadata.uid, s.restart_count)
                if key in self.procs or not (s.state.running or s.state.terminated):
                    continue
                path = self.folder / f"{replica}.{pod.metadata.uid[:8]}.{s.restart_count}.log"
                self.paths.append(path)
                with open(path, "wb") as out:
                    self.procs[key] = subprocess.Popen(
                        [KUBECTL, "logs", "-f", "-n", NAMESPACE, pod.metadata.name],
                        env={**os.environ, "KUBECONFIG": str(self.cp.kubeconfig)},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )

    def lines(self) -> list[str]:
        """Every followed line, prefixed ``[replica] `` as ``mljob logs`` prints them, log after log."""
        return [line for _, line in self.numbered()]

    def numbered(self) -> list[tuple[tuple[int, int], str]]:
        """Each line with its place (the log's number, the line's): what a later look has that this one had not."""
        return [
            ((number, index), f"[{path.name.split('.')[0]}] {line}")
            for number, path in enumerate(list(self.paths))
            for index, line in enumerate(path.read_text(errors="replace").splitlines())
        ]

    def memberships(self, after: set[tuple[int, int]] | None = None) -> list[re.Match[str]]:
        """The MEMBERSHIP lines, less those at the places in ``after``."""
        assert self.stopped.is_set() or self.thread.is_alive(), "the watcher stopped (its exception is above)"
        old = after or set()
        return [m for place, line in self.numbered() if place not in old and (m := MEMBERSHIP.match(line))]

    def places(self) -> set[tuple[int, int]]:
        return {place for place, _ in self.numbered()}


def overlay(tmp_path: Path) -> Path:
    """The example's overlay, its job.yaml copy given this test's checkpoint folder and a run of about a minute."""
    dest = write_overlay(EXAMPLES / JOB, tmp_path / "overlay")
    job = yaml.safe_load((dest / "job.yaml").read_text())
    container = job["spec"]["replicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    overrides = {"CHECKPOINT_DIR": str(tmp_path / "checkpoint"), "STEPS": "800"}
    container["env"] = [e for e in container["env"] if e["name"] not in overrides]
    container["env"] += [{"name": k, "value": v} for k, v in overrides.items()]
    (dest / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    return dest


def test_a_lost_worker_is_replaced_and_a_scaled_up_one_joins_the_training(
    local: LocalCluster, operator: Path, tmp_path: Path
) -> None:
    cp = local.control_plane
    (tmp_path / "logs").mkdir()
    kubectl = lambda *args: cp.kubectl(*args, "-n", NAMESPACE)  # noqa: E731
    with Watcher(cp, tmp_path / "logs") as watch:
        applied = time.monotonic()
        kubectl("apply", "-k", str(overlay(tmp_path)))
        until(lambda: any(m and int(m["step"]) >= 40 and m["world"] == "3" for m in map(STEP.match, watch.lines())),
              DEADLINE, "training past step 40 with world=3", interval=0.2)  # fmt: skip
        print(f"apply -> step 40 with world=3: {time.monotonic() - applied:.1f} s")

        # A Worker lost with its node: the nodes cordoned (no room for a replacement), its pod deleted at once.
        for node in local.agent_names:
            kubectl("cordon", node)
        seen = watch.places()
        deleted = time.monotonic()
        kubectl("delete", "pod", f"{JOB}-worker-1", "--grace-period=0", "--force", "--wait=false")
        resumed = until(lambda: [m for m in watch.memberships(seen) if m["world"] == "2"], DEADLINE,
                        "the two left to train on as a group of 2", interval=0.1)  # fmt: skip
        resumed_in = time.monotonic() - deleted
        print(f"pod deleted -> training resumed with 2: {resumed_in:.1f} s ({resumed[0].group(0)})")
        until(lambda: len({m["replica"] for m in watch.memberships(seen) if m["world"] == "2"}) == 2, DEADLINE,
              "both survivors in the group of 2", interval=0.2)  # fmt: skip
        assert watch.status().get("phase") == "Running"
        # Room again: the replacement (Pending until now) joins, and the group is 3 again.
        seen = watch.places()
        for node in local.agent_names:
            kubectl("uncordon", node)
        until(lambda: len({m["replica"] for m in watch.memberships(seen) if m["world"] == "3"}) == 3, DEADLINE,
              "the replacement to train in a group of 3", interval=0.2)  # fmt: skip

        # A Worker added.
        seen = watch.places()
        scaled = time.monotonic()
        kubectl("scale", f"mljob/{JOB}", "--replicas=4")
        joined = until(lambda: [m for m in watch.memberships(seen) if m["replica"] == "worker-3"], DEADLINE,
                       "worker-3 to train", interval=0.1)  # fmt: skip
        joined_in = time.monotonic() - scaled
        print(f"scale to 4 -> worker-3 training: {joined_in:.1f} s ({joined[0].group(0)})")

        def finished() -> str | None:
            phase = watch.status().get("phase")
            return str(phase) if phase in ("Succeeded", "Failed") else None

        phase = until(finished, DEADLINE, f"{JOB} to finish", interval=0.2)
        status = watch.status()
        pods = kubectl("get", "pods", "-o", "wide")
    lines = watch.lines()
    memberships = [m.group(0) for m in watch.memberships()]
    events = json.loads(kubectl("get", "events", "--field-selector", "reason=MembershipChanged", "-o", "json"))
    changes = [(e["lastTimestamp"] or e["eventTime"], e["message"]) for e in events["items"]]
    print("memberships seen in the logs:\n" + "\n".join(memberships))
    print("status.elastic.running seen: " + ", ".join(f"{t - applied:.1f}s={n}" for t, n in watch.running))
    print("MembershipChanged events:\n" + "\n".join(f"{t} {m}" for t, m in changes))
    print(f"status: {json.dumps(status)}")

    assert phase == "Succeeded", f"{status}\n{pods}\n" + "\n".join(lines[-80:])
    results = [line for line in lines if line.startswith("[worker-0] RESULT ")]
    assert results, "\n".join(lines[-80:])
    assert results[-1].startswith("[worker-0] RESULT ok "), results
    # Only the first group started from scratch: each later one (torchrun's restart count is not a guide: only the
    # agent that saw the failure counts one) went on from the checkpoint.
    found = watch.memberships()
    assert sorted(m["replica"] for m in found if int(m["step"]) == 0) == ["worker-0", "worker-1", "worker-2"], (
        memberships
    )
    assert {m["replica"] for m in found if m["world"] == "2"} == {"worker-0", "worker-2"}, memberships
    assert [m for m in found if m["world"] == "4"], memberships
    assert {m["replica"] for m in found if m["world"] == "4"} == {"worker-0", "worker-1", "worker-2", "worker-3"}
    # The operator recreated the deleted pod (a deletion is no restart of the job: restartCount stays as it was),
    # created the scaled-up one, and said each change of membership.
    created = re.findall(r"created pod (\S+)", operator.read_text(errors="replace"))
    assert sorted(created) == [f"{JOB}-worker-{i}" for i in (0, 1, 1, 2, 3)], created
    messages = [m for _, m in sorted(changes)]
    assert any(m.startswith("2 of 3 Worker replicas running, was 3") for m in messages), messages
    assert any(m.startswith("4 of 4 Worker replicas running, was 3") for m in messages), messages
    assert (status["elastic"]["minReplicas"], status["elastic"]["maxReplicas"]) == (2, 4), status
    assert 4 in [n for _, n in watch.running], watch.running
