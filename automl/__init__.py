"""automl: search image-classification training recipes with pluggy techniques and Optuna."""

from automl.hookspecs import hookimpl
from automl.recipe import Recipe
from automl.technique import Technique

__all__ = ["Recipe", "Technique", "hookimpl", "__version__"]
__version__ = "0.1.0"
