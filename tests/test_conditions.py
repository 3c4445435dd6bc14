"""Conditional parameters: sampled only when their choice applies, under their own names."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from automl.discovery import technique_catalog
from automl.errors import ConfigError
from automl.space import load_recipe, load_space
from automl.technique import Technique, When

optuna.logging.set_verbosity(optuna.logging.WARNING)
CATALOG = technique_catalog()


def _space(tmp_path: Path, techniques: str):
    path = tmp_path / "space.yaml"
    path.write_text("data: {dataset: digits, batch_size: 64}\nepochs: 1\ntechniques:\n"
                    + textwrap.indent(textwrap.dedent(techniques).strip("\n"), "  ") + "\n")
    return load_space(path, CATALOG)


def _draws(space, n: int = 30, sampler=None):
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        trial = study.ask()
        recipe = space.sample(trial)
        study.tell(trial, 0.5)
        yield trial, recipe


def test_each_optimizer_is_searched_over_its_own_lr_range(tmp_path):
    space = _space(tmp_path, "optimizer: {}\nlr_schedule: {}")
    cases = CATALOG["optimizer"].conditions["lr"].cases
    seen = set()
    for trial, recipe in _draws(space, 60):
        name, lr = recipe.techniques["optimizer"]["name"], recipe.techniques["optimizer"]["lr"]
        seen.add(name)
        assert cases[name].low <= lr <= cases[name].high
        assert trial.params[f"optimizer.lr[{name}]"] == lr
        assert [k for k in trial.params if k.startswith("optimizer.lr")] == [
            f"optimizer.lr[{name}]"]
    assert seen == set(cases)


def test_cycles_is_sampled_and_recorded_only_with_restarts(tmp_path):
    space = _space(tmp_path, "optimizer: {}\nlr_schedule: {}")
    schedules = set()
    for trial, recipe in _draws(space, 60):
        values = recipe.techniques["lr_schedule"]
        schedules.add(values["schedule"])
        restarts = values["schedule"] == "cosine_restarts"
        assert ("cycles" in values) == restarts
        assert ("lr_schedule.cycles[cosine_restarts]" in trial.params) == restarts
    assert "cosine_restarts" in schedules and len(schedules) > 2


def test_a_fixed_choice_resolves_its_conditions(tmp_path):
    space = _space(tmp_path, "optimizer: {name: adamw}\nlr_schedule: {schedule: cosine}")
    optimizer, schedule = (space.techniques[n].params for n in ("optimizer", "lr_schedule"))
    assert optimizer["lr"] == FloatDistribution(3e-4, 1e-2, log=True)  # adamw's case, plain
    assert "cycles" not in schedule  # never applies
    assert "optimizer.lr" in space.free_keys()
    assert not any("cycles" in k for k in space.free_keys())


def test_a_written_range_or_value_replaces_the_condition(tmp_path):
    space = _space(tmp_path, """
        optimizer: {lr: {type: float, low: 0.001, high: 0.1, log: true}}
        lr_schedule: {cycles: 3}
    """)
    assert space.techniques["optimizer"].params["lr"] == FloatDistribution(0.001, 0.1, log=True)
    for trial, recipe in _draws(space, 10):
        assert "optimizer.lr" in trial.params
        assert recipe.techniques["lr_schedule"]["cycles"] == 3


def test_a_condition_written_in_yaml(tmp_path):
    space = _space(tmp_path, """
        optimizer:
          name: {type: categorical, choices: [sgd, adamw]}
          lr: {when: name, cases: {sgd: {type: float, low: 0.05, high: 0.2}, adamw: 0.002}}
        lr_schedule:
          schedule: {type: categorical, choices: [cosine, cosine_restarts]}
          cycles: {when: schedule, cases: {cosine_restarts: {type: int, low: 2, high: 3}}}
    """)
    lr = space.techniques["optimizer"].params["lr"]
    assert lr == When("name", {"sgd": FloatDistribution(0.05, 0.2), "adamw": 0.002})
    assert space.techniques["lr_schedule"].params["cycles"] == When(
        "schedule", {"cosine_restarts": IntDistribution(2, 3)})
    for trial, recipe in _draws(space, 30):
        values = recipe.techniques["optimizer"]
        if values["name"] == "adamw":
            assert values["lr"] == 0.002 and "optimizer.lr[adamw]" not in trial.params
        else:
            assert 0.05 <= values["lr"] <= 0.2


def test_a_condition_under_a_narrowed_choice_keeps_only_its_cases(tmp_path):
    space = _space(tmp_path, "optimizer: {name: {type: categorical, choices: [sgd, adamw]}}")
    assert set(space.techniques["optimizer"].params["lr"].cases) == {"sgd", "adamw"}
    assert [k for k in space.free_keys() if k.startswith("optimizer.lr")] == [
        "optimizer.lr[sgd]", "optimizer.lr[adamw]"]


@pytest.mark.parametrize("entry, message", [
    ("lr: {when: nope, cases: {sgd: 0.1}}", "expected a choice parameter of 'optimizer'"),
    ("lr: {when: name, cases: {adam: 0.1}}", "'adam' is not one of"),
    ("lr: {when: name, cases: {sgd: -1}}", "outside the valid range"),
    ("lr: {when: name, cases: {}}", "expected a mapping of choices"),
    ("lr: {when: name, cases: {sgd: 0.1}, else: 1}", "unknown key"),
])
def test_bad_conditions_are_one_located_line(tmp_path, entry, message):
    with pytest.raises(ConfigError) as caught:
        _space(tmp_path, "optimizer: {" + entry.replace(": {when", ": {when", 1) + "}")
    text = str(caught.value)
    assert message in text and "space.yaml:" in text and "\n" not in text


def test_a_recipe_without_an_inapplicable_parameter_is_complete(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent("""
        data: {dataset: digits, batch_size: 64}
        epochs: 1
        techniques:
          optimizer: {name: adamw, lr: 0.001}
          lr_schedule: {schedule: cosine, warmup: 0.0, warmup_shape: linear}
    """))
    recipe = load_recipe(path, CATALOG)
    assert recipe.techniques["lr_schedule"] == {"schedule": "cosine", "warmup": 0.0,
                                                "warmup_shape": "linear"}


def test_the_baseline_and_known_settings_map_onto_conditional_names(tmp_path):
    space = _space(tmp_path, "optimizer: {}\nlr_schedule: {}")
    assert space.baseline_params()["optimizer.lr[sgd]"] == 0.05
    params = space.params_for({"optimizer": {"name": "adamw", "lr": 0.5},
                               "lr_schedule": {"schedule": "cosine_restarts", "cycles": 9}})
    assert params["optimizer.lr[adamw]"] == 1e-2  # clipped into adamw's range
    assert params["lr_schedule.cycles[cosine_restarts]"] == 4


def test_a_technique_declaring_a_bad_condition_is_refused_at_registration():
    class Bad(Technique):
        """Bad: a condition on a numeric parameter."""

        name = "bad"
        space = {"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)}
        defaults = {"a": 0.5, "b": 0.5}
        conditions = {"b": When("a", {0.5: FloatDistribution(0, 1)})}

    with pytest.raises(TypeError, match="categorical parameter declared before it"):
        Bad.validate_class()


def test_tpe_multivariate_groups_sample_conditional_spaces(tmp_path):
    space = _space(tmp_path, "optimizer: {}\nlr_schedule: {}\nweight_decay: {}")
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=5, multivariate=True,
                                             group=True)
    names = {recipe.techniques["optimizer"]["name"] for _, recipe in _draws(space, 25, sampler)}
    assert len(names) > 1
