"""A registered dataset: its name, its loader, the keys it reads and how its files are found.

Plugins (the built-in datasets too) hand these over through the ``register_datasets`` discovery
hook (:func:`automl.discovery.dataset_catalog` collects them). Registering imports nothing
heavy: the loader imports torch and its readers when it runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from automl.errors import UserError

if TYPE_CHECKING:
    from automl.data.splits import Split

__all__ = ["Dataset", "Loader", "Locator", "available_datasets"]

#: ``load(settings) -> (train_full, test, class_names)``: the official training set (validation
#: is cut from it by the core), the test set, and the class names in label order; optionally a
#: fourth item, a Split of training images without labels (the folder dataset's
#: ``unlabelled/``; its labels are ignored).
Loader = Callable[[dict[str, Any]], "tuple[Split, Split, list[str]]"]
#: ``locate(settings)``: find the files ``load`` will read (downloading them when the
#: settings allow), without reading them; raises :class:`~automl.errors.UserError`. What it
#: returns is ignored (the built-in loaders call their own ``locate`` for the paths).
Locator = Callable[[dict[str, Any]], Any]
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Dataset:
    """One entry of :func:`automl.discovery.dataset_catalog`."""

    name: str
    load: Loader
    #: The ``data:`` keys the loader reads (``data_dir``, or keys of its own, which become valid
    #: in a space); the in-process cache loads again only when one of them changes. ``None``:
    #: unknown, so every key counts for the cache and none becomes valid.
    reads: tuple[str, ...] | None = None
    requires: tuple[str, ...] = ()  # keys a space must set (the folder dataset's ``path``)
    locate: Locator | None = None  # None: nothing to find (the data ships with the code)
    plugin: str = ""  # the plugin that registered it

    @classmethod
    def checked(cls, plugin: str, name: Any, load: Any, *, reads: Sequence[str] | None = None,
                requires: Sequence[str] = (), locate: Any = None) -> Dataset:
        """What ``register(...)`` received, validated so a plugin's mistake names the plugin."""
        where = f"plugin '{plugin}' registered dataset {name!r}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UserError(f"{where}: a dataset name is lowercase letters, digits and _")
        if not callable(load) or (locate is not None and not callable(locate)):
            raise UserError(f"{where}: load (and locate, when given) must be functions")
        for label, keys in (("reads", reads or ()), ("requires", requires)):
            if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
                raise UserError(f"{where}: {label} must be a list of data keys")
        if reads is not None and set(requires) - set(reads):
            raise UserError(f"{where}: requires {sorted(set(requires) - set(reads))}, which "
                            "it does not list in reads")
        return cls(name, load, None if reads is None else tuple(reads), tuple(requires),
                   locate, plugin)


def available_datasets() -> list[str]:
    """Sorted registered names, for help texts and error messages (imports no torch)."""
    from automl.discovery import dataset_catalog

    return sorted(dataset_catalog())
