"""Pod sandboxes for real: network namespaces on the cluster's bridge, with hostnames, hosts files and resolv.conf.

No control plane here: the sandboxes are made by :class:`NamespacedNetwork` in a cluster namespace of this module's
own, and plain processes (a tiny TCP server and client) stand in for containers.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mljob.nodeagent.network import (
    NETNS_DIR,
    ClusterNetwork,
    NamespacedNetwork,
    missing_privileges,
    netns_name,
    node_pod_cidr,
    veth_name,
)
from mljob.nodeagent.sandbox import PodIdentity, Sandbox

pytestmark = pytest.mark.skipif(missing_privileges() is not None, reason=str(missing_privileges()))

SERVER = """
import socket, sys
server = socket.socket()
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen()
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(socket.gethostname().encode())
    conn.close()
"""
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as conn:
    print(conn.recv(100).decode())
"""


@pytest.fixture(scope="module")
def cluster_net() -> Iterator[ClusterNetwork]:
    net = ClusterNetwork(f"mljob-test-net-{os.getpid()}")
    net.destroy()
    yield net.create()
    net.destroy()
    assert not net.exists()
    assert net.pod_namespaces() == []


@pytest.fixture
def network(cluster_net: ClusterNetwork) -> Iterator[NamespacedNetwork]:
    net = NamespacedNetwork(cluster_net, node_pod_cidr(0))
    yield net
    for uid in net.sandboxes():
        net.remove_uid(uid)


def pod(hostname: str, namespace: str = "train", subdomain: str | None = "job1") -> PodIdentity:
    return PodIdentity(str(uuid.uuid4()), hostname, namespace, hostname, subdomain)


def run(sandbox: Sandbox, *argv: str) -> str:
    done = subprocess.run([*sandbox.prefix, *argv], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def serve(sandbox: Sandbox, port: int) -> subprocess.Popen[str]:
    """A server in the sandbox that answers each connection with its hostname; returns once it listens."""
    proc = subprocess.Popen(
        [*sandbox.prefix, sys.executable, "-c", SERVER, str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the server's first line, or "" when it died
    if line.strip() != "listening":
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the server did not listen: {err}")
    return proc


@contextlib.contextmanager
def serving(*where: tuple[Sandbox, int]) -> Iterator[None]:
    """:func:`serve` in each (sandbox, port) for the block; every server killed after it."""
    servers = []
    try:
        for sandbox, port in where:
            servers.append(serve(sandbox, port))
        yield
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()


def ask(sandbox: Sandbox, address: str, port: int) -> str:
    return run(sandbox, sys.executable, "-c", CLIENT, address, str(port)).strip()


def test_two_sandboxes_reach_each_other_by_ip(network: NamespacedNetwork):
    a, b = network.create(pod("job1-worker-0")), network.create(pod("job1-worker-1"))
    assert a.ip != b.ip
    with serving((a, 7000), (b, 7001)):
        assert ask(a, b.ip, 7001) == "job1-worker-1"
        assert ask(b, a.ip, 7000) == "job1-worker-0"


def test_two_sandboxes_listen_on_the_same_port(network: NamespacedNetwork):
    """Two jobs' masters on one port (29500 here): each has its own network namespace."""
    first = network.create(pod("job1-master-0", subdomain="job1"))
    second = network.create(pod("job2-master-0", subdomain="job2"))
    client = network.create(pod("client", subdomain=None))
    with serving((first, 29500), (second, 29500)):
        assert ask(client, first.ip, 29500) == "job1-master-0"
        assert ask(client, second.ip, 29500) == "job2-master-0"


def test_a_sandbox_has_the_pods_hostname_hosts_file_and_resolv_conf_and_the_machine_keeps_its_own(
    network: NamespacedNetwork,
):
    hosts_before = Path("/etc/hosts").read_text()
    resolv_before = Path("/etc/resolv.conf").read_text()
    hostname_before = os.uname().nodename
    me = pod("job1-worker-0", namespace="train")
    sandbox = network.create(me)
    out = run(sandbox, "sh", "-c", "hostname; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf")
    hostname, hosts, resolv = out.split("---\n")
    assert hostname.strip() == "job1-worker-0"
    assert f"{sandbox.ip}\tjob1-worker-0.job1.train.svc.cluster.local\tjob1-worker-0" in hosts
    assert resolv == "search train.svc.cluster.local svc.cluster.local cluster.local\n" + (
        f"nameserver {network.nameserver}\noptions ndots:5\n"
    )
    # glibc finds the pod's own name (what gloo resolves to pick its interface) through the hosts file
    assert run(sandbox, "getent", "ahostsv4", "job1-worker-0").split()[0] == sandbox.ip
    addresses = run(sandbox, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert f"inet {sandbox.ip}/16" in addresses
    assert Path("/etc/hosts").read_text() == hosts_before
    assert Path("/etc/resolv.conf").read_text() == resolv_before
    assert os.uname().nodename == hostname_before


def test_create_and_remove_are_idempotent_and_a_restarted_agent_finds_its_sandboxes(
    network: NamespacedNetwork, cluster_net: ClusterNetwork
):
    me, other = pod("job1-worker-0"), pod("job1-worker-1")
    first = network.create(me)
    assert network.create(me) == first
    restarted = NamespacedNetwork(cluster_net, node_pod_cidr(0))  # a new agent: state from names and files only
    assert restarted.sandboxes() == {me.uid}
    assert restarted.create(me) == first
    assert restarted.create(other).ip != first.ip
    server = serve(first, 7100)
    try:
        assert ask(restarted.create(other), first.ip, 7100) == "job1-worker-0"
    finally:
        server.kill()
        server.wait()
    restarted.remove(me)
    restarted.remove(me)
    assert restarted.sandboxes() == {other.uid}


def test_a_half_made_sandbox_is_made_again(network: NamespacedNetwork, cluster_net: ClusterNetwork):
    """The agent died between creating the namespace and finishing: the next create starts over."""
    me = pod("job1-worker-0")
    sandbox = network.create(me)
    (cluster_net.state / me.uid / "ready").unlink()
    subprocess.run(["ip", "-n", cluster_net.name, "link", "delete", veth_name(me.uid)], check=True)
    again = network.create(me)
    assert again.ip == sandbox.ip  # the lowest free address again: its own
    assert run(again, "ip", "-o", "link", "show", "dev", "eth0")


def test_remove_leaves_no_namespace_no_veth_and_no_files(network: NamespacedNetwork, cluster_net: ClusterNetwork):
    me = pod("job1-worker-0")
    sandbox = network.create(me)
    holder = serve(sandbox, 7200)  # a process still in the namespace when the pod is removed
    holder.kill()
    holder.wait()
    network.remove(me)
    assert not (NETNS_DIR / netns_name(cluster_net.name, me.uid)).exists()
    assert (
        netns_name(cluster_net.name, me.uid)
        not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    )
    links = subprocess.run(["ip", "-n", cluster_net.name, "-o", "link"], capture_output=True, text=True, check=True)
    assert veth_name(me.uid) not in links.stdout
    assert "veth" not in links.stdout  # no other test's either: each removes its own
    assert not (cluster_net.state / me.uid).exists()
    assert network.sandboxes() == set()


def test_destroying_the_cluster_network_takes_every_pod_namespace_with_it():
    net = ClusterNetwork(f"mljob-test-gone-{os.getpid()}").create()
    try:
        pods = NamespacedNetwork(net, node_pod_cidr(1))
        made = [pods.create(pod(f"w-{i}")) for i in range(2)]
        assert [s.ip for s in made] == ["10.244.129.2", "10.244.129.3"]
        assert len(net.pod_namespaces()) == 2
    finally:
        net.destroy()
    assert not net.exists()
    assert net.pod_namespaces() == []
    assert not net.state.exists()


def test_a_host_network_pod_runs_in_the_cluster_namespace_with_the_nodes_files(network: NamespacedNetwork):
    host = PodIdentity(str(uuid.uuid4()), "hostnet", "train", "hostnet", host_network=True)
    sandbox = network.create(host)
    assert sandbox.ip == network.cluster.gateway
    assert f"inet {sandbox.ip}/16" in run(sandbox, "ip", "-4", "-o", "addr")
    network.remove(host)
    assert network.sandboxes() == set()


def test_pods_of_two_nodes_reach_each_other_and_each_node_lists_only_its_own(cluster_net: ClusterNetwork):
    """Two agents' nodes on one cluster network: one bridge, two podCIDRs."""
    node0, node1 = NamespacedNetwork(cluster_net, node_pod_cidr(0)), NamespacedNetwork(cluster_net, node_pod_cidr(1))
    here, there = pod("job1-worker-0"), pod("job1-worker-1")
    a, b = node0.create(here), node1.create(there)
    try:
        assert a.ip.startswith("10.244.128.")
        assert b.ip.startswith("10.244.129.")
        assert node0.sandboxes() == {here.uid}
        assert node1.sandboxes() == {there.uid}
        server = serve(b, 7300)
        try:
            assert ask(a, b.ip, 7300) == "job1-worker-1"
        finally:
            server.kill()
            server.wait()
    finally:
        node0.remove(here)
        node1.remove(there)
