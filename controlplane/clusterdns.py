"""Cluster DNS for the node agent's pods: CoreDNS in the cluster's network namespace, reading the real API server.

The control plane stays where every other test has it, on the host's 127.0.0.1. The pods and CoreDNS live in the
cluster's private network namespace (mljob.nodeagent.network), which has no way out, so CoreDNS reaches the API
server through a relay: a TCP socket made *inside* that namespace (a socket keeps the namespace it was made in)
on its own 127.0.0.1, whose connections this process pipes to the API server on the host's 127.0.0.1. It is a
plain byte relay: TLS runs end to end, and the API server's certificate (IP SAN 127.0.0.1) still matches.

CoreDNS (controlplane/go/coredns, built by `make controlplane`) serves:

* ``cluster.local``, ``in-addr.arpa`` and ``ip6.arpa`` from the API server (the kubernetes plugin): Services,
  ``<hostname>.<subdomain>.<ns>.svc`` for pods named by a headless Service's EndpointSlices, reverse lookups;
* everything else as NXDOMAIN at once (the template plugin): nothing outside exists for a pod here, and a quick
  "no" beats a forward that can only time out. Plugins run in the compiled-in order, not the Corefile's, hence a
  block of its own.

It listens on port 53 of the bridge's address (glibc takes no port in resolv.conf), which every pod's
resolv.conf names.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from controlplane.cluster import BIN, ControlPlane, StartError, _parent_death_signal
from mljob.nodeagent.network import CLUSTER_DOMAIN, ClusterNetwork

READY_PORT = 8181
"""CoreDNS's ready plugin, on 127.0.0.1 of the cluster namespace: 200 once the kubernetes plugin has synced."""


def corefile(*, listen: str, kubeconfig: Path, ready_port: int = READY_PORT, domain: str = CLUSTER_DOMAIN) -> str:
    """The Corefile: the cluster's zones from the API server, NXDOMAIN for everything else."""
    return f"""\
{domain}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {listen}
    errors
    log . "{{remote}} {{type}} {{name}} {{rcode}} {{duration}}"
    ready 127.0.0.1:{ready_port}
    kubernetes {domain} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} local
        pods insecure
        endpoint_pod_names
        ttl 5
    }}
}}
.:53 {{
    bind {listen}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


class Relay:
    """Pipes every connection accepted on ``listener`` to ``upstream``, both ways, until either side closes."""

    def __init__(self, listener: socket.socket, upstream: tuple[str, int]) -> None:
        self.listener = listener
        self.upstream = upstream
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="relay", daemon=True)

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def start(self) -> Relay:
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # stopped
            threading.Thread(target=self._handle, args=(client,), name="relay-conn", daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        server = self._connect(client)
        if server is None:
            client.close()
            return
        with self._lock:
            self._open |= {client, server}
        upward = threading.Thread(target=self._pipe, args=(client, server), name="relay-pipe", daemon=True)
        upward.start()
        self._pipe(server, client)
        upward.join()
        with self._lock:
            self._open -= {client, server}
        client.close()
        server.close()

    def _connect(self, client: socket.socket) -> socket.socket | None:
        """The other end for a connection just accepted (None: refuse it): here, always the upstream."""
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            return None
        server.settimeout(None)
        return server

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        """Copy until the source ends, then pass the end on (the other direction may still be talking)."""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def http_status_in_netns(network: ClusterNetwork, port: int, path: str, timeout: float = 2.0) -> int:
    """GET http://127.0.0.1:PORT/PATH from inside the cluster namespace; the response's status code."""
    with network.socket() as sock:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = sock.recv(128).decode("latin-1")
    return int(head.split()[1])


class NetnsServer:
    """A control-plane server started inside the cluster namespace, reading the API server through a relay made
    there: its process, its relay, its log; ``_wait_http`` until it answers, ``stop`` both."""

    component = ""
    """The binary's name under bin/, its log's and its folder's."""

    def __init__(
        self,
        control_plane: ControlPlane,
        network: ClusterNetwork,
        *,
        bin_dir: Path = BIN,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.network = network
        self.bin = bin_dir
        self.log = log or (lambda message: None)
        self.workdir = control_plane.workdir / self.component
        self.log_path = control_plane.logs / f"{self.component}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.relay: Relay | None = None
        self.startup_seconds = 0.0

    def _binary(self) -> Path:
        binary = self.bin / self.component
        if not binary.exists():
            raise StartError(f"missing {binary}: run `make controlplane`")
        return binary

    def _kubeconfig(self, user: str, groups: tuple[str, ...], server: str) -> Path:
        """A kubeconfig for ``user`` that names ``server`` (the relay, as seen from inside the namespace)."""
        kubeconfig = self.control_plane.user_kubeconfig(user, groups=groups, path=self.workdir / "kubeconfig")
        config = yaml.safe_load(kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = server
        kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        return kubeconfig

    def _spawn(self, argv: list[str]) -> None:
        """Start ``argv`` inside the cluster namespace, its output to the log."""
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.network.enter(), *argv],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_parent_death_signal, cwd=self.workdir,
            )  # fmt: skip

    def _wait_http(self, port: int, path: str, timeout: float) -> None:
        """Until GET ``path`` on the namespace's 127.0.0.1:``port`` is 200; StartError with the log's end if not."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError, ValueError, IndexError):
                if http_status_in_netns(self.network, port, path) == 200:
                    return
            time.sleep(0.1)
        state = "exited" if self.proc.poll() is not None else "not ready"
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
        raise StartError(f"{self.component} {state} after start; its log ends:\n{tail}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.relay is not None:
            self.relay.stop()
            self.relay = None


class ClusterDNS(NetnsServer):
    """CoreDNS for ``network``'s pods, reading ``control_plane``; ``start()`` returns once it answers."""

    component = "coredns"

    @property
    def address(self) -> str:
        """Where pods send their queries (port 53): the bridge's address."""
        return self.network.gateway

    def start(self) -> ClusterDNS:
        binary = self._binary()
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        listener = self.network.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.relay = Relay(listener, ("127.0.0.1", self.control_plane.port)).start()
        kubeconfig = self._kubeconfig("system:coredns", ("system:masters",), f"https://127.0.0.1:{self.relay.port}")
        conf = self.workdir / "Corefile"
        conf.write_text(corefile(listen=self.address, kubeconfig=kubeconfig))
        self._spawn([str(binary), "-conf", str(conf)])
        try:
            self._wait_http(READY_PORT, "/ready", timeout=60.0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self.log(f"CoreDNS ready in {self.startup_seconds:.1f} s on {self.address}:53 in netns {self.network.name}")
        return self
