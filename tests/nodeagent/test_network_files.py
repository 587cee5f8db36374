"""The pure parts of the pod network: names, IP allocation, the pod's /etc/hosts and resolv.conf, the prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from mljob.nodeagent.network import (
    GATEWAY,
    ClusterNetwork,
    NamespacedNetwork,
    NetworkError,
    allocate_ip,
    capabilities_problem,
    netns_name,
    node_pod_cidr,
    pod_prefix,
    render_hosts,
    render_resolv,
    veth_name,
)
from mljob.nodeagent.sandbox import PodIdentity

POD = PodIdentity(uid="u-1", name="job1-worker-0", namespace="train", hostname="job1-worker-0", subdomain="job1")


def test_hosts_name_the_pod_by_its_fqdn_under_its_subdomain_as_the_kubelet_does():
    assert render_hosts(POD, "10.244.128.2") == (
        "# Kubernetes-managed hosts file.\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "fe00::0\tip6-mcastprefix\n"
        "fe00::1\tip6-allnodes\n"
        "fe00::2\tip6-allrouters\n"
        "10.244.128.2\tjob1-worker-0.job1.train.svc.cluster.local\tjob1-worker-0\n"
    )


def test_hosts_without_a_subdomain_name_only_the_hostname():
    pod = PodIdentity(uid="u-2", name="lonely", namespace="train", hostname="lonely")
    assert render_hosts(pod, "10.244.128.9").splitlines()[-1] == "10.244.128.9\tlonely"


def test_resolv_conf_searches_the_pods_namespace_first_with_ndots_5():
    assert render_resolv("train", GATEWAY) == (
        "search train.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.244.0.1\noptions ndots:5\n"
    )


def test_allocation_takes_the_lowest_free_address_after_the_ranges_first():
    cidr = node_pod_cidr(0)
    assert cidr == "10.244.128.0/24"
    assert allocate_ip(cidr, []) == "10.244.128.2"
    assert allocate_ip(cidr, ["10.244.128.2", "10.244.128.4"]) == "10.244.128.3"
    assert allocate_ip(cidr, ["10.244.128.3"], reserved=["10.244.128.2"]) == "10.244.128.4"


def test_the_ips_held_skip_a_sandbox_another_agent_is_still_writing(tmp_path: Path):
    """Two agents share the cluster's state folder: one's sandbox can be a folder whose ``ip`` is not written yet."""
    cluster = ClusterNetwork("test")
    cluster.state = tmp_path
    for uid, ip in (("held", "10.244.128.2\n"), ("being-written", ""), ("mine", "10.244.128.3\n")):
        (tmp_path / uid).mkdir()
        (tmp_path / uid / "ip").write_text(ip)
    (tmp_path / "no-ip-yet").mkdir()
    net = NamespacedNetwork(cluster, node_pod_cidr(0))
    assert net._used(but="mine") == ["10.244.128.2"]


def test_allocation_fails_clearly_when_the_range_is_full():
    with pytest.raises(NetworkError, match=r"no free pod IP left in 10\.244\.130\.0/30"):
        allocate_ip("10.244.130.0/30", ["10.244.130.2"])


def test_node_ranges_stay_in_the_upper_half_of_the_cluster_range():
    assert node_pod_cidr(5) == "10.244.133.0/24"
    assert node_pod_cidr(127) == "10.244.255.0/24"
    with pytest.raises(ValueError, match="out of range"):
        node_pod_cidr(128)


def test_names_come_from_the_uid_alone_so_a_restarted_agent_finds_them():
    uid = "4fa72efb-dba0-438f-b7fb-8df45f978829"
    assert netns_name("mljob", uid) == f"mljob-pod-{uid}"
    assert veth_name(uid) == veth_name(uid)
    assert len(veth_name(uid)) == 15  # IFNAMSIZ - 1
    assert veth_name(uid) != veth_name(uid[:-1] + "0")


def test_prefix_enters_the_pods_netns_then_private_mount_and_uts_namespaces():
    prefix = pod_prefix(Path("/run/netns/x"), "job1-worker-0", Path("/s/hosts"), Path("/s/resolv.conf"))
    assert prefix[:3] == ("nsenter", "--net=/run/netns/x", "--")
    assert prefix[3:10] == ("unshare", "--mount", "--uts", "--propagation", "private", "--", "sh")
    assert prefix[-4:] == ("mljob-pod", "job1-worker-0", "/s/hosts", "/s/resolv.conf")


def test_privileges_need_both_sys_admin_and_net_admin():
    root = (1 << 21) | (1 << 12)
    assert capabilities_problem(root) is None
    assert "needs root" in (capabilities_problem(1 << 21) or "")
    assert "needs root" in (capabilities_problem(0) or "")
