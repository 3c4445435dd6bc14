"""The built-in datasets, registered through the same ``register_datasets`` hook as a plugin's.

Each loader is named by ``module:function`` and imported when it first runs, so discovering the
datasets (``automl --help``, ``automl techniques``) imports neither torch nor numpy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from automl.hookspecs import hookimpl

__all__ = ["register_datasets"]

_FOLDER_KEYS = ("path", "image_size", "in_memory", "workers")


@hookimpl
def register_datasets(register: Any) -> None:
    register("digits", _lazy("digits:load"), reads=())
    for name in ("fashion_mnist", "mnist"):
        register(name, _lazy("idx:load"), reads=("data_dir",), locate=_lazy("idx:locate"))
    for name in ("cifar10", "cifar100"):
        register(name, _lazy("cifar:load"), reads=("data_dir",), locate=_lazy("cifar:locate"))
    register("folder", _lazy("folder:load"), reads=_FOLDER_KEYS, requires=("path",),
             locate=_lazy("folder:locate"))


def _lazy(target: str) -> Callable[[dict], Any]:
    """``function(settings)`` of ``automl.data.MODULE``, imported on the first call."""
    module, name = target.split(":")

    def call(settings: dict) -> Any:
        return getattr(importlib.import_module(f"automl.data.{module}"), name)(settings)

    call.__qualname__ = f"automl.data.{module}.{name}"
    return call
