"""Why a trial failed, in one line: out of memory, or which plugin's hook raised what.

A search must outlive its trials: an exception inside one training fails that trial (the
reason is stored on it and printed) and the study goes on with the next.
"""

from __future__ import annotations

import traceback

import pluggy
import torch

from automl.errors import exception_line

__all__ = ["failure_reason", "raising_hook"]

OOM = "oom"


def failure_reason(exc: BaseException, pm: pluggy.PluginManager | None) -> str:
    """``oom`` for out-of-memory errors, else ``plugin P, hook H: Type: message`` when a
    technique's hook raised (``Type: message`` when the core did)."""
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return OOM
    text = exception_line(exc)
    where = raising_hook(exc, pm) if pm is not None else None
    return f"plugin {where[0]}, hook {where[1]}: {text}" if where else text


def raising_hook(exc: BaseException, pm: pluggy.PluginManager) -> tuple[str, str] | None:
    """(plugin name, hook name) of the innermost hook implementation in the traceback."""
    impls = {}
    for name, plugin in pm.list_name_plugin():
        for caller in pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    impls[impl.function.__code__] = (name, caller.name)
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        found = impls.get(frame.f_code, found)
    return found
