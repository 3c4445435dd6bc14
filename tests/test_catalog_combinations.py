"""Every technique combines with every other: random recipes from the full-catalog space train.

Recipes are sampled (seeded) from the shipped ``full`` space, which searches every built-in
technique, and each is trained for two optimizer steps plus one validation pass on the embedded
digits dataset.
"""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from automl.plugins import BUILTIN_TECHNIQUES

from automl.cli import shipped_spaces
from automl.data import load_data
from automl.discovery import technique_catalog, training_manager
from automl.space import load_space
from automl.trainer import train

N_RECIPES = 50
CPU = torch.device("cpu")



@pytest.fixture(scope="module")
def full_space():
    space = load_space(shipped_spaces()["full"], technique_catalog())
    space.data = {"dataset": "digits", "batch_size": 32}
    space.epochs = 2  # two steps even at one step per epoch; a stage (distillation's teacher)
    return space      # trains for the recipe's epochs, once for all recipes: keep them few


@pytest.fixture(scope="module")
def recipes(full_space):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [full_space.sample(study.ask()) for _ in range(N_RECIPES)]


def test_full_space_searches_every_builtin_technique(full_space):
    """All but those needing a user's value (a checkpoint path) or unlabelled images (the
    full space has every label; tests/test_semi_supervised.py combines those)."""
    needs_user_values = {cls.name for cls in BUILTIN_TECHNIQUES if cls.user_set_params()}
    assert needs_user_values == {"transfer_learning"}  # its checkpoint path
    needs_unlabelled = {cls.name for cls in BUILTIN_TECHNIQUES if cls.needs_unlabelled}
    assert set(full_space.techniques) == {cls.name for cls in BUILTIN_TECHNIQUES} - \
        needs_user_values - needs_unlabelled
    assert all(t.enabled is None or not t.cls.optional for t in full_space.techniques.values())


def test_sampled_recipes_cover_every_technique_and_differ(full_space, recipes):
    used = set().union(*(r.techniques for r in recipes))
    assert used == set(full_space.techniques)
    assert len({repr(r.to_dict()) for r in recipes}) == N_RECIPES


@pytest.mark.parametrize("index", range(N_RECIPES))
def test_random_full_catalog_recipe_trains_two_steps(recipes, index):
    recipe = recipes[index]
    data = load_data(recipe.data)
    state = train(recipe, data, training_manager(recipe), device=CPU, max_steps=2)
    # two steps, or one where the epoch holds one (batch 256 × 6 accumulated on digits)
    assert state.step == min(2, state.total_steps), recipe.techniques
    metrics = state.history[-1]
    assert math.isfinite(metrics["train/loss"]), recipe.techniques
    assert 0.0 <= metrics["val/acc1"] <= 1.0
