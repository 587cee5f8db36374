"""Addresses of a local run: every replica on 127.0.0.1 with a port of its own.

The framework plugin computes its wiring from a :class:`~mljob.framework.Cluster`, the one
source of addresses, so the same ``Framework.env`` that writes DNS names for the operator writes
``127.0.0.1:<port>`` here. A replica keeps its port across restarts, as a pod keeps its DNS name.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mljob.framework import Address, Replica

LOCALHOST = "127.0.0.1"
PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 20000


@dataclass(frozen=True)
class LocalCluster:
    """A fixed port per replica on one host."""

    ports: Mapping[Replica, int]
    host: str = LOCALHOST

    @classmethod
    def allocate(cls, replicas: Iterable[Replica], host: str = LOCALHOST) -> LocalCluster:
        """A cluster with a distinct free port for each of ``replicas``."""
        wanted = list(replicas)
        return cls(dict(zip(wanted, free_ports(len(wanted), host), strict=True)), host)

    def address(self, replica: Replica) -> Address:
        if replica not in self.ports:
            raise KeyError(f"{replica} is not a replica of this job")
        return Address(self.host, self.ports[replica])


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; a common default elsewhere)."""
    try:
        low, high = (int(x) for x in PORT_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """``count`` distinct ports that nothing listens on now.

    They are picked below the kernel's ephemeral range when it leaves room, so that an outgoing
    connection of one replica (gloo, gRPC) cannot take the port another replica is about to
    listen on; the kernel's own choice (``bind(0)``) is the fallback. Every candidate is held
    open until all are chosen, so no port is handed out twice.
    """
    low, _ = ephemeral_range()
    candidates = list(range(LOWEST_PORT, low))
    random.shuffle(candidates)
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for port in candidates:
            if len(ports) == count:
                break
            sock = _try_bind(host, port)
            if sock is not None:
                held.append(sock)
                ports.append(port)
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
    finally:
        for sock in held:
            sock.close()
    return ports


def _try_bind(host: str, port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock
