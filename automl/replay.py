"""``automl train``: retrain a recipe, evaluate the test split exactly once, save the results."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch

from automl.data import load_data, with_validation_in_train
from automl.discovery import training_manager
from automl.recipe import Recipe
from automl.trainer import evaluate, fit, prepare, resolve_device
from automl.yamlio import write_atomic

__all__ = ["replay"]


def replay(recipe: Recipe, out: Path, *, device: str | None = None,
           progress: Callable[[int, int, dict], None] | None = None,
           compile: bool = False, seed: int | None = None, train_fraction: float | None = None,
           include_val: bool = False) -> dict[str, float]:
    """Train on the train split, then score val and (once) test; write model, metrics, recipe.

    ``seed`` and ``train_fraction`` (``None``: the recipe's own) override the recipe's, and the
    recipe written is the one trained. ``include_val`` trains on train + val (a final model):
    the val scores are then not held out, which metrics.json says.
    """
    recipe = _overridden(recipe, seed, train_fraction)
    data = load_data(recipe.data)  # user errors surface before anything is written
    if include_val:
        data = with_validation_in_train(data)
    pm = training_manager(recipe)
    state = prepare(recipe, data, pm, resolve_device(device), compile=compile)
    fit(state, pm, on_epoch=(lambda st, m: progress(st.epoch + 1, st.epochs, m))
        if progress else None)
    metrics = {**state.history[-1], **evaluate(state, pm, data.test, "test")}
    out.mkdir(parents=True, exist_ok=True)
    model = pm.hook.eval_model(state=state)
    torch.save(model.state_dict(), out / "model.pt")
    record = {"metrics": metrics, "test_evaluations": 1, "history": state.history,
              "device": str(state.device), "threads": torch.get_num_threads(),
              "dataset": data.name, "seed": recipe.seed,
              "train_fraction": float(recipe.data.get("train_fraction", 1.0)),
              "include_val": include_val, "val_held_out": not include_val}
    if include_val:
        record["note"] = ("trained on train + val (include_val): the val/* scores are on "
                          "images the model was trained on, not held out")
    write_atomic(out / "metrics.json", json.dumps(record, indent=2) + "\n")
    write_atomic(out / "recipe.yaml", recipe.to_yaml())
    return metrics


def _overridden(recipe: Recipe, seed: int | None, train_fraction: float | None) -> Recipe:
    """A copy of ``recipe`` with the given seed and training fraction (1: no key, the default)."""
    data = dict(recipe.data)
    if train_fraction is not None:
        data.pop("train_fraction", None)
        if train_fraction != 1:
            data["train_fraction"] = train_fraction
    return dataclasses.replace(recipe, data=data,
                               seed=recipe.seed if seed is None else seed)
