"""automl: search image-classification training recipes with pluggy techniques and Optuna.

``import automl`` stays cheap (no torch, timm or Optuna): the public names below are imported
on first use, and the project's models join timm's registry when timm itself is imported.
"""

from automl.hookspecs import hookimpl
from automl.timm_hook import register_models_with_timm

__all__ = ["Recipe", "Technique", "hookimpl", "load_model", "__version__"]
__version__ = "0.1.0"

#: Public name -> the module that defines it, imported on first access.
_LAZY = {
    "Recipe": "automl.recipe",
    "Technique": "automl.technique",
    "load_model": "automl.model_file",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'automl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


register_models_with_timm()
