"""``automl train``: retrain a recipe, evaluate the test split exactly once, save the results."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from automl.class_metrics import class_report
from automl.data import load_data, with_validation_in_train
from automl.discovery import training_manager
from automl.distributed import init_from_env, rank_device, shutdown
from automl.errors import UserError
from automl.model_file import save_model
from automl.provenance import environment, environment_differences
from automl.recipe import Recipe
from automl.stages import StageDirectory, run_stage_dir
from automl.trainer import evaluate_with_confusion, fit, prepare, resolve_device
from automl.yamlio import write_atomic

__all__ = ["RUN_FILES", "check_run_folder", "replay"]

#: What a training run writes into its folder (and what a new run must not silently replace).
RUN_FILES = ("model.pt", "metrics.json", "recipe.yaml")
logger = logging.getLogger("automl")


def replay(recipe: Recipe, out: Path, *, device: str | None = None,
           progress: Callable[[int, int, dict], None] | None = None,
           compile: bool = False, seed: int | None = None, train_fraction: float | None = None,
           include_val: bool = False, overwrite: bool = False,
           reuse_stages: Sequence[Path] = ()) -> dict[str, float]:
    """Train on the train split, then score val and (once) test; write model, metrics, recipe.

    ``seed`` and ``train_fraction`` (``None``: the recipe's own) override the recipe's, and the
    recipe written is the one trained. ``include_val`` trains on train + val (a final model):
    the val scores are then not held out, which metrics.json says. A folder that holds an
    earlier run is refused before training starts, unless ``overwrite``. metrics.json records
    this process's versions and plugins, and where they differ from those the recipe's
    provenance names (also said as warnings). Started by torchrun (``automl train --nproc``),
    every rank trains its share of each batch and rank 0 alone writes. Stages the recipe's
    techniques need are cached in ``out/stages``; an identical one (same stage recipe, data
    and versions) in a ``reuse_stages`` folder (the search's, beside its best_recipe.yaml)
    is reused instead.
    """
    check_run_folder(out, overwrite)
    recipe = _overridden(recipe, seed, train_fraction)
    for line in version_differences(recipe):  # said before the training, recorded after it
        logger.warning(line)
    data = load_data(recipe.data)  # user errors surface before anything is written
    if include_val:
        data = with_validation_in_train(data)
    pm = training_manager(recipe, extra_plugins=[
        StageDirectory(run_stage_dir(out), reuse=[p for p in reuse_stages
                                                  if p.resolve() != run_stage_dir(out).resolve()])])
    on_device = rank_device(resolve_device(device))
    here = init_from_env(on_device)  # started by torchrun: join the other ranks
    try:
        state = prepare(recipe, data, pm, on_device, compile=compile)
        fit(state, pm, on_epoch=(lambda st, m: progress(st.epoch + 1, st.epochs, m))
            if progress else None)
        model = pm.hook.eval_model(state=state)  # the model evaluated is the model saved
        test_metrics, test_confusion = evaluate_with_confusion(state, pm, data.test, "test",
                                                               model=model)
        metrics = {**state.history[-1], **test_metrics}
        val_confusion = evaluate_with_confusion(state, pm, data.val, "val", model=model)[1]
    finally:
        shutdown()
    if not here.is_main:  # rank 0 writes the outputs
        return metrics
    out.mkdir(parents=True, exist_ok=True)
    save_model(out / "model.pt", state, pm, model, metrics)
    record = {"metrics": metrics, "test_evaluations": 1, "history": state.history,
              "device": str(state.device), "threads": torch.get_num_threads(),
              "ranks": here.size,
              "dataset": data.name, "seed": recipe.seed,
              "train_fraction": float(recipe.data.get("train_fraction", 1.0)),
              "include_val": include_val, "val_held_out": not include_val,
              "per_class": {"test": class_report(test_confusion, data.class_names),
                            "val": class_report(val_confusion, data.class_names)}}
    if include_val:
        record["note"] = ("trained on train + val (include_val): the val/* scores are on "
                          "images the model was trained on, not held out")
    if recipe.provenance:  # where the recipe came from (automl.provenance), kept with the run
        record["recipe_provenance"] = recipe.provenance
    record["environment"] = environment()  # the versions and plugins of this training
    differences = version_differences(recipe, record["environment"])
    if differences:
        record["environment_differences"] = differences
    write_atomic(out / "metrics.json", json.dumps(record, indent=2) + "\n")
    write_atomic(out / "recipe.yaml", recipe.to_yaml())
    return metrics


def version_differences(recipe: Recipe, current: dict | None = None) -> list[str]:
    """Where this process's versions and plugins differ from those that trained the recipe
    (its provenance), one line each."""
    p = recipe.provenance or {}
    trained = (f"trial {p['trial']} of study '{p['study']}' was trained"
               if "study" in p and "trial" in p else "the recipe was trained")
    return environment_differences(p, trained, current)


def check_run_folder(out: Path, overwrite: bool = False) -> None:
    """Refuse (one line) to train into a folder that holds an earlier run's files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    kept = [name for name in RUN_FILES if (out / name).exists()]
    if kept and not overwrite:
        raise UserError(f"{out} already holds a training run ({', '.join(kept)}); pass another "
                        "--out, or --overwrite to replace it")


def _overridden(recipe: Recipe, seed: int | None, train_fraction: float | None) -> Recipe:
    """A copy of ``recipe`` with the given seed and training fraction (1: no key, the default)."""
    data = dict(recipe.data)
    if train_fraction is not None:
        data.pop("train_fraction", None)
        if train_fraction != 1:
            data["train_fraction"] = train_fraction
    return dataclasses.replace(recipe, data=data,
                               seed=recipe.seed if seed is None else seed)
