"""``python -m controlplane``: start the local control plane, print how to use it, stop it on Ctrl-C."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from controlplane.cluster import ControlPlane, StartError
from controlplane.examples import write_overlays
from controlplane.localcluster import LocalCluster
from mljob.nodeagent.network import missing_privileges


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m controlplane", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".controlplane"), help="its certs, data and logs")
    parser.add_argument(
        "--with",
        dest="addons",
        action="append",
        choices=("kueue", "coscheduling", "volcano-crds", "dns", "agent"),
        default=[],
        help="also start Kueue, scheduler-plugins' Coscheduling scheduler, or install Volcano's CRDs; dns: the "
        "pods' network namespace and CoreDNS; agent: that and a node agent whose pods run for real (root needed "
        "for both; no kwok Nodes then) (repeatable)",
    )
    parser.add_argument("--agents", type=int, default=1, help="how many node agents --with agent starts")
    parser.add_argument("--netns", default="mljob", help="the name of the pods' network namespace (dns, agent)")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)  # a fresh cluster every time: no stale etcd, no old certs

    def log(line: str) -> None:
        print(line, flush=True)

    local: LocalCluster | None = None
    if "dns" in args.addons or "agent" in args.addons:
        problem = missing_privileges()
        if problem:
            print(f"error: --with dns/agent: {problem}", file=sys.stderr)
            print(
                "Without root, `make cluster-kwok` (python -m controlplane without --with dns/agent) starts the "
                "control plane with kwok's simulated nodes instead: pods are scheduled, none runs.",
                file=sys.stderr,
            )
            return 1
        agents = args.agents if "agent" in args.addons else 0
        local = LocalCluster(args.workdir.resolve(), netns=args.netns, agents=agents, log=log)
        cp = local.control_plane
    else:
        cp = ControlPlane(args.workdir.resolve(), log=log)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if local is not None:
            local.start()
        else:
            cp.start()
        for addon in (a for a in args.addons if a not in ("dns", "agent")):
            if addon == "kueue":
                cp.start_kueue()
            elif addon == "coscheduling":
                cp.start_coscheduler()
            else:
                cp.install_crds("volcano")
    except StartError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        print(f"\n  export KUBECONFIG={cp.kubeconfig}\n", flush=True)
        nodes = [n.name for n in cp.nodes] + ([*local.agent_names] if local is not None else [])
        print("  nodes: " + ", ".join(nodes) + f"; logs in {cp.logs}; Ctrl-C stops it all.")
        if local is not None:
            print(f"  pods' network: netns {local.network.name}, cluster DNS on {local.dns.address}:53", flush=True)
        if local is not None and local.agent_names:
            overlays = write_overlays(args.workdir / "examples")
            where = os.path.relpath(args.workdir / "examples")
            where = str((args.workdir / "examples").resolve()) if where.startswith("..") else where
            print(
                f"  the examples as the agents run them (workingDir, PATH; docs/node-agent.md): kubectl apply -k "
                f"{where}/<{'|'.join(overlays)}>",
                flush=True,
            )
        while not stop.wait(1):
            dead = [name for name, ok in (local or cp).alive().items() if not ok]
            if dead:
                print(f"error: {', '.join(dead)} exited; see {cp.logs}", file=sys.stderr)
                return 1
        return 0
    finally:
        (local or cp).stop()
        print("control plane stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
