"""Discovering plugins and calling them through one typed facade.

The plugin manager is built in :func:`load_plugins`, never at import time. Entry points of the
group ``mljob`` are loaded one by one, so a plugin that cannot be imported is recorded in
:attr:`Plugins.broken` (and shown by ``mljob plugins``) instead of stopping the operator.
``MLJOB_DISABLE_PLUGINS=name,name`` blocks entry points by name.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pluggy

from mljob import hookspecs
from mljob.framework import Framework, Problem, Registry, Replica

if TYPE_CHECKING:
    from mljob.api import MLJob

ENTRY_POINT_GROUP = "mljob"
DISABLE_ENV = "MLJOB_DISABLE_PLUGINS"


class PluginError(Exception):
    """A plugin raised while handling a job; the job fails with reason ``PluginError``."""

    def __init__(self, plugin: str, hook: str, error: BaseException) -> None:
        self.plugin = plugin
        self.hook = hook
        self.error = error
        super().__init__(f"plugin {plugin!r} failed in {hook}: {type(error).__name__}: {error}")


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that could not be loaded or whose registration raised."""

    name: str
    error: str


@dataclass(frozen=True)
class PluginInfo:
    """Where a framework came from: the entry point name and its distribution's version."""

    name: str
    distribution: str = ""
    version: str = ""


@dataclass
class Plugins:
    """The loaded plugins: the frameworks by name, the broken ones, and the broadcast hooks."""

    pm: pluggy.PluginManager
    registry: Registry = field(default_factory=Registry)
    broken: list[BrokenPlugin] = field(default_factory=list)
    info: dict[str, PluginInfo] = field(default_factory=dict)
    """Framework name -> the plugin that registered it."""
    loaded: dict[str, PluginInfo] = field(default_factory=dict)
    """Plugin name -> where it came from, for every plugin loaded from an entry point."""

    @property
    def frameworks(self) -> Mapping[str, Framework]:
        return self.registry.frameworks

    def framework(self, name: str) -> Framework | None:
        return self.registry.frameworks.get(name)

    def source(self, framework: str) -> PluginInfo:
        return self.info.get(framework, PluginInfo(name="?"))

    def broadcast_hooks(self) -> dict[str, list[str]]:
        """Plugin name -> the cross-cutting hooks it implements (``mljob_validate``, ...), for plugins with any."""
        found: dict[str, list[str]] = {}
        for name, plugin in self.pm.list_name_plugin():
            callers = self.pm.get_hookcallers(plugin) or []
            hooks = sorted(c.name for c in callers if c.name != "mljob_register_frameworks")
            if hooks:
                found[name] = hooks
        return found

    def validate(self, job: MLJob, framework: Framework) -> list[Problem]:
        """Every broadcast validator's problems; raises :class:`PluginError` if one raises."""
        problems: list[Problem] = []
        for impl in self.pm.hook.mljob_validate.get_hookimpls():
            try:
                found = cast(Sequence[Problem] | None, impl.function(job=job, framework=framework))
            except Exception as error:
                raise PluginError(impl.plugin_name, "mljob_validate", error) from error
            problems.extend(found or ())
        return problems

    def mutate_pod(self, job: MLJob, replica: Replica, pod: dict[str, Any]) -> None:
        """Let every plugin change the rendered pod; raises :class:`PluginError` if one raises."""
        for impl in self.pm.hook.mljob_mutate_pod.get_hookimpls():
            try:
                impl.function(job=job, replica=replica, pod=pod)
            except Exception as error:
                raise PluginError(impl.plugin_name, "mljob_mutate_pod", error) from error


def _blocked() -> set[str]:
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def load_plugins(*, entry_points: bool = True, extra: Iterable[object] = ()) -> Plugins:
    """Build a plugin manager: specs, entry points (unless disabled), then ``extra`` plugins.

    Tests pass ``entry_points=False`` and their own ``extra`` plugins, so no global state leaks
    between tests.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm=pm)
    infos: dict[str, PluginInfo] = {}
    blocked = _blocked()
    for name in blocked:
        pm.set_blocked(name)
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or pm.has_plugin(ep.name):
                continue
            dist = ep.dist
            info = PluginInfo(ep.name, dist.name if dist else "", dist.version if dist else "")
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as error:
                plugins.broken.append(BrokenPlugin(ep.name, f"{type(error).__name__}: {error}"))
                continue
            infos[ep.name] = info
            plugins.loaded[ep.name] = info
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    _collect_frameworks(plugins, infos)
    return plugins


def _collect_frameworks(plugins: Plugins, infos: Mapping[str, PluginInfo]) -> None:
    for impl in plugins.pm.hook.mljob_register_frameworks.get_hookimpls():
        source = impl.plugin_name
        info = infos.get(source, PluginInfo(source))
        registered: list[Framework] = []
        try:
            impl.function(register=registered.append)
            for framework in registered:
                if not isinstance(framework, Framework):
                    raise TypeError(f"registered {framework!r}, which is not an mljob.Framework")
                plugins.registry.register(framework, source=source)
                plugins.info[framework.name] = info
        except Exception as error:
            plugins.broken.append(BrokenPlugin(source, f"{type(error).__name__}: {error}"))


def problems_text(problems: Sequence[Problem]) -> str:
    return "\n".join(str(p) for p in problems)
