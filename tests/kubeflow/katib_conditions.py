"""Katib's own judgement of a Kubeflow job: the Go command in tests/kubeflow/katib/, built once, fed JSON.

:func:`judge` hands jobs (the objects as the API server returns them) to ``katib-conditions``, which runs Katib
v0.19.0's code on each: ``Experiment.SetDefault`` for the defaults of a trial whose runSpec is a job of that kind
(success and failure conditions, primary pod labels), and ``GetDeployedJobStatus`` (``pkg/controller.v1beta1/trial/
util/job_util.go``) for whether each condition holds, with the tidwall/gjson Katib's go.mod pins. Nothing of Katib's
logic is written again here.

The command is built from tests/kubeflow/katib/ (go.mod, go.sum, main.go) plus Katib's ``job_util.go``, copied
unchanged from the module, into ``controlplane/bin/katib-conditions/`` (git-ignored, removed by ``make clean``), and
reused while those inputs and the Go version are unchanged. Go settings as controlplane/ builds with them
(``GOTOOLCHAIN=local``, no VCS stamp), plus ``-mod=mod``. A cold build compiles 282 packages, mostly
``k8s.io/api/core/v1`` (the Trial type's fields): about a minute of CPU.

``python tests/kubeflow/katib_conditions.py`` builds it and says how long it took; ``--update`` re-resolves
go.mod and go.sum after the Katib version in go.mod was changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).resolve().parent / "katib"
CACHE = ROOT / "controlplane" / "bin" / "katib-conditions"
BINARY = CACHE / "katib-conditions"
KATIB = "github.com/kubeflow/katib"
GJSON = "github.com/tidwall/gjson"
JOB_UTIL = "pkg/controller.v1beta1/trial/util/job_util.go"
"""Katib's file with ``GetDeployedJobStatus``: compiled as package ``mljob.io/tests/katib/katibtrial``."""
GO_ENV = {"GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod -buildvcs=false", "CGO_ENABLED": "0"}
BUILD_TIMEOUT = 1200.0
"""A cold build is about a minute of CPU; on a busy two-core machine it has taken six."""


class BuildError(RuntimeError):
    """``katib-conditions`` could not be built or run (no Go, no module proxy, a compile error)."""


def go_command() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        raise BuildError("no `go` command: Katib's conditions are judged by Katib's Go code; install Go")
    return found


def go(*args: str, cwd: Path, timeout: float = 300.0) -> str:
    done = subprocess.run(
        [go_command(), *args], cwd=cwd, env={**os.environ, **GO_ENV},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BuildError(f"`go {' '.join(args)}` in {cwd} failed:\n{done.stderr.strip()}")
    return done.stdout


def katib_version() -> str:
    """The Katib release go.mod requires: the one source of the version."""
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(KATIB)}\s+(\S+)", (SOURCE / "go.mod").read_text(), re.M)
    if found is None:
        raise BuildError(f"{SOURCE / 'go.mod'} requires no {KATIB}")
    return found.group(1)


@cache
def katib_module() -> Mapping[str, str]:
    """``go mod download -json`` of Katib's release: ``Dir`` (its files) and ``GoMod`` (its go.mod)."""
    info = json.loads(go("mod", "download", "-json", f"{KATIB}@{katib_version()}", cwd=SOURCE))
    return {k: str(v) for k, v in info.items()}


def katib_pin(module: str) -> str:
    """The version of ``module`` Katib's own go.mod requires."""
    text = Path(katib_module()["GoMod"]).read_text()
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(\S+)", text, re.M)
    if found is None:
        raise BuildError(f"Katib's go.mod requires no {module}")
    return found.group(1)


def _key() -> str:
    digest = hashlib.sha256(go("version", cwd=SOURCE).encode())
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((SOURCE / name).read_bytes())
    digest.update((Path(katib_module()["Dir"]) / JOB_UTIL).read_bytes())
    digest.update(json.dumps(GO_ENV, sort_keys=True).encode())
    return digest.hexdigest()


def _assemble(target: Path) -> None:
    """The module as it is built: tests/kubeflow/katib/ and Katib's job_util.go as package katibtrial."""
    shutil.rmtree(target, ignore_errors=True)
    (target / "katibtrial").mkdir(parents=True)
    for name in ("go.mod", "go.sum", "main.go"):
        shutil.copyfile(SOURCE / name, target / name)
    shutil.copyfile(Path(katib_module()["Dir"]) / JOB_UTIL, target / "katibtrial" / "job_util.go")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One build at a time (pytest-xdist workers, two shells): the others wait and then find it built."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@cache
def binary() -> Path:
    """``katib-conditions``, built when its inputs changed; raises :class:`BuildError` when it cannot be."""
    want = _key()
    stamp = CACHE / "STAMP"
    with _locked():
        if BINARY.exists() and stamp.exists() and stamp.read_text().strip() == want:
            return BINARY
        started = time.monotonic()
        source = CACHE / "src"
        _assemble(source)
        tmp = CACHE / f".katib-conditions.{os.getpid()}.tmp"
        go("build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp), ".", cwd=source, timeout=BUILD_TIMEOUT)
        tmp.replace(BINARY)
        stamp.write_text(want + "\n")
        print(f"built {BINARY} in {time.monotonic() - started:.1f} s")
        return BINARY


def resolved(module: str) -> str:
    """The version of ``module`` the command is built with (Go's minimal version selection over go.mod)."""
    binary()
    return go("list", "-m", "-f", "{{.Version}}", module, cwd=CACHE / "src").strip()


def judge(jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Katib's verdict on each job (with ``apiVersion`` and ``kind``): ``{kind, defaulted, successCondition,
    failureCondition, primaryPodLabels, succeeded, failed, trial: {condition, reason, message}}``."""
    if not jobs:
        return []
    done = subprocess.run(
        [str(binary())], input=json.dumps(list(jobs)), capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise BuildError(f"katib-conditions failed: {done.stderr.strip()}")
    return list(json.loads(done.stdout))


def update() -> None:
    """Re-resolve go.mod and go.sum (after the Katib version in go.mod changed): ``go mod tidy`` on the module as
    it is built, since katibtrial/ exists only there."""
    katib_module.cache_clear()
    source = CACHE / "src"
    _assemble(source)
    go("mod", "tidy", cwd=source)
    for name in ("go.mod", "go.sum"):
        shutil.copyfile(source / name, SOURCE / name)


if __name__ == "__main__":
    if "--update" in sys.argv:
        update()
    began = time.monotonic()
    path = binary()
    print(f"{path} ready after {time.monotonic() - began:.1f} s (Katib {katib_version()}, gjson {resolved(GJSON)})")
