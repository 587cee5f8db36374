"""Each pod its own network: a network namespace per pod, on a bridge inside the local cluster's own namespace.

The layout (everything here needs root: CAP_SYS_ADMIN and CAP_NET_ADMIN)::

    host network namespace            control plane, operator, node agent on 127.0.0.1: left untouched
    └─ cluster namespace NAME         /run/netns/NAME: bridge mljob0 with 10.244.0.1/16, CoreDNS on 10.244.0.1:53;
       │                              no other interface, no route out: nothing a pod sends leaves the machine
       ├─ pod namespace NAME-pod-UID  eth0 = POD_IP/16, a veth whose peer is on the bridge; default via 10.244.0.1
       └─ ...

Pods of every node share the bridge and the /16, so they reach each other directly (no forwarding, no NAT). A
node's pod IPs come from its podCIDR (a /24 of the /16), allocated here, lowest free first.

A pod's processes run as ``[*sandbox.prefix, *argv]``: ``nsenter`` enters the pod's network namespace, ``unshare``
gives the command a private mount and UTS namespace, and a few lines of ``sh`` set the hostname and bind-mount the
pod's hosts file and resolv.conf over the machine's, then ``exec`` the command: the process the agent started is
the container's own, and the machine's files stay as they were. Each container gets its own mount namespace, as
under a container runtime (the agent's volume binds go in a further one it makes); the network is the pod's.

Everything is named after the pod's uid (its namespace ``NAME-pod-UID``, its veth ``veth`` + a hash of the uid, its
files under ``/run/mljob/netns/NAME/UID/``), so ``create`` and ``remove`` are idempotent and an agent that restarts
finds every sandbox it made. ``/run`` and network namespaces both go with a reboot.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from mljob.nodeagent.sandbox import PodIdentity, Sandbox

CLUSTER_CIDR = "10.244.0.0/16"
"""Every pod IP of the local cluster (not loopback: the API server refuses those in EndpointSlices)."""
GATEWAY = "10.244.0.1"
"""The bridge's address in the cluster namespace: every pod's default route, and where CoreDNS listens."""
NODE_CIDR_BASE = 128
"""Agent nodes' podCIDRs are 10.244.(128 + i).0/24: kwok hands its fake pods addresses from 10.244.0.1 upward."""
CLUSTER_DOMAIN = "cluster.local"
BRIDGE = "mljob0"
NETNS_DIR = Path("/run/netns")  # where `ip netns` keeps its named namespaces
STATE_DIR = Path("/run/mljob/netns")
TOOLS = ("ip", "nsenter", "unshare", "mount", "sh")
SERVICE_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}
"""What ClusterIP Services need of the cluster namespace (controlplane/serviceproxy.py): a ClusterIP is not on the
bridge, so a pod sends to its gateway and the namespace forwards the DNATed packet back onto the bridge; the reply
from a backend on the same bridge is bridged, and the bridge must show it to conntrack to be un-NATed."""

_CLONE_NEWNET = 0x40000000
_CAP_NET_ADMIN = 12
_CAP_SYS_ADMIN = 21


class NetworkError(RuntimeError):
    """A namespace, link or address could not be made; the message names the command and its error."""


# --- pure: names, addresses, files ---------------------------------------------------------------------------------


def netns_name(cluster: str, uid: str) -> str:
    """The pod's network namespace (a file under /run/netns): the cluster's name and the pod's uid."""
    return f"{cluster}-pod-{uid}"


def veth_name(uid: str) -> str:
    """The bridge side of the pod's veth pair: 15 characters (the kernel's limit), from a hash of the uid."""
    return "veth" + hashlib.sha256(uid.encode()).hexdigest()[:11]


def node_pod_cidr(index: int) -> str:
    """The podCIDR of the index-th agent node: a /24 in the upper half of the cluster's /16."""
    if not 0 <= index < 256 - NODE_CIDR_BASE:
        raise ValueError(f"node index {index} out of range 0..{255 - NODE_CIDR_BASE}")
    return f"10.244.{NODE_CIDR_BASE + index}.0/24"


def allocate_ip(pod_cidr: str, used: Iterable[str], reserved: Iterable[str] = (GATEWAY,)) -> str:
    """The lowest address of ``pod_cidr`` that is neither ``used`` nor ``reserved``, skipping its first (.1).

    The first host address of a node's range is kept back, as a CNI keeps it for the node's own gateway.
    """
    network = ipaddress.ip_network(pod_cidr)
    taken = {ipaddress.ip_address(a) for a in (*used, *reserved)}
    for address in list(network.hosts())[1:]:
        if address not in taken:
            return str(address)
    raise NetworkError(f"no free pod IP left in {pod_cidr} ({len(taken)} taken)")


def render_hosts(pod: PodIdentity, ip: str, cluster_domain: str = CLUSTER_DOMAIN) -> str:
    """The pod's /etc/hosts, as the kubelet writes it (managedHostsFileContent)."""
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if pod.subdomain:
        lines.append(f"{ip}\t{pod.hostname}.{pod.subdomain}.{pod.namespace}.svc.{cluster_domain}\t{pod.hostname}")
    else:
        lines.append(f"{ip}\t{pod.hostname}")
    return "\n".join(lines) + "\n"


def render_resolv(namespace: str, nameserver: str, cluster_domain: str = CLUSTER_DOMAIN) -> str:
    """The pod's resolv.conf under dnsPolicy ClusterFirst, as the kubelet writes it."""
    search = f"{namespace}.svc.{cluster_domain} svc.{cluster_domain} {cluster_domain}"
    return f"search {search}\nnameserver {nameserver}\noptions ndots:5\n"


# Run as `sh -c ENTER mljob-pod HOSTNAME HOSTS RESOLV COMMAND...` in a fresh mount and UTS namespace.
ENTER = r"""set -e
printf %s "$1" > /proc/sys/kernel/hostname
mount --bind "$2" /etc/hosts
mount --bind "$3" /etc/resolv.conf
shift 3
exec "$@"
"""


def pod_prefix(netns: Path, hostname: str, hosts: Path, resolv: Path) -> tuple[str, ...]:
    """The argv that takes a command into the pod: its network namespace, then a mount and UTS namespace of its
    own (private propagation: the binds never reach the machine's mount table) with the pod's hostname and files.

    Every step execs the next, so the process started with this prefix is the command's own. Mounts made by the
    command (or by a further ``unshare --mount`` after the prefix, as the agent's volumes are) see these binds.
    """
    return (
        "nsenter", f"--net={netns}", "--",
        "unshare", "--mount", "--uts", "--propagation", "private", "--",
        "sh", "-c", ENTER, "mljob-pod", hostname, str(hosts), str(resolv),
    )  # fmt: skip


# --- privileges and namespaces ----------------------------------------------------------------------------------


def capabilities_problem(effective: int) -> str | None:
    """Why a process with these effective capabilities (a CapEff bit mask) cannot make pod networks, or None."""
    if (effective >> _CAP_SYS_ADMIN) & 1 and (effective >> _CAP_NET_ADMIN) & 1:
        return None
    return (
        "a network namespace per pod needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to make namespaces, veth pairs "
        "and bind mounts; run as root (e.g. sudo), or without pod networks (every pod on the node's address, "
        "ports shared)"
    )


def missing_privileges() -> str | None:
    """Why pod namespaces cannot be made here (not root, a tool missing), or None when they can."""
    effective = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
    problem = capabilities_problem(effective)
    if problem:
        return problem
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"pod networks need {', '.join(missing)} on PATH (iproute2 and util-linux)"
    return None


def socket_in_netns(netns: Path, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in ``netns``: made by a short-lived thread that entered it (setns is per thread).

    A socket keeps the namespace it was made in, so a process in the host namespace can listen, connect or relay
    inside the cluster's with it.
    """
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter_and_make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            with open(netns) as target:
                if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({netns}): {os.strerror(errno)}")
                made.append(socket.socket(family, kind))
        except BaseException as error:  # handed to the caller's thread
            failed.append(error)
        # The thread ends here, in the namespace it entered: no other code runs in it.

    thread = threading.Thread(target=enter_and_make, name="netns-socket", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def _ip(*args: str, netns: str | None = None, batch: Sequence[str] = (), ok_errors: Sequence[str] = ()) -> str:
    """Run iproute2's ``ip`` (in ``netns`` by name), or a batch of its commands; raise NetworkError on failure.

    An error whose message contains one of ``ok_errors`` (e.g. "Cannot find device") counts as success.
    """
    argv = ["ip", *(("-n", netns) if netns else ()), *(("-batch", "-") if batch else args)]
    done = subprocess.run(
        argv, input="\n".join(batch) + "\n" if batch else None, capture_output=True, text=True, check=False
    )
    if done.returncode != 0 and not any(e in done.stderr for e in ok_errors):
        shown = " ; ".join(batch) if batch else " ".join(args)
        raise NetworkError(f"ip{' -n ' + netns if netns else ''} {shown}: {done.stderr.strip()}")
    return done.stdout


class ClusterNetwork:
    """The local cluster's private network namespace and its bridge: where pods, and CoreDNS, live.

    ``create()`` is idempotent; ``destroy()`` removes it with every pod namespace and file made for it.
    """

    def __init__(self, name: str = "mljob", *, cidr: str = CLUSTER_CIDR, gateway: str = GATEWAY) -> None:
        if "/" in name or len(name) > 64:
            raise ValueError(f"not a usable namespace name: {name!r}")
        self.name = name
        self.cidr = cidr
        self.gateway = gateway
        self.prefix_length = ipaddress.ip_network(cidr).prefixlen
        self.state = STATE_DIR / name

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def exists(self) -> bool:
        return self.path.exists()

    def enter(self) -> tuple[str, ...]:
        """The argv prefix that runs a command in the cluster namespace (CoreDNS, a node's own processes)."""
        return ("nsenter", f"--net={self.path}", "--")

    def create(self) -> ClusterNetwork:
        problem = missing_privileges()
        if problem:
            raise NetworkError(problem)
        if not self.exists():
            _ip("netns", "add", self.name)
            _ip(
                netns=self.name,
                batch=(
                    "link set lo up",
                    f"link add {BRIDGE} type bridge",
                    f"addr add {self.gateway}/{self.prefix_length} dev {BRIDGE}",
                    f"link set {BRIDGE} up",
                ),
            )
        bridge = _ip("-o", "-4", "addr", "show", "dev", BRIDGE, netns=self.name, ok_errors=("does not exist",))
        if f"{self.gateway}/{self.prefix_length}" not in bridge:  # a namespace left half made: not ours to guess
            raise NetworkError(f"netns {self.name} exists without its bridge {BRIDGE}: destroy() it first")
        _ip("netns", "exec", self.name, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in SERVICE_SYSCTLS.items()))
        self.state.mkdir(parents=True, exist_ok=True)
        return self

    def pod_namespaces(self) -> list[str]:
        """The names of the pod namespaces made for this cluster that are still there."""
        prefix = netns_name(self.name, "")
        return sorted(p.name for p in NETNS_DIR.glob(f"{prefix}*")) if NETNS_DIR.is_dir() else []

    def destroy(self) -> None:
        """Delete every pod namespace, the cluster namespace (its bridge and veths go with it) and the state files."""
        for name in self.pod_namespaces():
            _ip("netns", "delete", name, ok_errors=("No such file",))
        if self.exists():
            _ip("netns", "delete", self.name, ok_errors=("No such file",))
        shutil.rmtree(self.state, ignore_errors=True)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket inside the cluster namespace (to relay into it, or to probe CoreDNS from the host)."""
        return socket_in_netns(self.path, family, kind)


class NamespacedNetwork:
    """A :class:`PodNetwork` for one node: each pod its own network namespace, IP from ``pod_cidr``, DNS config.

    ``cluster`` must exist (the cluster bring-up creates it). ``nameserver`` is what the pods' resolv.conf names:
    CoreDNS, at the bridge's address. Safe to call from several threads; one instance per node.
    """

    def __init__(
        self,
        cluster: ClusterNetwork,
        pod_cidr: str,
        *,
        nameserver: str | None = None,
        cluster_domain: str = CLUSTER_DOMAIN,
    ) -> None:
        if not ipaddress.ip_network(pod_cidr).subnet_of(ipaddress.ip_network(cluster.cidr)):  # type: ignore[arg-type]
            raise ValueError(f"pod CIDR {pod_cidr} is not inside the cluster's {cluster.cidr}")
        self.cluster = cluster
        self.pod_cidr = pod_cidr
        self.nameserver = nameserver or cluster.gateway
        self.cluster_domain = cluster_domain
        self._lock = threading.Lock()

    # --- PodNetwork ---

    def create(self, pod: PodIdentity) -> Sandbox:
        if pod.host_network:  # the node's network (the cluster namespace) and the node's resolv.conf, as a kubelet
            return Sandbox(ip=self.cluster.gateway, prefix=self.cluster.enter())
        with self._lock:
            folder = self.cluster.state / pod.uid
            if (folder / "ready").exists() and self._complete(pod.uid):
                ip = (folder / "ip").read_text().strip()
            else:
                ip = self._make(pod)
            hosts, resolv = folder / "hosts", folder / "resolv.conf"
            _write_if_changed(hosts, render_hosts(pod, ip, self.cluster_domain))
            _write_if_changed(resolv, render_resolv(pod.namespace, self.nameserver, self.cluster_domain))
            (folder / "ready").touch()
        prefix = pod_prefix(NETNS_DIR / netns_name(self.cluster.name, pod.uid), pod.hostname, hosts, resolv)
        return Sandbox(ip=ip, prefix=prefix)

    def remove(self, pod: PodIdentity) -> None:
        if pod.host_network:
            return
        with self._lock:
            self._teardown(pod.uid)

    # --- for an agent that restarts ---

    def sandboxes(self) -> set[str]:
        """The uids of this node's pods that have a sandbox (or part of one): remove those whose pod is gone.

        A pod is this node's when its reserved IP is in the node's podCIDR: other nodes' agents share the cluster
        namespace and its state folder, and their pods are theirs to remove.
        """
        network = ipaddress.ip_network(self.pod_cidr)
        mine = set()
        for path in self.cluster.state.glob("*/ip"):
            with contextlib.suppress(OSError, ValueError):
                if ipaddress.ip_address(path.read_text().strip()) in network:
                    mine.add(path.parent.name)
        return mine

    def remove_uid(self, uid: str) -> None:
        """remove() for a pod known only by its uid (one deleted while the agent was down)."""
        with self._lock:
            self._teardown(uid)

    # --- the work ---

    def _used(self, but: str) -> list[str]:
        """The IPs other sandboxes hold. The state folder is the cluster's: another agent's Nodes' sandboxes are
        there too (from CIDRs of their own), one maybe between its folder and its ``ip`` file."""
        used = []
        for path in self.cluster.state.glob("*/ip"):
            if path.parent.name != but:
                with contextlib.suppress(FileNotFoundError):
                    if ip := path.read_text().strip():
                        used.append(ip)
        return used

    def _complete(self, uid: str) -> bool:
        if not (NETNS_DIR / netns_name(self.cluster.name, uid)).exists():
            return False
        links = _ip("-o", "link", "show", "dev", veth_name(uid), netns=self.cluster.name, ok_errors=("not exist",))
        return veth_name(uid) in links

    def _make(self, pod: PodIdentity) -> str:
        """A fresh sandbox for the pod (whatever was left of an earlier attempt removed first); its IP."""
        self._teardown(pod.uid)
        folder = self.cluster.state / pod.uid
        folder.mkdir(parents=True)
        ip = allocate_ip(self.pod_cidr, self._used(but=pod.uid), reserved=(self.cluster.gateway, self.nameserver))
        # Reserved before anything holds it, so no other pod gets it; whole or not at all for a reader.
        (folder / "ip.new").write_text(ip + "\n")
        (folder / "ip.new").replace(folder / "ip")
        ns, veth = netns_name(self.cluster.name, pod.uid), veth_name(pod.uid)
        _ip("netns", "add", ns)
        _ip(
            netns=self.cluster.name,
            batch=(
                f"link add {veth} type veth peer name eth0 netns {ns}",
                f"link set {veth} master {BRIDGE}",
                f"link set dev {veth} type bridge_slave hairpin on",
                f"link set {veth} up",
            ),
        )
        _ip(
            netns=ns,
            batch=(
                "link set lo up",
                f"addr add {ip}/{self.cluster.prefix_length} dev eth0",
                "link set eth0 up",
                f"route add default via {self.cluster.gateway} dev eth0",
            ),
        )
        return ip

    def _teardown(self, uid: str) -> None:
        """Remove the pod's veth (both ends), its namespace and its files; whatever of them exists."""
        if self.cluster.exists():
            _ip("link", "delete", veth_name(uid), netns=self.cluster.name, ok_errors=("Cannot find device",))
        ns = netns_name(self.cluster.name, uid)
        if (NETNS_DIR / ns).exists():
            _ip("netns", "delete", ns, ok_errors=("No such file",))
        shutil.rmtree(self.cluster.state / uid, ignore_errors=True)


def _write_if_changed(path: Path, text: str) -> None:
    """Write in place (a bind mount holds the inode, so a new file by rename would not be seen), only if needed."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
