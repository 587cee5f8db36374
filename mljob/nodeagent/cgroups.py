"""Resource limits with cgroups, as the kubelet and runc set them: a cgroup per pod, one per container inside it.

Layout, under the root of each hierarchy (as the kubelet's ``kubepods``)::

    mljob-node-agent/<node>/pod<uid>/<container>

Flat below the node, without the kubelet's ``burstable``/``besteffort`` tiers: each pod's ``cpu.shares`` then
weighs against the others directly (the tiers' own shares would need the kubelet's agent-wide rebalancing).

What each cgroup gets is pure (:func:`container_limits`, :func:`pod_limits`, :func:`qos_class`), by the kubelet's
rules: ``cpu.shares`` from requests (MilliCPUToShares: 1024 per CPU, 2 at least), ``cpu.cfs_quota_us`` = limit x
100 ms, the memory limit; at pod level the sum of the containers' (init containers by the kubelet's max rule), a
quota or memory limit only when every container declares one. The I/O is at the edge: :func:`detect` finds the
hierarchy (cgroup v2 with the cpu and memory controllers, else v1) and :class:`V1`/:class:`V2` write the files.

A container's process joins its cgroups itself, first thing, before the command forks (runtime.MOUNT_SHIM), and
sees its own cgroup at the hierarchy's usual path (a read-only bind, as in a container), where frameworks read
their limits. An OOM kill is told apart from any other SIGKILL by the container cgroup's ``oom_kill`` counter,
which the kernel charges to the victim's cgroup whichever limit (the container's or the pod's) was hit.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, Protocol

from mljob.core.quantity import parse_quantity

PARENT = "mljob-node-agent"
PERIOD_US = 100_000
"""cpu.cfs_period_us, the kubelet's default (100 ms)."""
MIN_SHARES, MAX_SHARES, SHARES_PER_CPU = 2, 262_144, 1024
MIN_QUOTA_US = 1000
MOUNTINFO = Path("/proc/self/mountinfo")

# --- what a pod gets: pure -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """One cgroup's settings: ``cpu.shares``, the CFS quota per :data:`PERIOD_US` and the memory limit (None: none)."""

    shares: int = MIN_SHARES
    quota_us: int | None = None
    memory: int | None = None


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def milli_cpu(quantity: object) -> int:
    """A cpu quantity in millicores, rounded up as Quantity.MilliValue does (``0.0001`` is 1m)."""
    return _ceil(parse_quantity(quantity) * 1000)


def memory_bytes(quantity: object) -> int:
    """A memory quantity in bytes, rounded up as Quantity.Value does."""
    return _ceil(parse_quantity(quantity))


def shares(milli: int) -> int:
    """The kubelet's MilliCPUToShares: 1024 per CPU, at least 2 (what a BestEffort pod gets), at most 262144."""
    if milli <= 0:
        return MIN_SHARES
    return max(MIN_SHARES, min(MAX_SHARES, milli * SHARES_PER_CPU // 1000))


def quota_us(milli: int, period: int = PERIOD_US) -> int | None:
    """The kubelet's MilliCPUToQuota: the limit's share of each period, at least 1 ms; None for no limit."""
    if milli <= 0:
        return None
    return max(MIN_QUOTA_US, milli * period // 1000)


def cpu_weight(cpu_shares: int) -> int:
    """cgroup v2's ``cpu.weight`` for v1 shares (the kubelet's CpuSharesToCpuWeight: 2 -> 1, 262144 -> 10000)."""
    return 1 + (cpu_shares - MIN_SHARES) * 9999 // (MAX_SHARES - MIN_SHARES)


def _amounts(container: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """A container's cpu (millicores) and memory (bytes) requests and limits, zero ones dropped; a request left out
    is its limit, as the API server's defaulting makes it."""
    resources = container.get("resources") or {}
    parse = {"cpu": milli_cpu, "memory": memory_bytes}
    out: list[dict[str, int]] = []
    for key in ("requests", "limits"):
        given = resources.get(key) or {}
        values = {name: parse[name](given[name]) for name in parse if given.get(name) is not None}
        out.append({name: v for name, v in values.items() if v > 0})
    requests, limits = out
    return {**limits, **requests}, limits


def container_limits(container: Mapping[str, Any]) -> Limits:
    """A container's cgroup, as the kubelet's calculateLinuxResources: shares from the cpu request, quota from the
    cpu limit, its memory limit."""
    requests, limits = _amounts(container)
    return Limits(shares(requests.get("cpu", 0)), quota_us(limits.get("cpu", 0)), limits.get("memory"))


def _pod_total(spec: Mapping[str, Any], which: int, name: str) -> int:
    """The kubelet's PodRequests/PodLimits for one resource: the containers and sidecars summed, or the largest
    init container (with the sidecars started before it) when that is more."""
    total = sum(_amounts(c)[which].get(name, 0) for c in spec.get("containers") or ())
    sidecars = largest_init = 0
    for c in spec.get("initContainers") or ():
        amount = _amounts(c)[which].get(name, 0)
        if c.get("restartPolicy") == "Always":
            total += amount
            sidecars += amount
            largest_init = max(largest_init, sidecars)
        else:
            largest_init = max(largest_init, amount + sidecars)
    return max(total, largest_init)


def pod_limits(pod: Mapping[str, Any]) -> Limits:
    """The pod's cgroup, as the kubelet's ResourceConfigForPod: shares from the summed cpu requests (2 for a
    BestEffort pod); a cpu quota and a memory limit (the sums) only when every container declares that limit."""
    spec = pod.get("spec") or {}
    every = [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]
    declared = {name: all(name in _amounts(c)[1] for c in every) for name in ("cpu", "memory")}
    cpu = _pod_total(spec, 0, "cpu")
    quota = quota_us(_pod_total(spec, 1, "cpu")) if declared["cpu"] else None
    memory = _pod_total(spec, 1, "memory") if declared["memory"] else None
    return Limits(shares(cpu), quota, memory or None)


def qos_class(pod: Mapping[str, Any]) -> str:
    """The pod's QoS class, as the API server's GetPodQOS: Guaranteed when every container has cpu and memory
    limits equal to its requests, BestEffort when none has any cpu or memory request or limit, else Burstable."""
    spec = pod.get("spec") or {}
    requests: dict[str, int] = {}
    limits: dict[str, int] = {}
    guaranteed = True
    for c in [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]:
        wanted, capped = _amounts(c)
        for name, value in wanted.items():
            requests[name] = requests.get(name, 0) + value
        for name, value in capped.items():
            limits[name] = limits.get(name, 0) + value
        guaranteed = guaranteed and set(capped) == {"cpu", "memory"}
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and requests == limits:
        return "Guaranteed"
    return "Burstable"


def oom_killed(exit_code: int, kills_before: int, kills_after: int) -> bool:
    """Whether a container's end was an OOM kill: SIGKILLed (137) while its cgroup's ``oom_kill`` count went up."""
    return exit_code == 137 and kills_after > kills_before


def pod_path(node: str, uid: str) -> str:
    return f"{PARENT}/{node}/pod{uid}"


def container_path(node: str, uid: str, container: str) -> str:
    return f"{pod_path(node, uid)}/{container}"


# --- the hierarchies: I/O ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """A cgroup filesystem mount: where, which version, and (v1) which controllers it carries."""

    path: Path
    version: int
    controllers: frozenset[str]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup_mounts(mountinfo: str) -> list[Mount]:
    """The cgroup mounts in a ``/proc/self/mountinfo`` text (v2 controllers are read from the mount itself)."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
        if fstype == "cgroup":
            out.append(Mount(Path(_unescape(fields[4])), 1, frozenset(options.split(","))))
        elif fstype == "cgroup2":
            out.append(Mount(Path(_unescape(fields[4])), 2, frozenset()))
    return out


def _write(path: Path, value: object) -> None:
    path.write_text(f"{value}\n")


def _counter(path: Path, key: str) -> int:
    """A ``key value`` line of a cgroup file (memory.oom_control, memory.events); 0 when absent."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _remove_tree(root: Path) -> bool:
    """rmdir a cgroup and its children, deepest first; a cgroup whose last process is still exiting is busy for a
    moment (EBUSY), so that is retried briefly. True when it is gone."""
    if not root.is_dir():
        return True
    for folder in [*sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), root]:
        for _ in range(20):
            try:
                folder.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as error:
                if error.errno != errno.EBUSY:
                    return False
                time.sleep(0.05)
    return not root.exists()


class Hierarchy(Protocol):
    """Where the agent makes its cgroups, and how it sets, reads and removes them."""

    description: str

    def create(self, path: str, limits: Limits) -> None:
        """Make the cgroup (and its parents) if needed and (re)write its limits: idempotent."""
        ...

    def joins(self, path: str) -> list[tuple[str, str]]:
        """(cgroup folder, mount point) pairs: the container's process joins each folder and sees it at the
        mount point (runtime.MOUNT_SHIM)."""
        ...

    def oom_kills(self, path: str) -> int: ...

    def remove(self, path: str) -> bool: ...

    def children(self, path: str) -> set[str]: ...


class V1:
    """cgroup v1: the ``memory`` and ``cpu`` controllers, each on its mount (or both on one)."""

    def __init__(self, memory: Path, cpu: Path) -> None:
        self.memory, self.cpu = memory, cpu
        self.mounts = [memory] if memory == cpu else [memory, cpu]
        self.description = f"cgroup v1 (memory at {memory}, cpu at {cpu})"

    def create(self, path: str, limits: Limits) -> None:
        for mount in self.mounts:
            (mount / path).mkdir(parents=True, exist_ok=True)
        cpu = self.cpu / path
        _write(cpu / "cpu.shares", limits.shares)
        _write(cpu / "cpu.cfs_period_us", PERIOD_US)
        _write(cpu / "cpu.cfs_quota_us", -1 if limits.quota_us is None else limits.quota_us)
        self._memory(self.memory / path, -1 if limits.memory is None else limits.memory)

    @staticmethod
    def _memory(folder: Path, value: int) -> None:
        """memory.limit_in_bytes, and memory.memsw.limit_in_bytes the same where swap accounting exists (no swap
        past the limit, as the kubelet's NoSwap); memsw may never be below the limit, so the order depends."""
        memsw = folder / "memory.memsw.limit_in_bytes"
        files = [folder / "memory.limit_in_bytes"]
        if memsw.exists():
            now = int((folder / "memory.limit_in_bytes").read_text())
            files = [*files, memsw] if 0 <= value < now else [memsw, *files]
        for file in files:
            _write(file, value)

    def joins(self, path: str) -> list[tuple[str, str]]:
        return [(str(mount / path), str(mount)) for mount in self.mounts]

    def oom_kills(self, path: str) -> int:
        return _counter(self.memory / path / "memory.oom_control", "oom_kill")

    def remove(self, path: str) -> bool:
        return all([_remove_tree(mount / path) for mount in self.mounts])

    def children(self, path: str) -> set[str]:
        return {
            p.name for mount in self.mounts if (mount / path).is_dir() for p in (mount / path).iterdir() if p.is_dir()
        }


class V2:
    """cgroup v2, one tree: the cpu and memory controllers enabled down to each pod's cgroup."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"cgroup v2 at {root} (cpu, memory)"

    def create(self, path: str, limits: Limits) -> None:
        folder = self.root / path
        folder.mkdir(parents=True, exist_ok=True)
        for parent in [self.root, *reversed(folder.parents[: len(Path(path).parts) - 1])]:
            _write(parent / "cgroup.subtree_control", "+cpu +memory")
        _write(folder / "cpu.weight", cpu_weight(limits.shares))
        _write(folder / "cpu.max", f"{'max' if limits.quota_us is None else limits.quota_us} {PERIOD_US}")
        _write(folder / "memory.max", "max" if limits.memory is None else limits.memory)
        if (folder / "memory.swap.max").exists():
            _write(folder / "memory.swap.max", "max" if limits.memory is None else 0)

    def joins(self, path: str) -> list[tuple[str, str]]:
        return [(str(self.root / path), str(self.root))]

    def oom_kills(self, path: str) -> int:
        return _counter(self.root / path / "memory.events", "oom_kill")

    def remove(self, path: str) -> bool:
        return _remove_tree(self.root / path)

    def children(self, path: str) -> set[str]:
        folder = self.root / path
        return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def _try_v2(mount: Mount) -> V2:
    available = set((mount.path / "cgroup.controllers").read_text().split())
    if not {"cpu", "memory"} <= available:
        raise OSError(
            f"cgroup2 at {mount.path} has no cpu and memory controllers (it has {sorted(available) or 'none'})"
        )
    hierarchy = V2(mount.path)
    (mount.path / PARENT).mkdir(exist_ok=True)
    _write(mount.path / "cgroup.subtree_control", "+cpu +memory")
    _write(mount.path / PARENT / "cgroup.subtree_control", "+cpu +memory")
    return hierarchy


def _try_v1(mounts: Sequence[Mount]) -> V1:
    found = {}
    for name, probe in (("memory", "memory.limit_in_bytes"), ("cpu", "cpu.cfs_quota_us")):
        mount = next((m for m in mounts if m.version == 1 and name in m.controllers), None)
        if mount is None:
            raise OSError(f"no cgroup v1 {name} controller mounted")
        (mount.path / PARENT).mkdir(exist_ok=True)
        if not (mount.path / PARENT / probe).exists():
            raise OSError(f"{mount.path / PARENT} has no {probe}")
        found[name] = mount.path
    return V1(found["memory"], found["cpu"])


def detect(mountinfo: str | None = None) -> tuple[Hierarchy | None, str]:
    """The hierarchy the agent's pods get, tried for real (v2 with cpu and memory first, else v1), and one line
    saying which; (None, why) when neither works: the pods then run unlimited."""
    try:
        mounts = cgroup_mounts(MOUNTINFO.read_text() if mountinfo is None else mountinfo)
    except OSError as error:
        return None, f"no cgroups: {error}"
    problems = []
    for mount in (m for m in mounts if m.version == 2):
        try:
            return _try_v2(mount), ""
        except OSError as error:
            problems.append(str(error))
    try:
        return _try_v1(mounts), ""
    except OSError as error:
        problems.append(str(error))
    return None, "; ".join(problems) or "no cgroup filesystem mounted"


# --- a container's cgroup for one run ------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerCgroup:
    """A container's cgroup made ready for one run: what its process joins, and its OOM count before the run."""

    hierarchy: Hierarchy | None
    path: str = ""
    joins: tuple[tuple[str, str], ...] = ()
    kills_before: int = 0

    def oom_killed(self, exit_code: int) -> bool:
        """Whether the run that just ended with ``exit_code`` was killed for memory (its own or the pod's limit)."""
        if self.hierarchy is None or exit_code != 137:
            return False
        return oom_killed(exit_code, self.kills_before, self.hierarchy.oom_kills(self.path))


def prepare(
    hierarchy: Hierarchy | None, node: str, pod: Mapping[str, Any], container: Mapping[str, Any]
) -> ContainerCgroup:
    """Make (or reuse, on a restart) the pod's and the container's cgroups with their limits; OSError if the
    kernel refuses. Without a hierarchy the container runs unlimited."""
    if hierarchy is None:
        return ContainerCgroup(None)
    uid = str(pod["metadata"]["uid"])
    hierarchy.create(pod_path(node, uid), pod_limits(pod))
    path = container_path(node, uid, str(container["name"]))
    hierarchy.create(path, container_limits(container))
    return ContainerCgroup(hierarchy, path, tuple(hierarchy.joins(path)), hierarchy.oom_kills(path))


def remove_pod(hierarchy: Hierarchy, node: str, uid: str) -> bool:
    """Remove a pod's cgroups (its processes are gone); True when none is left."""
    return hierarchy.remove(pod_path(node, uid))


def remove_node(hierarchy: Hierarchy, node: str) -> bool:
    """Remove every cgroup of ``node``'s pods, and the node's own (the agent is stopping, its processes gone)."""
    return hierarchy.remove(f"{PARENT}/{node}")


def leftover_pods(hierarchy: Hierarchy, node: str, live: Iterable[str]) -> set[str]:
    """The uids of pods that have cgroups on ``node`` and are not in ``live``: left by an agent that stopped."""
    found = {name[3:] for name in hierarchy.children(f"{PARENT}/{node}") if name.startswith("pod")}
    return found - set(live)


def unsupported_note(hierarchy: Hierarchy | None, why: str, pod: Mapping[str, Any]) -> str | None:
    """The Warning a pod that asks for resources gets where no cgroups can be used (None: nothing to say)."""
    if hierarchy is not None or qos_class(pod) == "BestEffort":
        return None
    return f"resources (limits, requests) are not enforced by the node agent on this node: {why}"
