"""Search spaces and recipes in YAML: parsing, sampling with a real Optuna study, and bad input.

Every user mistake in a file must come back as one line, ``FILE:LINE: KEY: message``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import BaseDistribution, IntDistribution

from automl.cli import cli
from automl.discovery import technique_catalog
from automl.errors import ConfigError
from automl.recipe import Recipe
from automl.space import SearchSpace, load_recipe, load_space
from automl.technique import NOT_APPLICABLE, When, conditional_name, contains
from automl.yamlio import load_yaml

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
SHIPPED = sorted(path.name for path in SPACES.glob("*.yaml"))  # every shipped space

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def catalog():
    return technique_catalog()


def _write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def _study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


def _samples(space: SearchSpace, n: int = 40, seed: int = 0):
    """(trial, recipe) pairs from a real in-memory study."""
    study = _study(seed)
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, space.sample(trial)))
    return out


# --- the shipped spaces -----------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_parses(catalog, name):
    space = load_space(SPACES / name, catalog)
    assert space.model == "automl_resnet8"
    assert space.source == str(SPACES / name)
    assert {"optimizer", "lr_schedule"} <= set(space.techniques)
    for t in space.techniques.values():
        assert t.cls is catalog[t.name]
        assert set(t.params) <= set(t.cls.space)  # less: conditions that never apply
    assert not space.is_fixed()


def test_default_space_overrides_random_crop_padding(catalog):
    space = load_space(SPACES / "default.yaml", catalog)
    assert space.techniques["random_crop"].params["padding"] == IntDistribution(1, 2)
    assert space.data["dataset"] == "digits"  # the embedded default: runs anywhere


@pytest.mark.parametrize("name", SHIPPED)
def test_sampling_is_conditional_and_keeps_required_techniques(catalog, name):
    space = load_space(SPACES / name, catalog)
    required = {n for n, t in space.techniques.items() if not t.cls.optional}
    assert required == {"optimizer", "lr_schedule"}
    seen_on, seen_off = set(), set()
    for trial, recipe in _samples(space):
        assert required <= set(recipe.techniques)
        for tname, tspace in space.techniques.items():
            searched = {f"{tname}.{p}" for p, v in tspace.params.items()
                        if isinstance(v, BaseDistribution)}
            if tname in recipe.techniques:
                seen_on.add(tname)
                assert searched <= set(trial.params)
                params = recipe.techniques[tname]
                for p, dist in tspace.params.items():
                    name = f"{tname}.{p}"
                    if isinstance(dist, When):  # sampled under its case's own name
                        choice = params[dist.on]
                        dist, name = dist.case(choice), conditional_name(tname, p, choice)
                        if dist is NOT_APPLICABLE:
                            assert p not in params and name not in trial.params
                            continue
                    v = params[p]
                    if isinstance(dist, BaseDistribution):
                        assert contains(dist, v) and trial.params[name] == v
                    else:
                        assert v == dist
                assert set(params) <= set(tspace.params)
            else:
                seen_off.add(tname)
                assert not searched & set(trial.params), \
                    f"{tname} is off but its parameters were sampled"
        for key in trial.params:
            tname, _, param = key.partition(".")
            assert param == "enabled" or tname in recipe.techniques
        for tname in required:
            assert f"{tname}.enabled" not in trial.params
    optional = set(space.techniques) - required
    assert optional <= seen_on and optional <= seen_off  # 40 trials see each state of each


@pytest.mark.parametrize("name", SHIPPED)
def test_baseline_enqueued_first_gives_the_defaults(catalog, name):
    space = load_space(SPACES / name, catalog)
    study = optuna.create_study()
    study.enqueue_trial(space.baseline_params())
    recipe = space.sample(study.ask())
    expected = {n: {p: v for p, v in t.cls.defaults.items() if _applies(t, p)}
                for n, t in space.techniques.items()
                if not t.cls.optional or t.cls.default_enabled}
    assert recipe.techniques == expected


def _applies(tspace, param: str) -> bool:
    """Whether a parameter takes part in the technique's defaults under this space."""
    value = tspace.params.get(param, NOT_APPLICABLE)
    if isinstance(value, When):
        return value.case(tspace.cls.defaults[value.on]) is not NOT_APPLICABLE
    return value is not NOT_APPLICABLE


def test_baseline_clips_defaults_into_an_overridden_range(catalog, tmp_path):
    path = _write(tmp_path, """
        techniques:
          optimizer: {lr: {type: float, low: 0.1, high: 0.2}}
          lr_schedule: {schedule: {type: categorical, choices: [step, constant]}}
    """)
    space = load_space(path, catalog)
    study = optuna.create_study()
    study.enqueue_trial(space.baseline_params())
    recipe = space.sample(study.ask())
    assert recipe.techniques["optimizer"] == {"name": "sgd", "lr": 0.1}
    assert recipe.techniques["lr_schedule"]["schedule"] == "step"


# --- fixed values, ranges, enabled ------------------------------------------------------------


def test_fixed_values_ranges_and_enabled_are_honoured(catalog, tmp_path):
    path = _write(tmp_path, """
        model: automl_resnet8
        data: {dataset: digits, batch_size: 16}
        epochs: 2
        techniques:
          optimizer:
            name: adamw
            lr: {type: float, low: 0.001, high: 0.002, log: true}
          lr_schedule:
            schedule: {type: categorical, choices: [cosine, step]}
          random_crop:
            padding: {type: int, low: 3, high: 4}
          mixup: {enabled: false}
          cutmix: {enabled: true, alpha: 0.5}
          dropout: {}
          ema: true
    """)
    space = load_space(path, catalog)
    assert space.data["batch_size"] == 16 and space.epochs == 2
    samples = _samples(space, n=30)
    dropout_states = set()
    for trial, recipe in samples:
        assert recipe.epochs == 2 and recipe.data["batch_size"] == 16
        opt = recipe.techniques["optimizer"]
        assert opt["name"] == "adamw"
        assert 0.001 <= opt["lr"] <= 0.002
        assert recipe.techniques["lr_schedule"]["schedule"] in ("cosine", "step")
        assert "mixup" not in recipe.techniques
        assert "mixup.enabled" not in trial.params
        assert recipe.techniques["cutmix"] == {"alpha": 0.5}
        assert not any(k.startswith("cutmix.") for k in trial.params)
        assert "ema" in recipe.techniques and "ema.enabled" not in trial.params
        assert 0.9 <= recipe.techniques["ema"]["decay"] <= 0.999
        if "random_crop" in recipe.techniques:
            padding = recipe.techniques["random_crop"]["padding"]
            assert isinstance(padding, int) and padding in (3, 4)
        dropout_states.add("dropout" in recipe.techniques)
    assert dropout_states == {True, False}
    lrs = {r.techniques["optimizer"]["lr"] for _, r in samples}
    assert len(lrs) > 1  # still searched, only bounded


def test_scientific_notation_is_a_float(catalog, tmp_path):
    path = _write(tmp_path, """
        techniques:
          optimizer: {name: sgd, lr: 1e-3}
          weight_decay: {enabled: true, value: 5E-4, exclude_norm_bias: true}
          lr_schedule: {schedule: cosine, warmup: 0.0, warmup_shape: linear, cycles: 3}
    """)
    data, _ = load_yaml(path)
    lr = data["techniques"]["optimizer"]["lr"]
    assert isinstance(lr, float) and lr == 0.001
    recipe = load_recipe(path, catalog)
    assert recipe.techniques["optimizer"]["lr"] == 0.001
    assert recipe.techniques["weight_decay"]["value"] == 0.0005


def test_integer_valued_float_for_an_int_parameter_becomes_an_int(catalog, tmp_path):
    """``padding: 2.0`` is accepted as an integer, so it must reach the technique as ``2``."""
    path = _write(tmp_path, """
        techniques:
          optimizer: {name: sgd, lr: 0.05}
          lr_schedule: {schedule: cosine, warmup: 0.0, warmup_shape: linear, cycles: 3}
          random_crop: {enabled: true, padding: 2.0, padding_mode: constant}
    """)
    recipe = load_recipe(path, catalog)
    padding = recipe.techniques["random_crop"]["padding"]
    assert padding == 2
    assert isinstance(padding, int), f"padding stays {padding!r}: training would crash in F.pad"


# --- recipes ----------------------------------------------------------------------------------


def test_recipe_round_trips_through_yaml(catalog, tmp_path):
    recipe = Recipe(
        model="automl_resnet8", data={"dataset": "digits", "batch_size": 32, "val_fraction": 0.25},
        epochs=3, seed=7,
        techniques={
            "optimizer": {"name": "adamw", "lr": 3.0e-5},
            "lr_schedule": {"schedule": "onecycle", "warmup": 0.1, "warmup_shape": "cosine",
                            "cycles": 2},
            "weight_decay": {"value": 1e-6, "exclude_norm_bias": False},
            "random_crop": {"padding": 3, "padding_mode": "reflect"},
            "label_smoothing": {"smoothing": 0.123456789012345},
        })
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml(), encoding="utf-8")
    loaded = load_recipe(path, catalog)
    assert loaded == recipe
    assert type(loaded.techniques["weight_decay"]["exclude_norm_bias"]) is bool


def test_sampled_recipes_round_trip(catalog, tmp_path):
    space = load_space(SPACES / "default.yaml", catalog)
    for i, (_, recipe) in enumerate(_samples(space, n=10, seed=3)):
        path = tmp_path / f"recipe{i}.yaml"
        path.write_text(recipe.to_yaml(), encoding="utf-8")
        assert load_recipe(path, catalog) == recipe


@pytest.mark.parametrize(("techniques", "free_key"), [
    ("optimizer: {name: sgd, lr: 0.1}\n  lr_schedule: {schedule: cosine}", "lr_schedule.warmup"),
    ("optimizer: {name: sgd, lr: 0.1}\n"
     "  lr_schedule: {schedule: cosine, warmup: 0.0, warmup_shape: linear, cycles: 3}\n"
     "  mixup: {alpha: 0.2}", "mixup.enabled"),
    ("optimizer: {name: {type: categorical, choices: [sgd, adamw]}, lr: 0.1}\n"
     "  lr_schedule: {schedule: cosine, warmup: 0.0, warmup_shape: linear, cycles: 3}",
     "optimizer.name"),
])
def test_load_recipe_rejects_free_values_naming_the_key(catalog, tmp_path, techniques, free_key):
    path = _write(tmp_path, f"techniques:\n  {techniques}\n", name="recipe.yaml")
    with pytest.raises(ConfigError) as info:
        load_recipe(path, catalog)
    message = str(info.value)
    assert message.startswith(str(path))
    assert free_key in message
    assert "\n" not in message


def test_load_recipe_rejects_the_shipped_space(catalog):
    # the first free value in the canonical order (by technique name), not the file's
    with pytest.raises(ConfigError, match="augment_policy.enabled is searched"):
        load_recipe(SPACES / "default.yaml", catalog)


# --- bad input: FILE:LINE: KEY: message -------------------------------------------------------

BAD_INPUTS = {
    "duplicate-key": ("""
        model: automl_resnet8
        epochs: 1
        epochs: 2
    """, 3, "epochs", "duplicate key"),
    "duplicate-technique": ("""
        techniques:
          mixup: {}
          cutmix: {}
          mixup: {alpha: 0.3}
    """, 4, "techniques.mixup", "duplicate key"),
    "unknown-top-level-key": ("""
        model: automl_resnet8
        epoch: 3
    """, 2, "epoch", "unknown key (did you mean 'epochs'?)"),
    "unknown-technique": ("""
        model: automl_resnet8
        techniques:
          optimizer: {}
          mixpu: {}
    """, 4, "techniques.mixpu", "unknown technique 'mixpu' (did you mean 'mixup'?); valid: "),
    "unknown-parameter": ("""
        techniques:
          mixup:
            alpah: 0.2
    """, 3, "techniques.mixup.alpah", "unknown key (did you mean 'alpha'?)"),
    "string-for-number": ("""
        techniques:
          mixup:
            alpha: abc
    """, 3, "techniques.mixup.alpha", "expected a number, got 'abc'"),
    "value-outside-limits": ("""
        techniques:
          label_smoothing:
            enabled: true
            smoothing: 1.5
    """, 4, "techniques.label_smoothing.smoothing", "1.5 is outside the valid range"),
    "range-outside-limits": ("""
        techniques:
          label_smoothing:
            smoothing: {type: float, low: 0.0,
                        high: 1.5}
    """, 4, "techniques.label_smoothing.smoothing.high", "outside the valid range"),
    "choice-not-allowed": ("""
        techniques:
          optimizer:
            name: adam
    """, 3, "techniques.optimizer.name", "'adam' is not one of 'sgd', 'nesterov', 'adamw'"),
    "bool-choice-given-an-int": ("""
        techniques:
          weight_decay:
            exclude_norm_bias: 1
    """, 3, "techniques.weight_decay.exclude_norm_bias", "is not one of True, False"),
    "categorical-choice-not-allowed": ("""
        techniques:
          optimizer:
            name:
              type: categorical
              choices: [sgd, adam]
    """, 5, "techniques.optimizer.name.choices.1", "'adam' is not one of"),
    "unknown-model": ("""
        data: {dataset: digits}
        model: resnet8
    """, 2, "model", "unknown model 'resnet8'"),
    "unknown-dataset": ("""
        model: automl_resnet8
        data:
          batch_size: 8
          dataset: cifar11
    """, 4, "data.dataset", "unknown dataset 'cifar11'; valid: "),
    "required-disabled": ("""
        techniques:
          lr_schedule:
            enabled: false
    """, 3, "techniques.lr_schedule.enabled", "required and cannot be disabled"),
    "required-disabled-by-zero": ("""
        techniques:
          optimizer:
            enabled: 0
    """, 3, "techniques.optimizer.enabled", ""),
    "enabled-not-a-bool": ("""
        techniques:
          mixup:
            enabled: 1
    """, 3, "techniques.mixup.enabled", "expected true or false"),
    "float-type-on-categorical": ("""
        techniques:
          optimizer:
            name: {type: float, low: 0.1, high: 0.2}
    """, 3, "techniques.optimizer.name.type", "use type: categorical"),
    "float-type-on-int": ("""
        techniques:
          random_crop:
            padding: {type: float, low: 1, high: 2}
    """, 3, "techniques.random_crop.padding.type", "use type: int"),
    "missing-high": ("""
        techniques:
          optimizer:
            lr: {type: float, low: 0.001}
    """, 3, "techniques.optimizer.lr", "missing 'high'"),
    "unknown-distribution-type": ("""
        techniques:
          optimizer:
            lr: {type: loguniform, low: 0.001, high: 0.1}
    """, 3, "techniques.optimizer.lr.type", "expected float, int or categorical"),
    "low-above-high": ("""
        techniques:
          optimizer:
            lr: {type: float, low: 0.1, high: 0.01}
    """, 3, "techniques.optimizer.lr", "low <= high"),
    "step-not-a-number": ("""
        techniques:
          optimizer:
            lr: {type: float, low: 0.001, high: 0.1, step: abc}
    """, 3, "techniques.optimizer.lr.step", "expected a number > 0"),
    "python-object-tag": ("""
        model: automl_resnet8
        techniques:
          mixup:
            alpha: !!python/object:os.system {}
    """, 4, "techniques.mixup.alpha", "python/object"),
    "python-object-tag-on-section": ("""
        model: automl_resnet8
        data: !!python/object:collections.OrderedDict {dataset: digits}
    """, 2, "data", "python/object"),
    "python-name-tag": ("""
        model: automl_resnet8
        techniques:
          mixup:
            alpha: !!python/name:os.system ''
    """, 4, "techniques.mixup.alpha", "python/name"),
    "bad-study-sampler": ("""
        study:
          n_trials: 3
          sampler: bayes
    """, 3, "study.sampler", "unknown value 'bayes'; valid: tpe"),
    "bad-epochs": ("""
        model: automl_resnet8
        epochs: 0
    """, 2, "epochs", "expected an integer >= 1"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_located_line(catalog, tmp_path, case):
    text, line, key, message = BAD_INPUTS[case]
    path = _write(tmp_path, text, name="bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_space(path, catalog)
    error = info.value
    assert str(error) == error.format()
    assert (error.file, error.line, error.key) == (str(path), line, key), str(error)
    assert str(error) == f"{path}:{line}: {key}: {error.message}"
    assert error.message and message in error.message, str(error)
    assert "\n" not in str(error)
    assert "Traceback" not in str(error)


@pytest.mark.parametrize(("text", "line"), [
    ("model: automl_resnet8\ntechniques:\n  mixup: {alpha: [0.1, 0.2}\nepochs: 2\n", 3),
    ("model: automl_resnet8\ntechniques: {mixup: {}\nepochs: 2\n", 2),
    ("model: automl_resnet8\ntechniques: {mixup: {}\n", 2),
], ids=["mismatched-bracket", "unclosed-mid-file", "unclosed-at-end"])
def test_malformed_yaml_names_the_line_of_the_bracket(catalog, tmp_path, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_space(path, catalog)
    error = info.value
    assert str(error).startswith(f"{path}:{line}: invalid YAML: "), str(error)
    assert error.line <= len(text.splitlines()), "the error points past the end of the file"
    assert "\n" not in str(error)


def test_unknown_technique_lists_every_valid_name(catalog, tmp_path):
    path = _write(tmp_path, "techniques:\n  mixpu: {}\n")
    with pytest.raises(ConfigError) as info:
        load_space(path, catalog)
    listed = str(info.value).split("valid: ", 1)[1].split(", ")
    assert listed == sorted(catalog)


def test_missing_file_is_a_config_error(catalog, tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read file"):
        load_space(tmp_path / "missing.yaml", catalog)


# --- the same through the command line ---------------------------------------------------------


@pytest.mark.parametrize(("text", "line"), [
    ("model: automl_resnet8\ntechniques:\n  optimizer: {}\n  mixpu: {}\n", 4),
    ("techniques:\n  label_smoothing:\n    smoothing: 1.5\n", 3),
    ("model: automl_resnet8\nepochs: 1\nepochs: 2\n", 3),
    ("model: automl_resnet8\ntechniques:\n  mixup: {alpha: [0.1, 0.2}\n", 3),
], ids=["unknown-technique", "outside-limits", "duplicate-key", "malformed"])
def test_cli_search_reports_a_bad_space_in_one_line_and_writes_nothing(tmp_path, monkeypatch,
                                                                       text, line):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["search", "bad.yaml"])
    assert result.exit_code == 2, result.output
    output = result.output.strip()
    assert len(output.splitlines()) == 1, output
    assert re.match(rf"Error: bad\.yaml:{line}: \S", output), output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
