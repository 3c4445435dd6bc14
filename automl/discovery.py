"""Plugin discovery: built-in techniques and installed entry points, one manager per trial.

Built-ins are registered through the same hooks as third-party plugins
(``register_techniques``; ``register_datasets`` from :mod:`automl.data.builtin`).
An entry point in the ``automl`` group may name a module (or object) implementing discovery
hooks, or a Technique subclass directly. ``AUTOML_PLUGINS`` (an allow-list) and
``AUTOML_DISABLE_PLUGINS`` pick which entry points load; a plugin left out is never imported.
"""

from __future__ import annotations

import functools
import os
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from automl import hookspecs
from automl.errors import UserError

if TYPE_CHECKING:
    from automl.data.dataset import Dataset
    from automl.recipe import Recipe
    from automl.technique import Technique

__all__ = ["ENTRY_POINT_GROUP", "ALLOW_ENV", "DISABLE_ENV", "dataset_catalog",
           "discovery_manager", "plugin_origin", "skipped_plugins", "technique_catalog",
           "technique_sources", "training_manager", "check_technique_hooks", "hook_names",
           "hook_order"]

ENTRY_POINT_GROUP = "automl"
ALLOW_ENV = "AUTOML_PLUGINS"  # comma-separated: only these entry points load
DISABLE_ENV = "AUTOML_DISABLE_PLUGINS"  # comma-separated: these entry points do not load
_ORIGINS: dict[str, str] = {"builtins": "automl-recipes (built-in)",
                            "builtin_datasets": "automl-recipes (built-in)"}
_SKIPPED: dict[str, str] = {}
_TECHNIQUE_SOURCES: dict[str, str] = {}  # technique -> plugin, set by technique_catalog


@functools.cache
def discovery_manager() -> pluggy.PluginManager:
    """The process-wide manager: built-ins first, then the installed plugins the lists allow
    (read from the environment once, at the first call)."""
    selected, skipped = _selected_entry_points()  # a wrong name fails before any import
    import automl.data.builtin as builtin_datasets
    import automl.plugins as builtins  # the project's plugins/ folder

    _SKIPPED.clear()
    _SKIPPED.update(skipped)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs.DiscoverySpecs)
    pm.register(builtins, name="builtins")
    pm.register(builtin_datasets, name="builtin_datasets")
    for ep in selected:
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party install must say which one
            raise UserError(f"plugin '{ep.name}' ({ep.value}) failed to load: {exc}") from exc
        from automl.technique import Technique  # here: --help without plugins needs no Optuna

        if isinstance(obj, type) and issubclass(obj, Technique):
            obj = _SingleTechnique(obj)
        _register(pm, obj, ep.name)
        if ep.dist is not None:
            _ORIGINS[ep.name] = f"{ep.dist.name} {ep.dist.version}"
    return pm


def _selected_entry_points() -> tuple[list[EntryPoint], dict[str, str]]:
    """The installed entry points the allow- and block-lists let through (judged by name, so
    a left-out plugin is never imported), and why each other one was left out.

    A listed name that is not installed is an error: a typo must not quietly load everything.
    """
    installed = entry_points(group=ENTRY_POINT_GROUP)
    allowed, disabled = _listed(ALLOW_ENV, installed.names), _listed(DISABLE_ENV, installed.names)
    selected, skipped = [], {}
    for ep in installed:
        if allowed is not None and ep.name not in allowed:
            skipped[ep.name] = f"not in {ALLOW_ENV}"
        elif disabled is not None and ep.name in disabled:
            skipped[ep.name] = f"in {DISABLE_ENV}"
        else:
            selected.append(ep)
    return selected, skipped


def _listed(variable: str, installed: set[str]) -> set[str] | None:
    """The plugin names in an environment variable (None when it is unset), all installed."""
    value = os.environ.get(variable)
    if value is None:
        return None
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(names - installed)
    if unknown:
        raise UserError(f"{variable}: no installed plugin named {', '.join(map(repr, unknown))} "
                        f"(installed: {', '.join(sorted(installed)) or 'none'}; built-ins "
                        "always load)")
    return names


def skipped_plugins() -> dict[str, str]:
    """Installed plugins left out by ``AUTOML_PLUGINS`` / ``AUTOML_DISABLE_PLUGINS``, and why."""
    discovery_manager()
    return dict(_SKIPPED)


def plugin_origin(name: str) -> str:
    """The distribution (name and version) a discovery plugin was installed with."""
    discovery_manager()
    return _ORIGINS.get(name, "unknown distribution")


class _SingleTechnique:
    """Adapter so an entry point can name a Technique class directly."""

    def __init__(self, cls: type[Technique]):
        self.cls = cls

    @hookspecs.hookimpl
    def register_techniques(self, register):
        register(self.cls)


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        if pm.has_plugin(name):
            pm.unregister(name=name)
        raise UserError(f"plugin '{name}': {exc}") from None


@functools.cache
def technique_catalog() -> dict[str, type[Technique]]:
    """Every registered technique class by name, each validated and its hooks checked."""
    from automl.technique import Technique

    pm = discovery_manager()
    catalog: dict[str, type[Technique]] = {}
    sources: dict[str, str] = {}

    def register(cls: type[Technique], *, _source: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Technique)):
            raise UserError(f"plugin '{_source}' registered {cls!r}, not a Technique subclass")
        try:
            cls.validate_class()
        except TypeError as exc:
            raise UserError(f"plugin '{_source}': {exc}") from None
        if cls.name in catalog:
            raise UserError(f"technique '{cls.name}' is registered twice: by plugin "
                            f"'{sources[cls.name]}' and by plugin '{_source}'")
        check_technique_hooks(cls)
        catalog[cls.name], sources[cls.name] = cls, _source

    for impl in pm.hook.register_techniques.get_hookimpls():
        impl.function(register=functools.partial(register, _source=impl.plugin_name))
    _TECHNIQUE_SOURCES.clear()
    _TECHNIQUE_SOURCES.update(sources)
    return catalog


def technique_sources() -> dict[str, str]:
    """The plugin (its entry-point name, or ``builtins``) that registered each technique."""
    technique_catalog()
    return dict(_TECHNIQUE_SOURCES)


@functools.cache
def dataset_catalog() -> dict[str, Dataset]:
    """Every registered dataset by name (see the ``register_datasets`` hook), each checked."""
    from automl.data.dataset import Dataset

    catalog: dict[str, Dataset] = {}

    def register(name: str, load: Any, *, _source: str, **options: Any) -> None:
        try:
            dataset = Dataset.checked(_source, name, load, **options)
        except TypeError as exc:  # an option that does not exist
            raise UserError(f"plugin '{_source}' registered dataset {name!r}: {exc}") from None
        if name in catalog:
            raise UserError(f"dataset '{name}' is registered twice: by plugin "
                            f"'{catalog[name].plugin}' and by plugin '{_source}'")
        catalog[name] = dataset

    for impl in discovery_manager().hook.register_datasets.get_hookimpls():
        impl.function(register=functools.partial(register, _source=impl.plugin_name))
    return catalog


def check_technique_hooks(cls: type[Technique]) -> None:
    """Reject a technique whose hook names or arguments do not match the specs."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs.TrainingSpecs)
    _register_checked(pm, cls(), cls)


def _register_checked(pm: pluggy.PluginManager, plugin: Technique, cls: type) -> None:
    where = f"technique '{cls.name}' ({cls.__module__}.{cls.__qualname__})"
    try:
        pm.register(plugin, name=cls.name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UserError(f"{where}: {_hook_problem(exc)}") from None


def _hook_problem(exc: pluggy.PluginValidationError) -> str:
    text = str(exc)
    if "unknown hook" in text:
        hook = text.split("unknown hook", 1)[1].split()[0].strip("'\"")
        valid = ", ".join(hook_names(hookspecs.TrainingSpecs))
        return f"unknown hook '{hook}' (valid hooks: {valid})"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def hook_names(specs: type) -> list[str]:
    """Names of the hooks declared on a spec class, in declaration order."""
    return [n for n in vars(specs) if not n.startswith("_") and callable(getattr(specs, n))]


def training_manager(recipe: Recipe, catalog: dict[str, type[Technique]] | None = None,
                     extra_plugins: list[Any] = ()) -> pluggy.PluginManager:
    """A fresh manager for one training: core defaults plus each enabled technique, configured,
    in the canonical order (:func:`_register_in_order`)."""
    from automl.defaults import CoreDefaults

    catalog = catalog if catalog is not None else technique_catalog()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs.TrainingSpecs)
    pm.register(CoreDefaults(), name="core")
    for name in recipe.techniques:
        if name not in catalog:
            raise UserError(f"unknown technique '{name}'; valid: {', '.join(sorted(catalog))}")
    _register_in_order(pm, [catalog[name](**params)
                            for name, params in recipe.techniques.items()])
    for plugin in extra_plugins:
        pm.register(plugin)
    return pm


def _register_in_order(pm: pluggy.PluginManager, techniques: list[Technique]) -> None:
    """Register techniques so that every hook calls them in the canonical order, whatever
    order a file listed them in: pluggy's tiers first (wrappers, then ``tryfirst``, plain,
    ``trylast``: what a technique declares), and by name within a tier. Pluggy calls the
    plugin registered last first, hence the reversed names."""
    for technique in sorted(techniques, key=lambda t: t.name, reverse=True):
        _register_checked(pm, technique, type(technique))


def hook_order(classes: list[type[Technique]]) -> dict[str, list[str]]:
    """The order in which each training hook that two or more of ``classes`` implement calls
    them, read from a manager registered the way :func:`training_manager` does it (a study
    records it, so that a change of the order is seen on resume)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs.TrainingSpecs)
    _register_in_order(pm, [cls() for cls in classes])
    order = {}
    for hook in hook_names(hookspecs.TrainingSpecs):
        called = [impl.plugin_name for impl in reversed(getattr(pm.hook, hook).get_hookimpls())]
        if len(called) > 1:
            order[hook] = called
    return order
