"""``mljob node-agent``: its flags, and the start-up checks that end in one clear line instead of a traceback."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from mljob.nodeagent.node import NodeSpec
from mljob.nodeagent.sandbox import HostNetwork, PodNetwork

DEFAULT_STATE_DIR = Path("/var/lib/mljob-node-agent")
log = logging.getLogger("mljob.nodeagent")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mljob node-agent",
        description="Register Nodes and run the pods bound to them as host processes (no images, no container "
        "engine); serve their logs to the API server as a kubelet does. Needs root for the containers' namespaces.",
    )
    p.add_argument("--kubeconfig", help="Default: KUBECONFIG, then ~/.kube/config.")
    p.add_argument("--node", action="append", dest="nodes", help="A Node to register (repeat for several).")
    p.add_argument("--node-ip", default="127.0.0.1", help="The Nodes' InternalIP: where the API server dials logs.")
    p.add_argument("--port", type=int, default=10250, help="The kubelet API's port; 0 picks a free one.")
    p.add_argument("--bind-address", help="Where the kubelet API listens (default: --node-ip).")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="Pods' logs and emptyDir volumes.")
    p.add_argument("--cpu", default=str(os.cpu_count() or 1), help="Each Node's cpu capacity.")
    p.add_argument("--memory", default="8Gi", help="Each Node's memory capacity.")
    p.add_argument("--pods", default="110", help="Each Node's pod capacity.")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="A Node label (repeatable).")
    p.add_argument(
        "--pod-cidr",
        action="append",
        default=[],
        help="spec.podCIDR of each Node, in --node order (repeat); with --network namespaced its pods' IPs.",
    )
    p.add_argument(
        "--network",
        choices=("host", "namespaced"),
        default="host",
        help="host: every pod on the node's network and IP. namespaced: each pod its own network namespace on the "
        "local cluster's bridge, with its hostname, /etc/hosts and a resolv.conf naming the cluster DNS.",
    )
    p.add_argument(
        "--cluster-netns",
        default="mljob",
        help="With --network namespaced: the local cluster's private network namespace (python -m controlplane).",
    )
    p.add_argument("--tls-cert-file", type=Path, help="The kubelet API's serving certificate (from the cluster CA).")
    p.add_argument("--tls-private-key-file", type=Path)
    p.add_argument("--client-ca-file", type=Path, help="Accept only clients (the API server) with a cert from it.")
    p.add_argument(
        "--streaming-helper",
        type=Path,
        help="The kubelet-streaming binary that serves kubectl exec and port-forward (default: on PATH, else "
        "controlplane/bin/kubelet-streaming of this checkout, which `make controlplane` builds).",
    )
    p.add_argument("--lease-duration", type=int, default=40, help="Seconds: the Node Lease's duration.")
    p.add_argument("--lease-renew", type=float, default=10.0, help="Seconds between Lease renewals.")
    p.add_argument("--status-interval", type=float, default=60.0, help="Seconds between Ready heartbeats.")
    p.add_argument("--backoff", type=float, default=10.0, help="Seconds: the first restart back-off (doubles).")
    p.add_argument("--backoff-max", type=float, default=300.0, help="Seconds: the longest restart back-off.")
    p.add_argument(
        "--sync-frequency",
        type=float,
        default=60.0,
        help="Seconds between updates of ConfigMap, Secret, token and downward API volumes, and between tries of a "
        "volume or env that cannot be set up yet (the kubelet's --sync-frequency).",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pod_networks(kind: str, netns: str, node_ip: str, nodes: Sequence[NodeSpec]) -> dict[str, PodNetwork]:
    """Each Node's :class:`PodNetwork`; ValueError saying what is missing for the namespaced one."""
    if kind == "host":
        return {node.name: HostNetwork(node_ip) for node in nodes}
    from mljob.nodeagent.network import ClusterNetwork, NamespacedNetwork, missing_privileges

    problem = missing_privileges()
    if problem:
        raise ValueError(problem)
    cluster = ClusterNetwork(netns)
    if not cluster.exists():
        raise ValueError(
            f"no network namespace {netns!r} for the cluster's pods: the cluster bring-up makes it "
            "(python -m controlplane --with dns), or pass --cluster-netns"
        )
    missing = [node.name for node in nodes if not node.pod_cidr]
    if missing:
        raise ValueError(f"--network namespaced needs a --pod-cidr for every --node (none for {', '.join(missing)})")
    return {node.name: NamespacedNetwork(cluster, str(node.pod_cidr)) for node in nodes}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mljob.kube import Api, Credentials
    from mljob.nodeagent.agent import COMPONENT, Config, base_env, run_agent
    from mljob.nodeagent.runtime import IsolationError, detect_isolation
    from mljob.nodeagent.streaming import default_helper

    if (args.tls_cert_file is None) != (args.tls_private_key_file is None):
        print("mljob node-agent: --tls-cert-file and --tls-private-key-file go together", file=sys.stderr)
        return 2
    names = args.nodes or [socket.gethostname()]
    if len(args.pod_cidr) > len(names):
        print("mljob node-agent: more --pod-cidr than --node", file=sys.stderr)
        return 2
    try:
        isolation = detect_isolation()
    except IsolationError as error:
        print(f"mljob node-agent: {error}", file=sys.stderr)
        return 1
    from mljob.nodeagent.cgroups import detect

    hierarchy, no_cgroups = detect()
    if hierarchy is not None:
        log.info("resource limits: enforced with %s", hierarchy.description)
    else:
        log.warning("resource limits: not enforced, no usable cgroups (%s)", no_cgroups)
    bind = args.bind_address or args.node_ip
    port = args.port or _free_port(bind)
    labels = dict(item.split("=", 1) for item in args.label)
    cidrs: list[str | None] = [*args.pod_cidr, *[None] * (len(names) - len(args.pod_cidr))]
    nodes = tuple(
        NodeSpec(name, args.node_ip, port, args.cpu, args.memory, args.pods, labels, cidr)
        for name, cidr in zip(names, cidrs, strict=True)
    )
    try:
        networks = pod_networks(args.network, args.cluster_netns, args.node_ip, nodes)
    except ValueError as error:
        print(f"mljob node-agent: {error}", file=sys.stderr)
        return 1
    config = Config(
        nodes=nodes,
        state_dir=args.state_dir,
        bind_address=bind,
        tls_cert=args.tls_cert_file,
        tls_key=args.tls_private_key_file,
        client_ca=args.client_ca_file,
        lease_seconds=args.lease_duration,
        renew_seconds=args.lease_renew,
        status_seconds=args.status_interval,
        backoff_base=args.backoff,
        backoff_max=args.backoff_max,
        sync_seconds=args.sync_frequency,
        base_env=base_env(os.environ),
        hierarchy=hierarchy,
        no_cgroups=no_cgroups,
        streaming_helper=args.streaming_helper or default_helper(),
    )
    try:
        credentials = Credentials.load(args.kubeconfig)
    except Exception as error:  # the kubernetes package's config errors share no useful base class
        print(f"mljob node-agent: no cluster: {error}", file=sys.stderr)
        return 5
    asyncio.run(run_agent(Api(credentials, component=COMPONENT), networks, config, isolation))
    return 0
