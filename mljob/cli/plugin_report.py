"""``mljob plugins``: what is installed, what each framework's roles are, and what is broken.

Plugins that are not frameworks (they implement ``mljob_validate`` or ``mljob_mutate_pod`` for
every job) get a table of their own, so installing one can be checked the same way.

A broken plugin is reported, not fatal: the operator runs on without it, so this command must
show it (with the error) and still exit 0. The report is a rich table for people; the role
lines are plain text so they also read well when piped.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mljob.framework import Framework, Role
from mljob.plugins import Plugins


def replica_bounds(role: Role) -> str:
    """``1``, ``0-1``, ``1+``: how many replicas of the role a job may have."""
    if role.max_replicas is None:
        return f"{role.min_replicas}+"
    if role.max_replicas == role.min_replicas:
        return str(role.min_replicas)
    return f"{role.min_replicas}-{role.max_replicas}"


def role_notes(role: Role) -> str:
    notes = [
        ("leader", role.leader),
        ("runs until stopped", role.runs_until_stopped),
        ("not a peer", not role.in_cluster),
    ]
    return ", ".join(note for note, on in notes if on)


def frameworks_table(plugins: Plugins) -> Table:
    """One row per role; the framework cell names the package, its version and the default restart policy."""
    table = Table(title="Installed frameworks", title_justify="left")
    table.add_column("Framework", no_wrap=True)
    table.add_column("Role", no_wrap=True)
    table.add_column("Port", justify="right")
    table.add_column("Replicas", justify="right")
    table.add_column("Notes")
    for name in sorted(plugins.frameworks):
        framework: Framework = plugins.frameworks[name]
        info = plugins.source(name)
        package = f"{info.distribution or info.name} {info.version}".strip()
        about = Text(name, style="bold")
        about.append(f"\n{package}\nrestart: {framework.default_restart_policy}", style="dim")
        for i, role in enumerate(framework.roles):
            table.add_row(
                about if i == 0 else None,
                Text(role.name),
                str(role.default_port),
                replica_bounds(role),
                Text(role_notes(role)),
                end_section=i == len(framework.roles) - 1,
            )
    return table


def hooks_table(plugins: Plugins) -> Table | None:
    """One row per plugin that takes part in every job (a sidecar, a policy): its package and its hooks."""
    hooks = plugins.broadcast_hooks()
    if not hooks:
        return None
    table = Table(title="Plugins for every job", title_justify="left")
    table.add_column("Plugin", no_wrap=True)
    table.add_column("Package", no_wrap=True)
    table.add_column("Hooks")
    for name in sorted(hooks):
        info = plugins.loaded.get(name)
        package = f"{info.distribution or info.name} {info.version}".strip() if info else ""
        table.add_row(Text(name, style="bold"), Text(package), Text(", ".join(hooks[name])))
    return table


def print_report(plugins: Plugins, console: Console | None = None) -> None:
    """Print the frameworks table, the plugins for every job, every broken plugin with its error, a verdict."""
    out = console or Console(soft_wrap=False)
    if plugins.frameworks:
        out.print(frameworks_table(plugins))
    else:
        out.print("No frameworks installed. Install one, e.g. pip install mljob-pytorch", markup=False)
    others = hooks_table(plugins)
    if others is not None:
        out.print(others)
    for broken in plugins.broken:
        out.print(Text(f"broken plugin {broken.name}: {broken.error}", style="red"), soft_wrap=True)
    count = len(plugins.frameworks)
    verdict = f"{count} framework{'s' if count != 1 else ''} installed"
    if plugins.broken:
        plural = "s" if len(plugins.broken) != 1 else ""
        verdict += f"; {len(plugins.broken)} plugin{plural} broken (not loaded, so its frameworks are unavailable)"
    out.print(verdict, markup=False, highlight=False)
