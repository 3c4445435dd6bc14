"""``automl train``: retrain a recipe, evaluate the test split exactly once, save the results."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from automl.data import load_data
from automl.discovery import training_manager
from automl.recipe import Recipe
from automl.trainer import evaluate, fit, prepare, resolve_device
from automl.yamlio import write_atomic

__all__ = ["replay"]


def replay(recipe: Recipe, out: Path, *, device: str | None = None,
           progress: Callable[[int, int, dict], None] | None = None,
           compile: bool = False) -> dict[str, float]:
    """Train on the train split, then score val and (once) test; write model, metrics, recipe."""
    data = load_data(recipe.data)  # user errors surface before anything is written
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
              "dataset": data.name}
    write_atomic(out / "metrics.json", json.dumps(record, indent=2) + "\n")
    write_atomic(out / "recipe.yaml", recipe.to_yaml())
    return metrics
