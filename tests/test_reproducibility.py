"""Same seed, same results, bit for bit on a CPU: a search run twice gives the same trials with
the same metrics (random sampler and TPE), and a recipe trained twice gives the same weights.

tests/test_cli.py checks that the same seed draws the same parameters (random sampler); these
add TPE, which learns from the metrics, and the metrics themselves.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from automl.checkpoints import load_weights
from automl.data import load_data
from automl.discovery import technique_catalog
from automl.recipe import Recipe
from automl.replay import replay
from automl.report import SilentReporter
from automl.search import SearchSettings, run_search
from automl.space import load_space

# Techniques that draw random numbers every batch (crop, flip, mixup, dropout), so a seed that
# failed to reach any of them would show in the metrics.
SPACE = """\
model: automl_resnet8
data: {dataset: digits, batch_size: 128}
epochs: 1
seed: 3
techniques:
  optimizer: {}
  lr_schedule: {}
  random_crop: {}
  flip: {}
  mixup: {}
  dropout: {}
study: {n_trials: %(n_trials)d, sampler: %(sampler)s, pruner: none, seed: 11}
"""
WALL_CLOCK = {"seconds"}  # the only user attribute allowed to differ between two runs


def _search(root: Path, sampler: str, n_trials: int, out: str) -> list[FrozenTrial]:
    path = root / f"{sampler}.yaml"
    path.write_text(SPACE % {"sampler": sampler, "n_trials": n_trials})
    space = load_space(path, technique_catalog())
    settings = SearchSettings.from_space(space, study_name=sampler, run_dir=root / out,
                                         device="cpu")
    study = run_search(space, settings, SilentReporter(), data=load_data(space.data))
    return study.get_trials(deepcopy=False)


def _outcome(trial: FrozenTrial) -> dict:
    return {"number": trial.number, "state": trial.state, "params": trial.params,
            "value": trial.value, "intermediate": trial.intermediate_values,
            "attrs": {k: v for k, v in trial.user_attrs.items() if k not in WALL_CLOCK}}


@pytest.mark.parametrize(("sampler", "n_trials"), [("random", 4), ("tpe", 7)])
def test_the_same_seed_twice_gives_identical_trials_and_metrics(tmp_path, sampler, n_trials):
    """TPE samples at random for its first 5 trials, so 7 trials reach its model."""
    first = _search(tmp_path, sampler, n_trials, "A")
    second = _search(tmp_path, sampler, n_trials, "B")
    assert len(first) == n_trials
    assert all(t.state == TrialState.COMPLETE for t in first), \
        [t.user_attrs.get("fail_reason") for t in first]
    assert len({repr(t.params) for t in first}) == n_trials, "every trial has its own values"
    for a, b in zip(first, second, strict=True):
        assert _outcome(a) == _outcome(b)  # the metrics too: == on floats is bit for bit
        assert a.user_attrs["metrics"]["train/loss"] == b.user_attrs["metrics"]["train/loss"]


RECIPE = Recipe(
    model="automl_resnet8", data={"dataset": "digits", "batch_size": 64}, epochs=2, seed=5,
    techniques={"optimizer": {"name": "adamw", "lr": 0.003},
                "lr_schedule": {"schedule": "cosine", "warmup": 0.1, "warmup_shape": "linear",
                                "cycles": 3},
                "random_crop": {"padding": 2, "padding_mode": "reflect"},
                "flip": {"p": 0.5}, "mixup": {"alpha": 0.4}, "dropout": {"rate": 0.2},
                "ema": {"decay": 0.9}})


def test_retraining_a_recipe_gives_identical_metrics_and_weights(tmp_path):
    metrics = [replay(RECIPE, tmp_path / out, device="cpu") for out in ("A", "B")]
    assert metrics[0] == metrics[1]
    records = [json.loads((tmp_path / out / "metrics.json").read_text()) for out in ("A", "B")]
    assert records[0]["metrics"] == records[1]["metrics"]
    assert records[0]["history"] == records[1]["history"]
    weights = [load_weights(tmp_path / out / "model.pt") for out in ("A", "B")]
    assert list(weights[0]) == list(weights[1])
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_another_recipe_seed_gives_other_weights(tmp_path):
    """The comparison above can tell runs apart: only the seed differs here."""
    replay(RECIPE, tmp_path / "A", device="cpu")
    replay(dataclasses.replace(RECIPE, seed=RECIPE.seed + 1), tmp_path / "B", device="cpu")
    weights = [load_weights(tmp_path / out / "model.pt") for out in ("A", "B")]
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
