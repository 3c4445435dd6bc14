"""Warm start: the shipped known recipes validate, adapt to a space, and enqueue as trials the
space samples exactly (real catalog, real spaces, a real in-memory Optuna study)."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import optuna
import pytest

from automl.discovery import technique_catalog
from automl.space import SearchSpace, load_space
from automl.warm_start import (
    LR_SCALING,
    KnownRecipe,
    adapt,
    by_budget,
    known_recipes,
    read_known_recipe,
    warm_start_params,
)

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
SHIPPED = {"he_2016_cifar_resnet", "page_2019_cifar10_fast", "timm_a1", "timm_a2", "timm_a3",
           "torchvision_2021"}

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def catalog():
    return technique_catalog()


@pytest.fixture(scope="module")
def recipes() -> dict[str, KnownRecipe]:
    return {r.name: r for r in known_recipes()}


@pytest.fixture(scope="module")
def default_space(catalog) -> SearchSpace:
    return load_space(SPACES / "default.yaml", catalog)


def _space(tmp_path: Path, catalog, text: str) -> SearchSpace:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return load_space(path, catalog)


# --- the library ------------------------------------------------------------------------------


def test_every_known_recipe_loads_and_validates(catalog, recipes):
    assert set(recipes) == SHIPPED
    names = [r.name for r in known_recipes()]
    assert names == sorted(names)  # library order: by file name, the same every time
    for recipe in recipes.values():
        assert recipe.source.strip() and recipe.summary.strip()
        assert "\n" not in recipe.summary
        assert recipe.batch_size >= 1 and recipe.epochs >= 1
        assert "optimizer" in recipe.techniques and "lr" in recipe.techniques["optimizer"]
        assert recipe.techniques["optimizer"]["name"] in LR_SCALING
        for name, values in recipe.techniques.items():
            cls = catalog[name]
            for param, value in values.items():
                assert param in cls.space
                assert cls.check_value(param, value) is None, (recipe.name, name, param)


@pytest.mark.parametrize("body, key", [
    ("techniques: {mixupp: {alpha: 0.2}}", "techniques.mixupp"),
    ("techniques: {mixup: {beta: 0.2}}", "techniques.mixup.beta"),
    ("techniques: {mixup: {alpha: -1.0}}", "techniques.mixup.alpha"),
    ("techniques: {optimizer: {name: adam}}", "techniques.optimizer.name"),
    ("techniques: {mixup: {alpha: 0.2}}\nepochs: 0", "epochs"),
    ("techniques: {mixup: {alpha: 0.2}}\nepochs: 3\nrounds: 3", "rounds"),
])
def test_a_bad_recipe_file_names_file_and_key(tmp_path, catalog, body, key):
    path = tmp_path / "bad.yaml"
    if "epochs" not in body:
        body += "\nepochs: 3"
    path.write_text("name: bad\nsource: s\nsummary: s\nbatch_size: 128\n" + body + "\n",
                    encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.yaml:\d+: " + re.escape(key) + ": "):
        read_known_recipe(path, catalog)


def test_a_recipe_named_unlike_its_file_is_refused(tmp_path, catalog):
    path = tmp_path / "mine.yaml"
    path.write_text("name: other\nsource: s\nsummary: s\nbatch_size: 128\nepochs: 3\n"
                    "techniques: {mixup: {}}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"mine\.yaml:1: name: "):
        read_known_recipe(path, catalog)


# --- adapt -----------------------------------------------------------------------------------


def test_adapt_rescales_lr_by_the_optimizers_rule(tmp_path, catalog, recipes):
    space = _space(tmp_path, catalog, """
        data: {dataset: digits, batch_size: 256}
        techniques: {optimizer: {}, lr_schedule: {}, mixup: {}}
    """)
    # torchvision: SGD 0.5 at batch 1024 -> linear: 0.5 * 256 / 1024
    assert adapt(recipes["torchvision_2021"], space)["optimizer"] == {"name": "sgd", "lr": 0.125}
    # timm A1: LAMB 5e-3 at batch 2048 -> square root: 5e-3 * sqrt(256 / 2048) = 1.7678e-3
    a1 = adapt(recipes["timm_a1"], space)
    assert a1["optimizer"]["name"] == "lamb"
    assert a1["optimizer"]["lr"] == pytest.approx(1.76776695e-3)
    assert a1["optimizer"]["lr"] == pytest.approx(5e-3 / math.sqrt(8))
    # warmup stays the published fraction (5 of 600 epochs), whatever the space's epochs
    assert a1["lr_schedule"]["warmup"] == pytest.approx(5 / 600)
    assert recipes["timm_a1"].techniques["optimizer"]["lr"] == 5e-3  # the library is unchanged


def test_adapt_drops_techniques_the_space_does_not_list(tmp_path, catalog, recipes):
    space = _space(tmp_path, catalog, """
        data: {dataset: digits, batch_size: 128}
        techniques: {optimizer: {}, lr_schedule: {}, mixup: {}, ema: {}}
    """)
    settings = adapt(recipes["torchvision_2021"], space)
    assert set(settings) == {"optimizer", "lr_schedule", "mixup", "ema"}
    assert settings["mixup"] == {"alpha": 0.2}
    assert settings["ema"] == {"decay": 0.99998}  # as published; params_for clips it
    assert settings["optimizer"] == {"name": "sgd", "lr": 0.0625}  # 0.5 * 128 / 1024


# --- warm_start_params on the shipped default space ------------------------------------------


def test_warm_start_params_are_distinct_and_not_the_baseline(default_space):
    queued = warm_start_params(default_space)
    assert queued, "no known recipe survived on the default space"
    names = [name for name, _ in queued]
    assert set(names) <= SHIPPED and len(set(names)) == len(names)
    baseline = default_space.baseline_params()
    params = [p for _, p in queued]
    for i, p in enumerate(params):
        assert p != baseline
        assert all(p != q for q in params[:i])


def test_the_space_samples_every_warm_start_exactly(default_space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    queued = warm_start_params(default_space)
    for _, params in queued:
        study.enqueue_trial(params)
    sampled = {}
    for name, params in queued:
        trial = study.ask()
        recipe = default_space.sample(trial)
        assert trial.params == params, name  # nothing clipped again, nothing drawn at random
        sampled[name] = recipe
    # Page's fast CIFAR-10 recipe: Nesterov 1.0 at batch 512 -> 0.25 at the space's 128;
    # the 4 px crop clipped into the space's padding range [1, 2]; the techniques the space
    # does not list (flip, ghost batch norm) are off.
    page = sampled["page_2019_cifar10_fast"].techniques
    assert page == {
        "optimizer": {"name": "nesterov", "lr": 0.25},
        "lr_schedule": {"schedule": "onecycle", "warmup": 0.2, "warmup_shape": "linear"},
        "weight_decay": {"value": 5e-4, "exclude_norm_bias": False},
        "random_crop": {"padding": 2, "padding_mode": "reflect"},
        "label_smoothing": {"smoothing": 0.2},
        "ema": {"decay": 0.99},
    }


def test_recipes_made_for_a_similar_budget_come_first_and_take_a_share_of_it(catalog):
    recipes = known_recipes()
    assert [r.name for r in by_budget(recipes, 5)][:2] == ["page_2019_cifar10_fast",
                                                          "timm_a3"]
    assert by_budget(recipes, 600)[0].epochs == 600
    space = load_space(SPACES / "default.yaml", catalog)
    everything = warm_start_params(space)
    assert warm_start_params(space, budget=16) == everything[:4]
    assert warm_start_params(space, budget=2) == everything[:1]
