"""The search's method: batch size with LR scaling, warm start, fidelity check, confirmation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from automl.cli import cli
from automl.confirm import CONFIRMATIONS, CONFIRMED_BEST, chosen_trial, verdict
from automl.discovery import technique_catalog, training_manager
from automl.fidelity import FIRST_RUNG, TrustedRungPruner, fidelity_lines, rung_correlations
from automl.recipe import Recipe
from automl.report import SilentReporter
from automl.search import BEST_RECIPE, SearchSettings, run_search
from automl.space import load_recipe, load_space
from automl.trainer import prepare

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIGITS = {"dataset": "digits", "batch_size": 64}


# --- batch size and the LR scaling rule -------------------------------------------------------


@pytest.mark.parametrize("rule, accumulation, expected", [
    ("linear", 1, 0.1 * 32 / 64),
    ("sqrt", 1, 0.1 * math.sqrt(32 / 64)),
    ("none", 1, 0.1),
    ("linear", 4, 0.1 * 128 / 64),  # the effective batch is scaled
])
def test_batch_size_sets_the_batch_and_scales_the_lr(data, rule, accumulation, expected):
    techniques = {"optimizer": {"name": "sgd", "lr": 0.1},
                  "batch_size": {"size": 32, "lr_scaling": rule}}
    if accumulation > 1:
        techniques["grad_accumulation"] = {"steps": accumulation}
    recipe = Recipe(model="automl_resnet8", data=dict(DIGITS), epochs=1, techniques=techniques)
    state = prepare(recipe, data, training_manager(recipe), torch.device("cpu"))
    assert state.batch_size == 32
    assert state.batches_per_epoch == len(data.train.labels) // 32
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_without_the_technique_the_data_batch_size_and_lr_stand(data):
    recipe = Recipe(model="automl_resnet8", data=dict(DIGITS), epochs=1,
                    techniques={"optimizer": {"name": "sgd", "lr": 0.1}})
    state = prepare(recipe, data, training_manager(recipe), torch.device("cpu"))
    assert state.batch_size == 64 and state.lr_scale == 1.0
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


# --- a whole small search: warm start, confirmation, export ----------------------------------

SPACE = """
model: automl_resnet8
data: {dataset: digits, batch_size: 128, val_fraction: 0.2}
epochs: 1
techniques:
  optimizer: {}
  lr_schedule: {}
  label_smoothing: {}
  random_crop: {}
study: {sampler: tpe, pruner: none, n_trials: 5}
"""


def _search(tmp_path: Path, **overrides):
    path = tmp_path / "quality.yaml"
    path.write_text(SPACE)
    space = load_space(path, technique_catalog())
    settings = SearchSettings.from_space(space, study_name="quality", run_dir=tmp_path / "run",
                                         device="cpu", **overrides)
    notes = []

    class Notes(SilentReporter):
        def note(self, text):
            notes.append(text)

    return space, run_search(space, settings, Notes()), notes


def test_a_search_warm_starts_then_confirms_its_best_trials(tmp_path):
    from automl.warm_start import warm_start_params

    space, study, notes = _search(tmp_path, confirm_top=2, confirm_seeds=1)
    trials = study.get_trials(deepcopy=False)
    assert trials[0].user_attrs.get("baseline")
    known = warm_start_params(space, budget=5)
    assert len(known) == 1, "a quarter of 5 trials, at least one"
    (name, params), = known
    assert trials[1].user_attrs["warm_start"] == name and trials[1].params == params
    assert name == "page_2019_cifar10_fast"  # 10 published epochs: nearest this 1-epoch space
    assert not any("warm_start" in t.user_attrs for t in trials[2:])
    # the two best distinct trials and the baseline, each re-run once with the next seed
    runs = study.user_attrs[CONFIRMATIONS]
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE),
                  key=lambda t: -t.value)
    assert str(done[0].number) in runs and str(trials[0].number) in runs
    assert 2 <= len(runs) <= 3 and all(len(r) == 1 for r in runs.values())
    for number, (run,) in runs.items():
        assert run["seed"] == trials[int(number)].user_attrs["recipe"]["seed"] + 1
        assert 0.0 <= run["value"] <= 1.0 and run["epochs"] == 1
    # the best is the best mean, and that is what best_recipe.yaml holds
    means = {int(n): (trials[int(n)].value + r[0]["value"]) / 2 for n, r in runs.items()}
    best = max(means, key=means.get)
    assert study.user_attrs[CONFIRMED_BEST] == best == chosen_trial(study).number
    exported = load_recipe(tmp_path / "run" / BEST_RECIPE, technique_catalog())
    assert exported.provenance["confirmed_mean"] == pytest.approx(means[best])
    assert dataclasses.replace(exported, provenance=None).to_dict() == \
        trials[best].user_attrs["recipe"]
    assert any(line.startswith("confirming the top") for line in notes)
    lines = verdict(study)
    assert lines[0].startswith("confirmed (val/acc1") and "noise" in "\n".join(lines)
    # `automl show` prints the same verdict; `automl export` writes the confirmed winner
    run = ["--out", str(tmp_path / "run"), "--study-name", "quality"]
    shown = CliRunner().invoke(cli, ["show", *run])
    assert shown.exit_code == 0 and "\n".join(lines) in shown.output
    exported = CliRunner().invoke(cli, ["export", *run])
    assert exported.exit_code == 0
    assert exported.stdout == (tmp_path / "run" / BEST_RECIPE).read_text()


def test_confirmation_resumes_without_repeating_runs(tmp_path):
    _, study, _ = _search(tmp_path, confirm_top=1, confirm_seeds=1, warm_start=False)
    before = study.user_attrs[CONFIRMATIONS]
    _, again, notes = _search(tmp_path, confirm_top=1, confirm_seeds=1, warm_start=False)
    assert again.user_attrs[CONFIRMATIONS] == before
    assert not any(line.startswith("confirming") for line in notes)


def test_no_warm_start_and_no_confirmation_leave_a_plain_search(tmp_path):
    _, study, _ = _search(tmp_path, confirm_top=0, warm_start=False)
    assert not any("warm_start" in t.user_attrs for t in study.trials)
    assert CONFIRMATIONS not in study.user_attrs
    assert chosen_trial(study).number == study.best_trial.number


def test_auto_settings_follow_the_budget():
    settings = SearchSettings(study_name="s", run_dir=Path("r"), storage=None, n_trials=40,
                              timeout=None, seed=0, sampler="tpe", pruner="hyperband",
                              metric="val/acc1", direction="maximize")
    assert settings.first_rung(6) == 1 and settings.first_rung(30) == 3
    assert settings.first_rung(90) == 10
    settings.min_resource = 4
    assert settings.first_rung(3) == 3
    assert settings.confirmations() == 2
    settings.n_trials = 16
    assert settings.confirmations() == 1
    settings.n_trials = 9
    assert settings.confirmations() == 0


# --- the fidelity check ----------------------------------------------------------------------


def _study_with_curves(curves: list[list[float]], pruned: int = 0) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(FIRST_RUNG, 1)
    dist = {"x": FloatDistribution(0, 1)}
    for i, curve in enumerate(curves):
        study.add_trial(create_trial(
            params={"x": i / len(curves)}, distributions=dist, value=curve[-1],
            intermediate_values={e + 1: v for e, v in enumerate(curve)}))
    for i in range(pruned):
        study.add_trial(create_trial(params={"x": 0.99 - i / 100}, distributions=dist,
                                     state=TrialState.PRUNED, intermediate_values={1: 0.1}))
    return study


def test_rank_correlation_of_early_with_final_scores():
    agree = _study_with_curves([[0.1 * i, 0.1 * i + 0.05] for i in range(6)])
    (only,) = rung_correlations(agree)
    assert (only.epoch, only.trials) == (1, 6) and only.rho == pytest.approx(1.0)
    disagree = _study_with_curves([[0.1 * i, 1 - 0.1 * i] for i in range(6)], pruned=2)
    assert rung_correlations(disagree)[0].rho == pytest.approx(-1.0)
    assert "were judged before the evidence was in" in "\n".join(fidelity_lines(disagree))
    assert "every pruned trial was stopped at a trusted epoch" in "\n".join(
        fidelity_lines(_study_with_curves([[0.1 * i, 0.1 * i + 0.05] for i in range(6)],
                                          pruned=2)))
    assert rung_correlations(_study_with_curves([[0.1, 0.2]] * 3)) == []  # too few trials


# --- settings from the command line and the space --------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--min-resource", "0"], "--min-resource: expected auto or an integer >= 1, got '0'"),
    (["--confirm-top", "many"], "--confirm-top: expected auto or an integer >= 0"),
])
def test_bad_search_settings_are_one_line(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["search", "small", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize("study, message", [
    ("{min_resource: 0}", "study.min_resource: expected auto or an integer >= 1"),
    ("{reduction_factor: 1}", "study.reduction_factor: expected an integer >= 2"),
    ("{warm_start: maybe}", "study.warm_start: expected true or false"),
    ("{confirm_seeds: 0}", "study.confirm_seeds: expected an integer >= 1"),
])
def test_bad_study_settings_in_a_space_name_the_key(tmp_path, study, message):
    path = tmp_path / "space.yaml"
    path.write_text(f"techniques: {{optimizer: {{}}}}\nstudy: {study}\n")
    result = CliRunner().invoke(cli, ["search", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output


def _running(step: int) -> optuna.trial.FrozenTrial:
    return create_trial(state=TrialState.RUNNING, params={"x": 0.5},
                        distributions={"x": FloatDistribution(0, 1)},
                        intermediate_values={e: 0.3 for e in range(1, step + 1)})


def test_trials_are_pruned_only_at_epochs_that_predict_the_final_score():
    always = optuna.pruners.ThresholdPruner(lower=2.0)  # would prune every trial anywhere
    agree = _study_with_curves([[0.1 * i, 0.1 * i + 0.05, 0.1 * i] for i in range(6)])
    disagree = _study_with_curves([[0.1 * i, 1 - 0.1 * i, 0.1 * i] for i in range(6)])
    few = _study_with_curves([[0.1 * i, 0.1 * i + 0.05, 0.1 * i] for i in range(4)])
    pruner = TrustedRungPruner(always, trust=0.5)
    assert pruner.prune(agree, _running(1)) and pruner.prune(agree, _running(2))
    assert not pruner.prune(agree, _running(3))  # no finished trial ran beyond it
    pruner = TrustedRungPruner(always, trust=0.5)
    assert pruner.prune(disagree, _running(1)) and not pruner.prune(disagree, _running(2))
    assert not TrustedRungPruner(always, 0.5).prune(few, _running(1))  # no evidence yet
    assert TrustedRungPruner(always, -1).prune(few, _running(1))  # trust -1: prune anywhere
    never = optuna.pruners.NopPruner()
    assert not TrustedRungPruner(never, 0.5).prune(agree, _running(1))
