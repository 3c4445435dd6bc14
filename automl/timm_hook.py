"""Make the project's models (``automl.models``) known to ``timm.create_model`` as soon as timm
is imported, without importing timm (and torch, seconds of start-up) when ``automl`` is.

``import automl`` calls :func:`register_models_with_timm`: if timm is already imported, the
models are registered now; otherwise a one-shot finder on ``sys.meta_path`` lets timm import
as usual and imports ``automl.models`` right after timm's own module has finished running.
The finder never changes what timm's import does: the first time ``timm`` is imported it
removes itself, restores timm's own loader on the module, and a failure to register the
models is a warning, never a failed ``import timm``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

__all__ = ["register_models_with_timm"]

_MARK = "_automl_timm_hook"  # on the finder, so a reloaded module still finds an old one


def register_models_with_timm() -> None:
    """Register ``automl.models`` in timm's registry now if timm is loaded, else right after
    timm's first import. Safe to call any number of times."""
    timm = sys.modules.get("timm")
    if timm is not None:
        if not getattr(getattr(timm, "__spec__", None), "_initializing", False):
            _import_models()
        # else timm is being imported right now: the finder, if it saw it, registers them
        return
    if not any(getattr(finder, _MARK, False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimm())


def _import_models() -> None:
    try:
        importlib.import_module("automl.models")
    except Exception as exc:  # timm itself imported fine; say why our models are missing
        warnings.warn(f"automl: could not register automl_* models with timm: {exc!r}",
                      RuntimeWarning, stacklevel=2)


class _AfterTimm(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for ``timm`` it wraps the loader the other finders found."""

    _automl_timm_hook = True

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # one shot
        try:
            spec = importlib.util.find_spec("timm")  # the finders after us, as usual
        except Exception:
            return None  # let the import system report it as it would have
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    """Runs timm's own loader, then registers our models (only if timm imported cleanly)."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self.loader  # timm sees its own loader, as without us
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _import_models()
