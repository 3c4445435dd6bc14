"""What one search process works with, passed down explicitly instead of read from globals.

:class:`Plugins` says where trials get their techniques and plugin managers; it is picklable,
so a ``--jobs`` worker process rebuilds exactly the same (a test's or a bench's extra plugin
reaches every worker). :class:`SearchContext` is one process's view: the settings, the
plugins, the catalog they give, the device and the reporter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import optuna
    import pluggy
    import torch
    from optuna.trial import FrozenTrial

    from automl.recipe import Recipe
    from automl.search_settings import SearchSettings
    from automl.technique import Technique

__all__ = ["Reporter", "Plugins", "SearchContext", "ManagerFactory"]

#: ``factory(recipe, catalog, extra_plugins=[...]) -> PluginManager`` (see
#: :func:`automl.discovery.training_manager`, the default).
ManagerFactory = Callable[..., "pluggy.PluginManager"]


class Reporter(Protocol):
    """What the driver tells the user about; see :mod:`automl.report` for the console one."""

    def search_start(self, study: optuna.Study, settings: SearchSettings, todo: int) -> None: ...
    def trial_start(self, trial: optuna.Trial, recipe: Recipe) -> None: ...
    def epoch(self, trial: optuna.Trial, epoch: int, epochs: int,
              metrics: dict[str, float]) -> None: ...
    def trial_end(self, study: optuna.Study, trial: FrozenTrial, new_best: bool) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass(frozen=True)
class Plugins:
    """The techniques and managers of a search's trainings. The defaults discover installed
    plugins in each process; a catalog, a manager factory or extra plugin objects given here
    must be picklable (module-level classes and functions) to reach ``--jobs`` workers."""

    catalog: Mapping[str, type[Technique]] | None = None  # None: the discovered catalog
    manager_factory: ManagerFactory | None = None  # None: automl.discovery.training_manager
    extra: tuple[Any, ...] = ()  # plugin objects registered in every training's manager

    def technique_catalog(self) -> dict[str, type[Technique]]:
        from automl.discovery import technique_catalog
        return dict(self.catalog) if self.catalog is not None else technique_catalog()


@dataclass
class SearchContext:
    """One process's search: built once per process (:meth:`build`), handed to every step."""

    settings: SearchSettings
    reporter: Reporter
    device: torch.device
    plugins: Plugins = field(default_factory=Plugins)
    catalog: dict[str, type[Technique]] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: SearchSettings, reporter: Reporter, device: str | None,
              plugins: Plugins) -> SearchContext:
        from automl.trainer import resolve_device
        return cls(settings, reporter, resolve_device(device), plugins,
                   plugins.technique_catalog())

    def training_manager(self, recipe: Recipe) -> pluggy.PluginManager:
        """A fresh plugin manager for one training of ``recipe``."""
        from automl.discovery import training_manager
        factory = self.plugins.manager_factory or training_manager
        return factory(recipe, self.catalog, extra_plugins=list(self.plugins.extra))
