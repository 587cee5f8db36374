"""``python -m controlplane --with dns`` (what ``make cluster`` runs, less the agent): up, usable, and gone after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from controlplane.cluster import BIN
from controlplane.waiting import until
from mljob.nodeagent.network import ClusterNetwork, NamespacedNetwork, missing_privileges, node_pod_cidr
from mljob.nodeagent.sandbox import PodIdentity

pytestmark = [
    pytest.mark.skipif(missing_privileges() is not None, reason=str(missing_privileges())),
    pytest.mark.skipif(not (BIN / "coredns").exists(), reason="no CoreDNS binary: run `make controlplane`"),
]
ROOT = Path(__file__).resolve().parents[2]


def test_the_cluster_command_brings_up_dns_for_pods_and_takes_it_all_down_on_ctrl_c(tmp_path: Path):
    net = ClusterNetwork(f"mljob-test-cmd-{os.getpid()}")
    out = tmp_path / "out.txt"
    command = [sys.executable, "-m", "controlplane", "--with", "dns", "--netns", net.name]
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [*command, "--workdir", str(tmp_path / "c")], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        until(lambda: "Ctrl-C stops it all" in out.read_text() or proc.poll() is not None, 120, "the cluster")
        text = out.read_text()
        assert proc.poll() is None, text
        assert "export KUBECONFIG=" in text
        assert f"pods' network: netns {net.name}, cluster DNS on 10.244.0.1:53" in text
        pods = NamespacedNetwork(net, node_pod_cidr(0))
        sandbox = pods.create(PodIdentity(str(uuid.uuid4()), "probe", "default", "probe"))

        def answer() -> list[str]:
            done = subprocess.run([*sandbox.prefix, "getent", "hosts", "kubernetes"], capture_output=True, text=True)
            return done.stdout.split()

        # The API server creates the `kubernetes` Service a moment after it is ready, and CoreDNS may have synced
        # before that: the name comes once the Service is seen (one run looked too early).
        expected = ["10.0.0.1", "kubernetes.default.svc.cluster.local"]
        until(lambda: answer() == expected, 60, "the cluster DNS to answer for the kubernetes Service", interval=0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, out.read_text()
        assert "control plane stopped" in out.read_text()
        assert not net.exists()
        assert net.pod_namespaces() == []  # the probe's too: the command's network took every pod's with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        net.destroy()
