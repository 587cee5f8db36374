"""``python -m controlplane``: start the local control plane, print how to use it, stop it on Ctrl-C."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path

from controlplane.cluster import ControlPlane, StartError


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m controlplane", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".controlplane"), help="its certs, data and logs")
    parser.add_argument(
        "--with",
        dest="addons",
        action="append",
        choices=("kueue", "coscheduling", "volcano-crds"),
        default=[],
        help="also start Kueue, scheduler-plugins' Coscheduling scheduler, or install Volcano's CRDs (repeatable)",
    )
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)  # a fresh cluster every time: no stale etcd, no old certs
    cp = ControlPlane(args.workdir.resolve(), log=lambda line: print(line, flush=True))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cp.start()
        for addon in args.addons:
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
        print("  nodes: " + ", ".join(n.name for n in cp.nodes) + f"; logs in {cp.logs}; Ctrl-C stops it all.")
        while not stop.wait(1):
            dead = [name for name, ok in cp.alive().items() if not ok]
            if dead:
                print(f"error: {', '.join(dead)} exited; see {cp.logs}", file=sys.stderr)
                return 1
        return 0
    finally:
        cp.stop()
        print("control plane stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
