"""Which GPUs each replica of a local run may see.

In a cluster the device plugin gives a pod exactly the ``nvidia.com/gpu`` it asks for in its
limits. Locally every process could see every GPU, so replicas that ask get disjoint
``CUDA_VISIBLE_DEVICES``; :func:`assign_gpus` is the pure rule, :func:`detect_gpus` finds the
machine's GPUs (``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from mljob.api import MLJob
from mljob.core.render import wiring_container
from mljob.framework import Framework, Problem, Replica, replicas_of

GPU_RESOURCE = "nvidia.com/gpu"
VISIBLE = "CUDA_VISIBLE_DEVICES"
_NVIDIA_SMI_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


class GpuError(Exception):
    """More GPUs are asked for than this machine has."""


def gpu_requests(job: MLJob, framework: Framework) -> tuple[dict[Replica, int], list[Problem]]:
    """GPUs each replica's wiring container asks for (limits, else requests); 0 when none."""
    requests: dict[Replica, int] = {}
    problems: list[Problem] = []
    per_role: dict[str, int] = {}
    for role, spec in job.spec.replica_specs.items():
        containers = (spec.template.get("spec") or {}).get("containers") or []
        index = wiring_container(containers, framework)
        if index is None:
            continue
        resources = containers[index].get("resources") or {}
        value = (resources.get("limits") or {}).get(GPU_RESOURCE, (resources.get("requests") or {}).get(GPU_RESOURCE))
        if value is None:
            continue
        try:
            count = int(str(value))
        except ValueError:
            count = -1
        if count < 0:
            path = f"spec.replicaSpecs.{role}.template.spec.containers[{index}].resources.limits"
            problems.append(Problem(f"{path}.{GPU_RESOURCE}", f"must be a whole number of GPUs, got {value!r}"))
            continue
        per_role[role] = count
    for replica in replicas_of(job):
        requests[replica] = per_role.get(replica.role, 0)
    return requests, problems


def assign_gpus(requests: Mapping[Replica, int], available: Sequence[str]) -> dict[Replica, tuple[str, ...]]:
    """Disjoint GPUs for every replica that asks, in replica order; ``()`` for one that does not.

    Raises :class:`GpuError` naming the total asked for, by whom, and what exists.
    """
    wanted = sum(requests.values())
    if wanted > len(available):
        askers = ", ".join(f"{r} ({n})" for r, n in requests.items() if n)
        have = f"{len(available)} ({', '.join(available)})" if available else "none"
        raise GpuError(
            f"the job asks for {wanted} {GPU_RESOURCE} in all ({askers}) but this machine has {have}; "
            f"lower resources.limits.{GPU_RESOURCE} or the replica counts"
        )
    result: dict[Replica, tuple[str, ...]] = {}
    next_gpu = 0
    for replica, count in requests.items():
        result[replica] = tuple(available[next_gpu : next_gpu + count])
        next_gpu += count
    return result


def parse_visible(value: str) -> list[str]:
    """The devices named in a ``CUDA_VISIBLE_DEVICES`` value; ``-1`` or empty means none."""
    devices = [d.strip() for d in value.split(",") if d.strip()]
    return [] if devices and devices[0].startswith("-") else devices


def parse_nvidia_smi(output: str) -> list[str]:
    """GPU indices from ``nvidia-smi -L`` (``GPU 0: NVIDIA H100 ... (UUID: GPU-...)``)."""
    return _NVIDIA_SMI_LINE.findall(output)


def detect_gpus(environ: Mapping[str, str]) -> list[str]:
    """The GPUs this process may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``."""
    if VISIBLE in environ:
        return parse_visible(environ[VISIBLE])
    smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if smi is None:
        return []
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else []
