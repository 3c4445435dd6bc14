"""Warm start: known-good recipes a search evaluates right after its baseline.

A search that starts from the technique defaults and a random sampler can spend much of a
small budget below what a published recipe reaches in one trial. The package ships such
recipes (``automl/search_spaces/known_recipes/*.yaml``, one per recipe, in this project's
technique and parameter names, with the values as published and the batch size their LR was
published for). Each is adapted to the space being searched and queued as a trial, so the
search starts no worse than the best of them on this model and budget.

Adapting keeps only the techniques the space lists, rescales the LR from the recipe's batch
size to the space's (linear for SGD, square root for the adaptive optimizers), keeps warmup as
a fraction of training and everything else as published; :meth:`SearchSpace.params_for` then
clips each value into the space's ranges and keeps what the space fixes, and leaves off a
technique that conflicts with one already on (said as a warning).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from optuna.distributions import CategoricalDistribution

from automl.discovery import technique_catalog
from automl.errors import ConfigError
from automl.functional import lr_scale
from automl.space import SearchSpace
from automl.technique import Technique, conflict
from automl.yamlio import Lines, load_yaml

__all__ = ["KnownRecipe", "known_recipes", "read_known_recipe", "adapt", "by_budget",
           "warm_start_params", "LR_SCALING", "BUDGET_SHARE", "RECIPES_PACKAGE",
           "RECIPES_FOLDER"]

RECIPES_PACKAGE = "automl.search_spaces"
RECIPES_FOLDER = "known_recipes"
KEYS = ("name", "source", "summary", "batch_size", "epochs", "techniques")
logger = logging.getLogger("automl")
#: The most of a search's budget the known recipes take (at least one trial): a known recipe
#: is a strong start, but a small budget spent on many of them leaves little to search.
BUDGET_SHARE = 0.25

#: How an optimizer's LR follows the batch size: linearly for SGD (Goyal et al., "Accurate,
#: Large Minibatch SGD", 2017), with its square root for the adaptive optimizers, whose update
#: is normalised by the gradient's own scale (Krizhevsky, "One weird trick", 2014; Hoffer et
#: al., "Train longer, generalize better", 2017; You et al. scale LAMB's LR the same way).
LR_SCALING = {"sgd": "linear", "nesterov": "linear", "adamw": "sqrt", "lamb": "sqrt",
              "rmsprop": "sqrt"}


@dataclass(frozen=True)
class KnownRecipe:
    """A published recipe in this project's terms: technique name -> parameter values."""

    name: str
    source: str  # who published it, where
    summary: str  # one line: what it is, what was adapted or left out
    batch_size: int  # the batch size its LR was published for
    epochs: int  # the training length it was published for
    techniques: dict[str, dict[str, Any]]


def known_recipes() -> list[KnownRecipe]:
    """Every shipped recipe, in file-name order, validated against the technique catalog.

    A file that does not validate is a bug in the package (not a user's mistake), so it
    raises ValueError naming the file and the key.
    """
    folder = resources.files(RECIPES_PACKAGE) / RECIPES_FOLDER
    catalog = technique_catalog()
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")),
                   key=lambda f: f.name)
    return [_read(f, catalog) for f in files]


def read_known_recipe(path: str | Path,
                      catalog: dict[str, type[Technique]] | None = None) -> KnownRecipe:
    """One recipe file, validated; ValueError (file:line: key: problem) if it is wrong."""
    return _read(Path(path), technique_catalog() if catalog is None else catalog)


def _read(file: Traversable | Path, catalog: dict[str, type[Technique]]) -> KnownRecipe:
    with resources.as_file(file) as path:
        try:
            data, lines = load_yaml(path)
        except ConfigError as exc:
            raise ValueError(exc.format()) from None
        return _validate(data, lines, str(path), Path(file.name).stem, catalog)


def _validate(data: Any, lines: Lines, file: str, stem: str,
              catalog: dict[str, type[Technique]]) -> KnownRecipe:
    def fail(key: tuple[str, ...], message: str) -> None:
        line = next((lines[key[:n]] for n in range(len(key), -1, -1) if key[:n] in lines), None)
        raise ValueError(ConfigError(message, file=file, key=".".join(key) or None,
                                     line=line).format())

    if not isinstance(data, dict):
        fail((), "expected a mapping of " + ", ".join(KEYS))
    for key in data:
        if key not in KEYS:
            fail((key,), "unknown key; valid: " + ", ".join(KEYS))
    for key in KEYS:
        if key not in data:
            fail((), f"missing '{key}'")
    if data["name"] != stem:
        fail(("name",), f"expected the file's name {stem!r}, got {data['name']!r}")
    for key in ("source", "summary"):
        if not isinstance(data[key], str) or not data[key].strip():
            fail((key,), "expected a non-empty string")
    for key in ("batch_size", "epochs"):
        number = data[key]
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            fail((key,), f"expected an integer >= 1, got {number!r}")
    if not isinstance(data["techniques"], dict) or not data["techniques"]:
        fail(("techniques",), "expected a mapping of technique names to values")
    techniques: dict[str, dict[str, Any]] = {}
    for name, values in data["techniques"].items():
        key = ("techniques", name)
        if name not in catalog:
            fail(key, "unknown technique; valid: " + ", ".join(sorted(catalog)))
        values = {} if values is None else values
        if not isinstance(values, dict):
            fail(key, "expected a mapping of parameter names to values")
        cls = catalog[name]
        for param, value in values.items():
            if param not in cls.space:
                fail((*key, param), "unknown parameter; valid: " + (", ".join(cls.space)
                                                                    or "none"))
            problem = cls.check_value(param, value)
            if problem:
                fail((*key, param), problem)
        techniques[name] = dict(values)
    names = list(techniques)
    for i, name in enumerate(names):
        for other in names[i + 1:]:
            why = conflict(catalog[name], catalog[other])
            if why:
                fail(("techniques", other), f"'{name}' and '{other}' cannot both be on: {why}")
    if "optimizer" in techniques:
        opt = {**catalog["optimizer"].defaults, **techniques["optimizer"]}
        if opt["name"] not in LR_SCALING:
            fail(("techniques", "optimizer", "name"),
                 f"no LR scaling rule for optimizer {opt['name']!r} (add it to LR_SCALING)")
    return KnownRecipe(name=data["name"], source=data["source"], summary=data["summary"],
                       batch_size=data["batch_size"], epochs=data["epochs"],
                       techniques=techniques)


def adapt(recipe: KnownRecipe, space: SearchSpace) -> dict[str, dict[str, Any]]:
    """The recipe's technique settings for this space: techniques the space does not list are
    dropped, the LR is rescaled from the recipe's batch size to ``space.data["batch_size"]``
    (the batch size the space's LR ranges, and the batch-size technique, refer to), warmup
    stays a fraction of training, every other value is as published (clipping into the
    space's ranges is :meth:`SearchSpace.params_for`'s job)."""
    settings = {name: dict(values) for name, values in recipe.techniques.items()
                if name in space.techniques}
    opt = settings.get("optimizer")
    if opt is not None and "name" in opt:
        opt["name"] = _available_optimizer(opt["name"], space)
    if opt is not None and "lr" in opt:
        name = opt.get("name", space.techniques["optimizer"].cls.defaults["name"])
        if name not in LR_SCALING:
            raise ValueError(f"known recipe {recipe.name!r}: no LR scaling rule for optimizer "
                             f"{name!r}")
        opt["lr"] *= lr_scale(LR_SCALING[name], space.data["batch_size"], recipe.batch_size)
    return settings


#: The nearest optimizer of the same kind, for a space that does not offer the recipe's own
#: (LAMB is AdamW with a per-layer trust ratio; Nesterov and heavy-ball SGD share their LRs).
SUBSTITUTES = {"lamb": "adamw", "rmsprop": "adamw", "adamw": "lamb", "nesterov": "sgd",
               "sgd": "nesterov"}


def _available_optimizer(name: str, space: SearchSpace) -> str:
    """``name`` if the space can choose it, else its substitute (kept when neither is
    available: clipping then picks the space's first choice)."""
    choice = space.techniques["optimizer"].params.get("name", name)
    allowed = list(choice.choices) if isinstance(choice, CategoricalDistribution) else [choice]
    if name not in allowed and SUBSTITUTES.get(name) in allowed:
        return SUBSTITUTES[name]
    return name


def by_budget(recipes: list[KnownRecipe], epochs: int) -> list[KnownRecipe]:
    """Recipes made for a training length like ``epochs`` first (ratio of lengths on a log
    scale): a 10-epoch recipe's regularisation suits a 5-epoch budget, a 600-epoch one's
    (strong augmentation, mixing) needs the long schedule it was made for."""
    return sorted(recipes, key=lambda r: (abs(math.log(r.epochs / epochs)), r.name))


def warm_start_params(space: SearchSpace, budget: int | None = None
                      ) -> list[tuple[str, dict[str, Any]]]:
    """``(recipe name, trial parameters)`` of the known recipes this space can express, those
    made for a training length nearest the space's first, at most :data:`BUDGET_SHARE` of a
    ``budget`` of trials (at least one), for ``Study.enqueue_trial``. One that comes out as
    the baseline, or as an earlier recipe (after clipping to the space), is left out: it
    would spend a trial on a result the search already has."""
    limit = None if budget is None else max(1, int(budget * BUDGET_SHARE))
    seen = [space.baseline_params()]
    queued: list[tuple[str, dict[str, Any]]] = []
    for recipe in by_budget(known_recipes(), space.epochs):
        settings = adapt(recipe, space)
        params = space.params_for(settings)
        if params not in seen and (limit is None or len(queued) < limit):
            seen.append(params)
            queued.append((recipe.name, params))
            for off, kept, why in space.conflicts_left_off(settings):
                logger.warning("warm start: known recipe %s runs without %s, which cannot be "
                               "on with %s (%s)", recipe.name, off, kept, why)
    return queued
