"""The ``mljob`` command.

Each subcommand is one small function that parses its arguments and calls into the library;
heavy modules (the operator, the local runtime) are imported inside their command so
``mljob validate`` stays fast and works without them. To add a command, add one function
decorated with ``@app.command()`` here and import its module lazily inside it.

Exit codes: 0 success, 1 the input or the job is bad (problems on stderr, one ``path: message``
per line, never a traceback), 2 wrong usage (typer's own).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from mljob.api import GangScheduler
from mljob.cli.verbs import register as register_cluster_verbs
from mljob.local.jobfiles import STDIN, JobFileError, job_and_framework, load_jobs, plugins_or_error, summary

app = typer.Typer(
    name="mljob",
    help="Distributed ML training jobs, in every framework: validate, render, run locally, operate on Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback is never the right answer to bad input; unexpected errors are handled in main().
    pretty_exceptions_enable=False,
)

FileArg = Annotated[
    str, typer.Argument(metavar="FILE", help="An MLJob YAML file (several documents allowed); - for stdin.")
]

DEBUG_ENV = "MLJOB_DEBUG"


def fail(lines: list[str], code: int = 1) -> typer.Exit:
    """Print ``lines`` to stderr and return the Exit to raise (``raise fail(...)`` reads at the call site)."""
    for line in lines:
        typer.echo(line, err=True)
    return typer.Exit(code)


@contextmanager
def job_errors() -> Iterator[None]:
    """Turn :class:`JobFileError` into its lines on stderr and exit 1."""
    try:
        yield
    except JobFileError as error:
        raise fail(error.lines) from None


def dump_yaml(objects: list[dict[str, Any]]) -> str:
    """A ``---``-separated YAML stream in the objects' own key order, never folded, so it diffs well.

    libyaml's emitter where PyYAML was built with it: the pure-Python one spends seconds on a large job.
    """
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump_all(objects, Dumper=dumper, sort_keys=False, width=10_000, explicit_start=True)


@app.command()
def validate(file: FileArg) -> None:
    """Check every MLJob in FILE: prints one line per valid job, or every problem as `field.path: what is wrong`."""
    with job_errors():
        try:
            checked = load_jobs(file)
        except JobFileError as error:
            for item in error.checked:
                if item.ok:
                    typer.echo(f"ok: {summary(item)}")
            raise
    for item in checked:
        typer.echo(f"ok: {summary(item)}")


@app.command()
def render(
    file: FileArg,
    uid: Annotated[
        str | None, typer.Option(help="Owner uid for ownerReferences (default: metadata.uid, else a placeholder).")
    ] = None,
    gang_scheduler: Annotated[
        GangScheduler,
        typer.Option(help="The operator's --gang-scheduler (a job's schedulingPolicy.gangScheduler wins)."),
    ] = GangScheduler.NONE,
) -> None:
    """Print every object the operator would create for FILE (Kueue's Workload, gang objects, pods, the service)."""
    from mljob.core import kueue as queueing
    from mljob.core.render import owner_reference
    from mljob.core.render import render as render_job
    from mljob.plugins import PluginError

    with job_errors():
        plugins = plugins_or_error()
        objects: list[dict[str, Any]] = []
        for item in load_jobs(file, plugins):
            job, framework = job_and_framework(item)
            if queueing.queue_name(job) is not None:  # Kueue's Workload comes first: no pod before admission
                objects.append(queueing.workload(job, owner_reference(job, uid)))
            try:
                objects.extend(render_job(job, framework, plugins, uid=uid, gang=gang_scheduler))
            except PluginError as error:
                raise JobFileError([str(error)]) from None
    typer.echo(dump_yaml(objects), nl=False)


@app.command()
def convert(
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="A Kubeflow TFJob, PyTorchJob or MXJob YAML file; - for stdin.")
    ],
) -> None:
    """Print the MLJob equivalent of a Kubeflow job file; what cannot be carried over is named on stderr."""
    from mljob.core.convert import convert as convert_doc
    from mljob.core.validation import check_document, load_documents
    from mljob.local.jobfiles import read_text

    with job_errors():
        source, text = read_text(file)
        docs, problems = load_documents(text, source)
        if problems:
            raise fail([str(p) for p in problems])
        plugins = plugins_or_error()
        jobs: list[dict[str, Any]] = []
        lines: list[str] = []
        refused = False
        for n, doc in enumerate(docs, start=1):
            prefix = f"document {n}: " if len(docs) > 1 else ""
            converted = convert_doc(doc)
            lines += [f"{prefix}not carried over: {p}" for p in converted.dropped]
            if converted.job is None or converted.problems:
                refused = True
                lines += [f"{prefix}{p}" for p in converted.problems]
                continue
            checked = check_document(converted.job, plugins)
            if not checked.ok:  # what Kubeflow accepted and an MLJob does not: say where, in MLJob terms
                refused = True
                lines += [f"{prefix}the converted MLJob is invalid: {p}" for p in checked.problems]
                continue
            jobs.append(converted.job)
    for line in lines:
        typer.echo(line, err=True)
    if jobs:
        typer.echo(dump_yaml(jobs), nl=False)
    if refused:
        raise typer.Exit(1)


@app.command()
def crd() -> None:
    """Print the MLJob CustomResourceDefinition generated from the API models (kubectl apply -f -)."""
    from mljob.core.crd import crd_yaml

    typer.echo(crd_yaml(), nl=False)


@app.command()
def plugins() -> None:
    """List the installed frameworks with their roles, and any plugin that failed to load."""
    from mljob.cli.plugin_report import print_report

    with job_errors():
        print_report(plugins_or_error())


@app.command()
def run(
    file: FileArg,
    logs_dir: Annotated[
        Path | None, typer.Option("--logs-dir", help="Also write one log file per replica into this folder.")
    ] = None,
) -> None:
    """Run every replica of the MLJob in FILE as a local process, wired as in a cluster; exit 0 when it succeeds."""
    from mljob.local import run_file

    raise typer.Exit(run_file(file, logs_dir=logs_dir))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def operator(ctx: typer.Context) -> None:
    """Run the MLJob operator against the cluster in KUBECONFIG, or the pod's service account (--help: its flags)."""
    from mljob.operator.main import main as operator_main

    try:
        operator_main(list(ctx.args))  # one parser for `mljob operator` and `python -m mljob.operator`
    except ValueError as error:
        raise fail([str(error)], 2) from None


@app.command(
    "node-agent",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def node_agent(ctx: typer.Context) -> None:
    """Register Nodes and run the pods bound to them as host processes, with their logs (--help: its flags)."""
    from mljob.nodeagent.command import main as agent_main

    raise typer.Exit(agent_main(list(ctx.args)))


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 in a pod behind a Service.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 8080,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace (default: every namespace).")
    ] = None,
) -> None:
    """Serve a read-only web UI of every MLJob, live from a watch, for the cluster in KUBECONFIG or the pod's."""
    import asyncio

    from mljob.kube import Credentials
    from mljob.ui.server import serve

    try:
        credentials = Credentials.load()
    except Exception as error:  # the kubernetes package's config errors share no base class worth naming
        raise fail([f"no cluster: {error}"], 5) from None

    def ready(url: str) -> None:
        typer.echo(f"mljob ui: serving {url} ({namespace or 'every namespace'}, read-only); Ctrl-C stops", err=True)

    try:
        asyncio.run(serve(host, port, namespace, credentials, ready))
    except OSError as error:
        raise fail([f"--port {port}: {error.strerror or error}"], 2) from None


# `mljob run` (mljob.local) and `mljob operator` (mljob.operator) are added here as one small
# @app.command() function each, importing their module inside the function.

register_cluster_verbs(app)  # submit, get, describe, wait, logs, delete (mljob.cli.verbs)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app and turns an unexpected error into one line, not a traceback."""
    try:
        app(args=argv, prog_name="mljob")
    except SystemExit:
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as error:
        if os.environ.get(DEBUG_ENV):
            raise
        typer.echo(
            f"mljob: internal error: {type(error).__name__}: {error} "
            f"(this is a bug; set {DEBUG_ENV}=1 to see the traceback and report it)",
            err=True,
        )
        sys.exit(3)


if __name__ == "__main__":
    main()

__all__ = ["STDIN", "app", "main"]
