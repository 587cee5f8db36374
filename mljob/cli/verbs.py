"""The CLI's verbs against a cluster: submit, get, describe, wait, logs, delete (on :class:`mljob.client.Client`).

Exit codes a script can use: 0 done; 1 the job is invalid, failed, or ended otherwise than waited for; 2 a usage
error; 3 no such job; 4 the wait timed out; 5 the cluster could not be reached or refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
import yaml

from mljob.api import MLJob, format_time
from mljob.core.text import age
from mljob.ui.view import progress_of

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_CLUSTER = 1, 2, 3, 4, 5

Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default: the kubeconfig's).")]
Name = Annotated[str, typer.Argument(metavar="NAME", help="The MLJob's name.")]


@contextmanager
def client_errors() -> Iterator[None]:
    """Every client error as one line on stderr and its exit code."""
    from mljob.client import ClientError, InvalidJob, JobEnded, NotFound

    try:
        yield
    except InvalidJob as error:
        _exit(error.lines, EXIT_FAILED)
    except NotFound as error:
        _exit([str(error)], EXIT_NOT_FOUND)
    except JobEnded as error:
        _exit([str(error)], EXIT_FAILED)
    except TimeoutError as error:
        _exit([str(error)], EXIT_TIMEOUT)
    except ClientError as error:
        _exit([str(error)], EXIT_CLUSTER if "no cluster" in str(error) else EXIT_FAILED)


def _exit(lines: list[str], code: int) -> None:
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(code)


def _client(namespace: str | None) -> Any:
    from mljob.client import Client

    return Client(namespace)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def printable(text: str) -> str:
    """``text`` with its control characters shown escaped (``\\x1b``): a metric's name is the user's, and a
    terminal would obey the escape sequences in it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def progress_cells(status: Mapping[str, Any] | None, now: datetime) -> list[str]:
    """``get``'s PROGRESS and ETA cells (``42%``, ``3m10s``), as kubectl's columns show them; empty for a job that
    never reported."""
    shown = progress_of(status, now)
    return ["", ""] if shown is None else [printable(shown.label), printable(shown.eta)]


def progress_lines(status: Mapping[str, Any] | None, now: datetime) -> list[str]:
    """``describe``'s Progress section: percent, step/total, ETA, the last report's age, each metric's latest
    value. No lines at all for a job that never reported, so its description reads as before."""
    shown = progress_of(status, now)
    if shown is None:
        return []
    lines = ["Progress:"]
    if shown.percent is not None:
        lines.append(f"  Percent:     {shown.percent}%")
    if shown.steps:
        lines.append(f"  Step:        {shown.steps}")
    if shown.eta:
        lines.append(f"  ETA:         {printable(shown.eta)}")
    if shown.updated is not None:
        lines.append(f"  Last report: {shown.reported} ago ({format_time(shown.updated)})")
    if shown.metrics:
        lines.append("  Metrics:")
        rows = [(printable(name), printable(value)) for name, value in shown.metrics]
        width = max(len(name) for name, _ in rows)
        lines += [f"    {name:<{width}}  {value}" for name, value in rows]
    return lines


def _status_dict(job: MLJob) -> dict[str, Any] | None:
    return job.status.to_dict() if job.status is not None else None


def _progress(job: MLJob, seen: list[str]) -> None:
    """One line per change of phase or message, on stderr (stdout stays the result a script reads)."""
    status = job.status
    phase = status.phase.value if status is not None else "Pending"
    line = f"{job.name}: {phase}" + (f" ({status.message})" if status is not None and status.message else "")
    if not seen or seen[-1] != line:
        seen.append(line)
        typer.echo(line, err=True)


def register(app: typer.Typer) -> None:
    """Add the verbs to the ``mljob`` app."""

    @app.command()
    def submit(
        file: Annotated[str, typer.Argument(metavar="FILE", help="One MLJob YAML file.")],
        namespace: Namespace = None,
        name: Annotated[str | None, typer.Option(help="Submit under this name instead.")] = None,
        wait: Annotated[bool, typer.Option("--wait", help="Wait until it succeeds (exit 1 if it fails).")] = False,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Then stream every replica's log.")] = False,
        timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 3600,
    ) -> None:
        """Check FILE as `mljob validate` does, then create the job in the cluster."""
        with client_errors():
            client = _client(namespace)
            job = client.submit(file, name=name)
            typer.echo(f"mljob.mljob.io/{job.name} created in {job.namespace}")
            if follow:
                client.wait(job.name, "Running", namespace=job.namespace, timeout=timeout)
                for replica, line in client.logs(job.name, namespace=job.namespace, follow=True):
                    typer.echo(f"[{replica}] {line}")
            if wait or follow:
                seen: list[str] = []
                done = client.wait(
                    job.name, "Succeeded", namespace=job.namespace, timeout=timeout,
                    on_change=lambda j: _progress(j, seen),
                )  # fmt: skip
                typer.echo(f"{done.name} Succeeded")

    @app.command()
    def get(
        name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="One job; default: every job.")] = None,
        namespace: Namespace = None,
        all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")] = False,
        output: Annotated[str | None, typer.Option("--output", "-o", help="yaml or json: the whole object.")] = None,
    ) -> None:
        """A table of jobs like `kubectl get`: framework, phase, replicas ready/total, restarts, progress, ETA, age."""
        if output not in (None, "yaml", "json"):
            _exit([f"--output: {output!r}; choose yaml or json"], EXIT_USAGE)
        with client_errors():
            client = _client(namespace)
            jobs = [client.get(name)] if name else client.jobs(all_namespaces=all_namespaces)
            if output:
                dumped = [j.model_dump(mode="json", by_alias=True, exclude_none=True) for j in jobs]
                body: Any = dumped[0] if name else {"apiVersion": "v1", "kind": "List", "items": dumped}
                text = json.dumps(body, indent=2) if output == "json" else yaml.safe_dump(body, sort_keys=False)
                typer.echo(text.rstrip())
                return
            if not jobs:
                typer.echo("No MLJobs found" + ("" if all_namespaces else f" in {client.namespace}"), err=True)
                return
            ready = _ready(client, jobs)
            header = ["NAME", "FRAMEWORK", "PHASE", "READY", "RESTARTS", "PROGRESS", "ETA", "AGE"]
            now = datetime.now(UTC)
            rows = [(["NAMESPACE"] if all_namespaces else []) + header]
            for job in jobs:
                total = sum(spec.replicas for spec in job.spec.replica_specs.values())
                status = job.status
                cells = [
                    job.name,
                    job.spec.framework,
                    status.phase.value if status is not None else "Pending",
                    f"{ready.get((job.namespace, job.name), 0)}/{total}",
                    str(status.restart_count if status is not None else 0),
                    *progress_cells(_status_dict(job), now),
                    age(job.metadata.creation_timestamp, now),
                ]
                rows.append(([job.namespace] if all_namespaces else []) + cells)
            typer.echo(table(rows))

    @app.command()
    def describe(name: Name, namespace: Namespace = None) -> None:
        """The job's phase and message, conditions, replicas (pod, node, phase), and its recent Events."""
        with client_errors():
            client = _client(namespace)
            job = client.get(name)
            status = job.status
            lines = [
                f"Name:        {job.name}",
                f"Namespace:   {job.namespace}",
                f"Framework:   {job.spec.framework}",
                f"Phase:       {status.phase.value if status else 'Pending'}",
                f"Message:     {status.message if status else ''}",
                f"Restarts:    {status.restart_count if status else 0}",
                *progress_lines(_status_dict(job), datetime.now(UTC)),
                "Conditions:",
            ]
            for c in status.conditions if status else []:
                lines.append(f"  {c.type.value:<11} {c.status:<6} {c.reason:<22} {c.message}")
            lines.append("Replicas:")
            for pod in client.pods(name):
                labels = pod["metadata"].get("labels") or {}
                replica = f"{labels.get('mljob.io/replica-type')}-{labels.get('mljob.io/replica-index')}"
                node = (pod.get("spec") or {}).get("nodeName") or "<none>"
                phase = (pod.get("status") or {}).get("phase") or "Pending"
                lines.append(f"  {replica:<14} {pod['metadata']['name']:<36} {phase:<10} {node}")
            lines.append("Events:")
            for event in client.events(name)[-15:]:
                lines.append(f"  {event.get('type', ''):<8} {event.get('reason', ''):<18} {event.get('message', '')}")
            typer.echo("\n".join(lines))

    @app.command("wait")
    def wait_(
        name: Name,
        for_: Annotated[str, typer.Option("--for", help="A phase or condition: Succeeded, Running, ...")] = "Succeeded",
        namespace: Namespace = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait (exit 4 after).")] = 600,
    ) -> None:
        """Wait until the job reaches a phase (or a condition is True); exit 1 if it ends otherwise."""
        with client_errors():
            seen: list[str] = []
            job = _client(namespace).wait(name, for_, timeout=timeout, on_change=lambda j: _progress(j, seen))
            typer.echo(f"{job.name} {for_}")

    @app.command()
    def logs(
        name: Name,
        replica: Annotated[str | None, typer.Option(help="One replica, e.g. worker-1; default: all.")] = None,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming.")] = False,
        namespace: Namespace = None,
    ) -> None:
        """Every replica's log, each line prefixed with its replica as `mljob run` prints it."""
        with client_errors():
            for who, line in _client(namespace).logs(name, replica=replica, follow=follow):
                typer.echo(f"[{who}] {line}")

    @app.command()
    def delete(name: Name, namespace: Namespace = None) -> None:
        """Delete the job; its pods and service go with it."""
        with client_errors():
            client = _client(namespace)
            client.delete(name)
            typer.echo(f"mljob.mljob.io/{name} deleted")


def _ready(client: Any, jobs: list[MLJob]) -> dict[tuple[str, str], int]:
    """Running, ready pods per job: one pod LIST per namespace."""
    counts: dict[tuple[str, str], int] = {}
    for namespace in sorted({j.namespace for j in jobs}):
        found = client.core.list_namespaced_pod(namespace, label_selector="mljob.io/job-name")
        for pod in found.items:
            conditions = pod.status.conditions or []
            if pod.status.phase == "Running" and any(c.type == "Ready" and c.status == "True" for c in conditions):
                key = (namespace, pod.metadata.labels.get("mljob.io/job-name", ""))
                counts[key] = counts.get(key, 0) + 1
    return counts
