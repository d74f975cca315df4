"""Loading plugins from the ``virnucpro`` entry-point group, and the facade the core calls.

Built-in packages and third-party plugins load the same way. Two environment variables
choose which load (names are entry-point names or distribution names, comma-separated):

- ``VIRNUCPRO_PLUGINS_BLOCK``: never load these (built-in ones included).
- ``VIRNUCPRO_PLUGINS_ALLOW``: when set, load only these third-party plugins; the
  built-in virnucpro packages always load. Set it empty to load no third-party plugin.

A plugin that fails to import stops start-up with a one-line :class:`PluginError`
naming it; so does one that implements a hook nobody specified, when the caller knows
every hook (the cli does; the Python API cannot know other front ends' hooks).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

import pluggy

from virnucpro.infer.hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME, EngineSpec
from virnucpro.infer.job.errors import PluginError
from virnucpro.infer.writers import WriterRegistry

if TYPE_CHECKING:
    from virnucpro.infer.registry import ModelRegistry

BLOCK_VAR = "VIRNUCPRO_PLUGINS_BLOCK"
ALLOW_VAR = "VIRNUCPRO_PLUGINS_ALLOW"
BUILTIN_DISTRIBUTIONS = frozenset(
    {"virnucpro-data", "virnucpro-ckpt", "virnucpro-infer", "virnucpro-cli"}
)


def normalize(name: str) -> str:
    """Distribution names compare as PEP 503 normalizes them."""
    return name.strip().lower().replace("_", "-").replace(".", "-")


@dataclass(frozen=True)
class PluginInfo:
    """One entry point of the ``virnucpro`` group and what became of it."""

    name: str
    distribution: str
    version: str
    builtin: bool
    loaded: bool


@dataclass(frozen=True)
class PluginSelection:
    """Which plugins the environment blocks or allows."""

    blocked: frozenset[str]
    allowed: frozenset[str] | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> PluginSelection:
        allow = environ.get(ALLOW_VAR)
        return cls(
            blocked=_names(environ.get(BLOCK_VAR, "")),
            allowed=None if allow is None else _names(allow),
        )

    def admits(self, entry_point: str, distribution: str, builtin: bool) -> bool:
        keys = {normalize(entry_point), normalize(distribution)}
        if keys & self.blocked:
            return False
        return builtin or self.allowed is None or bool(keys & self.allowed)


def _names(text: str) -> frozenset[str]:
    return frozenset(normalize(part) for part in text.split(",") if part.strip())


class PluginHost:
    """The typed facade over the plugin manager: the engine calls these, never ``pm.hook``."""

    def __init__(self, manager: pluggy.PluginManager, plugins: Iterable[PluginInfo]) -> None:
        self.manager = manager
        self.plugins: tuple[PluginInfo, ...] = tuple(plugins)

    def model_registry(self) -> ModelRegistry:
        """A model registry filled by every plugin."""
        from virnucpro.infer.registry import ModelRegistry

        registry = ModelRegistry()
        self.manager.hook.virnucpro_register_models(registry=registry)
        return registry

    def writers(self) -> WriterRegistry:
        """A writer registry filled by every plugin."""
        registry = WriterRegistry()
        self.manager.hook.virnucpro_register_writers(registry=registry)
        return registry


def new_manager(extra_specs: Iterable[type] = ()) -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(EngineSpec)
    for spec in extra_specs:
        manager.add_hookspecs(spec)
    return manager


def load_plugins(
    environ: Mapping[str, str] | None = None,
    extra_specs: Iterable[type] = (),
    strict: bool = False,
) -> PluginHost:
    """Load the admitted entry points of the ``virnucpro`` group. ``extra_specs``: a
    front end's own hook specifications; ``strict``: refuse hooks none of them names."""
    selection = PluginSelection.from_environ(os.environ if environ is None else environ)
    manager = new_manager(extra_specs)
    infos: list[PluginInfo] = []
    for entry_point in _unique_entry_points():
        dist_name = entry_point.dist.name if entry_point.dist else "unknown"
        version = entry_point.dist.version if entry_point.dist else "unknown"
        builtin = normalize(dist_name) in BUILTIN_DISTRIBUTIONS
        admitted = selection.admits(entry_point.name, dist_name, builtin)
        if admitted:
            _register(manager, entry_point, dist_name)
        infos.append(PluginInfo(entry_point.name, dist_name, version, builtin, admitted))
    if strict:
        _check_pending(manager, infos)
    return PluginHost(manager, infos)


def _unique_entry_points() -> list[metadata.EntryPoint]:
    """Entry points of the group, once each even if a distribution is on the path twice."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (normalize(entry_point.dist.name) if entry_point.dist else "", entry_point.name)
        if key not in seen:
            seen.add(key)
            unique.append(entry_point)
    return sorted(unique, key=lambda ep: ep.name)


def _register(manager: pluggy.PluginManager, entry_point: metadata.EntryPoint, dist: str) -> None:
    label = f"plugin {entry_point.name!r} (from {dist})"
    try:
        plugin = entry_point.load()
    except Exception as exc:
        raise PluginError(f"{label} failed to load: {type(exc).__name__}: {exc}") from exc
    try:
        manager.register(plugin, name=entry_point.name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f"{label} is invalid: {exc}") from exc


def _check_pending(manager: pluggy.PluginManager, infos: list[PluginInfo]) -> None:
    """Refuse hook implementations that match no specification (a typo, or a stale API)."""
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin_name = manager.get_name(exc.plugin) or "?"
        dist = next((i.distribution for i in infos if i.name == plugin_name), "unknown")
        unknown = sorted(
            name
            for name, caller in vars(manager.hook).items()
            if isinstance(caller, pluggy.HookCaller)
            and not caller.has_spec()
            and any(impl.plugin is exc.plugin for impl in caller.get_hookimpls())
        )
        hooks = ", ".join(unknown) or str(exc)
        raise PluginError(
            f"plugin {plugin_name!r} (from {dist}) implements unknown hook(s) {hooks}: "
            f"update or remove it, or block it with {BLOCK_VAR}={plugin_name}"
        ) from exc
